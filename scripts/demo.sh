#!/usr/bin/env bash
# The README's first command: set up (idempotent), build, and run the main job.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "$root"
if [ -f configs/demo.yaml ]; then
  exec ./build/qlora train configs/demo.yaml "$@"
fi
# Until the embedded demo lands (issue P7), run the most complete pipeline that works.
./build/qlora --version
