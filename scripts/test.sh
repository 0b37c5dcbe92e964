#!/usr/bin/env bash
# The README's test command: set up (idempotent), build, run every test suite.
# Extra arguments go to ctest (e.g. -R kernels, -L gpu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "${BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "${QLORA_TEST_JOBS:-2}" "$@"
