#!/usr/bin/env bash
# The README's test command (CI runs exactly this):
#   1. set up (idempotent), build, run every test suite;
#   2. build the unit tests with AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/ and
#      run every suite under them but gpu (CUDA under ASan needs a GPU machine of its own),
#      layering (a CMake script, no code of ours runs) and gpu_check_dry_run (it bundles the
#      normal build for a GPU machine);
#   3. a short fuzz smoke of every fuzz target (scripts/fuzz.sh --smoke), where that script exists.
# Extra arguments go to the first ctest only (e.g. -R kernels, -L gpu).
#   QLORA_SKIP_SANITIZERS=1  skip stages 2 and 3 (quick local runs; CI never sets it)
#   QLORA_SKIP_FUZZ=1        skip stage 3 only
#   QLORA_ASAN_EXCLUDE       ctest regex of the suites not run under ASan (default ^(gpu|layering|gpu_check_dry_run)$)
#   ASAN_BUILD_DIR           default build-asan
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
(cd "${BUILD_DIR:-$root/build}" && ctest --output-on-failure -j "${QLORA_TEST_JOBS:-2}" "$@")

if [ "${QLORA_SKIP_SANITIZERS:-0}" = 1 ]; then
  echo "test.sh: QLORA_SKIP_SANITIZERS=1: sanitizer and fuzz stages skipped"
  exit 0
fi

# ---- stage 2: AddressSanitizer + UndefinedBehaviorSanitizer ------------------------------------
asan_exclude="${QLORA_ASAN_EXCLUDE:-^(gpu|layering|gpu_check_dry_run)\$}"
asan_build="${ASAN_BUILD_DIR:-$root/build-asan}"
t0=$(date +%s)
# Only the qlora binary (the end-to-end suites run it) and the test executables are built.
targets=(qlora)
for d in "$root"/tests/*/; do
  s="$(basename "$d")"
  if ! [[ "$s" =~ $asan_exclude ]] && compgen -G "$d/test_*.cpp" >/dev/null; then targets+=("test_$s"); fi
done
BUILD_DIR="$asan_build" QLORA_CMAKE_ARGS="-DQLORA_ASAN=ON ${QLORA_CMAKE_ARGS:-}" "$root/scripts/build.sh" "${targets[@]}"
t1=$(date +%s)
(cd "$asan_build" && ctest --output-on-failure -j "${QLORA_TEST_JOBS:-2}" -E "$asan_exclude")
t2=$(date +%s)
echo "test.sh: ASan+UBSan build $((t1 - t0)) s, tests $((t2 - t1)) s"

# ---- stage 3: fuzz smoke ------------------------------------------------------------------------
if [ "${QLORA_SKIP_FUZZ:-0}" != 1 ] && [ -x "$root/scripts/fuzz.sh" ]; then
  "$root/scripts/fuzz.sh" --smoke
fi
