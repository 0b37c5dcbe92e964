#!/usr/bin/env bash
# Configures (once) and builds qlora into build/ with Ninja and ccache. Idempotent.
#   BUILD_DIR (default build), QLORA_JOBS (default: number of cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
jobs="${QLORA_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-${QLORA_CACHE:-$HOME/.cache/qlora}/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
if [ ! -f "$build/build.ninja" ]; then
  mkdir -p "$build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${QLORA_CMAKE_ARGS:-} >"$build/configure.log" 2>&1 \
    || { cat "$build/configure.log"; exit 1; }
fi
cmake --build "$build" -j "$jobs" -- "$@"
