#!/usr/bin/env bash
# ThreadSanitizer on the parts of qlora that run threads: the OpenMP CPU kernels (NF4 and AdamW,
# at::parallel_for), the optimizer's paging queue (a worker thread) and the sharded CPU training
# step (micro-batch shards run side by side through at::parallel_for).
#
# GCC's libgomp (the OpenMP runtime torch ships and the normal build links) is not instrumented,
# so ThreadSanitizer cannot see its fork/join and barriers and would report every parallel region
# as a race. This build links LLVM's OpenMP runtime instead (libomp from Debian's libomp-dev; it
# implements libgomp's GOMP_* entry points, so GCC's -fopenmp code runs on it) and loads its
# Archer tool (libarcher.so), which tells ThreadSanitizer about every OpenMP fork, join, barrier
# and lock: what is left is reported for real. The executables link libomp ahead of torch's
# libgomp, so torch's own parallel regions run on libomp too (one runtime in the process).
#
#   scripts/tsan.sh                    build build-tsan/ (-fsanitize=thread, libomp) and run
#   TSAN_BUILD_DIR=...  QLORA_JOBS=... as for scripts/build.sh
# Exit code 0 when no suite fails and no ThreadSanitizer report was printed; the reports are in
# build-tsan/tsan-logs/. Not part of scripts/test.sh (see README: Checked builds).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TSAN_BUILD_DIR:-$root/build-tsan}"
llvm="${QLORA_LLVM_DIR:-/usr/lib/llvm-14}"
libomp="$llvm/lib/libomp.so"
archer="$llvm/lib/libarcher.so"
for f in "$libomp" "$archer"; do
  [ -e "$f" ] || { echo "tsan.sh: $f not found (Debian: libomp-14-dev)" >&2; exit 1; }
done

BUILD_DIR="$build" \
  QLORA_CMAKE_ARGS="-DQLORA_TSAN=ON -DQLORA_CUDA=OFF -DCMAKE_CUDA_STANDARD=17 -DQLORA_TORCH_GOMP=$libomp ${QLORA_CMAKE_ARGS:-}" \
  "$root/scripts/build.sh" -k 0 test_kernels test_optim test_model

logs="$build/tsan-logs"
rm -rf "$logs"
mkdir -p "$logs"
# ThreadSanitizer of GCC 12 / LLVM 14 cannot map its shadow memory with the address-space
# randomization of recent kernels (vm.mmap_rnd_bits > 28): run without it.
norand=()
if setarch "$(uname -m)" -R true 2>/dev/null; then norand=(setarch "$(uname -m)" -R); fi

export OMP_TOOL_LIBRARIES="$archer"
export ARCHER_OPTIONS="verbose=1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
# Reports are collected, not fatal. ignore_noninstrumented_modules: accesses that interceptors
# (mutexes, malloc, memcpy) see from uninstrumented libraries (libomp, LibTorch) are not judged;
# every access made by our own (instrumented) code still is.
opts="halt_on_error=0 second_deadlock_stack=1 history_size=4 ignore_noninstrumented_modules=1"
opts="$opts suppressions=$root/tests/tsan.supp"

# Canary: the same runtime set-up must stay silent on a correct parallel loop and report a real
# race, or its verdict on the suites means nothing.
g++ -O1 -g -fsanitize=thread -fopenmp -x c++ - -x none "$libomp" -Wl,-rpath,"$(dirname "$libomp")" -o "$build/omp_canary" <<'CANARY'
#include <cstdio>
#include <vector>
int main(int argc, char**) {
  std::vector<int> v(4096);
  long sum = 0;
#pragma omp parallel for
  for (int i = 0; i < 4096; ++i) v[i] = i;
  for (int x : v) sum += x;
  int shared = 0;
  if (argc > 1) {
#pragma omp parallel
    shared++;
  }
  std::printf("%ld %d\n", sum, shared);
}
CANARY
quiet=$(TSAN_OPTIONS="$opts" "${norand[@]}" "$build/omp_canary" 2>&1 | grep -c "WARNING: ThreadSanitizer" || true)
racy=$(TSAN_OPTIONS="$opts" "${norand[@]}" "$build/omp_canary" race 2>&1 | grep -c "WARNING: ThreadSanitizer" || true)
echo "canary: correct loop $quiet reports (want 0), racy region $racy reports (want > 0)"
if [ "$quiet" != 0 ] || [ "$racy" = 0 ]; then
  echo "tsan.sh: the OpenMP-aware ThreadSanitizer set-up does not work here" >&2
  exit 1
fi
export TSAN_OPTIONS="$opts log_path=$logs/tsan"

status=0
run() {  # name, executable, gtest filter
  local name="$1" exe="$2" filter="$3"
  echo "== $name ($filter), OMP_NUM_THREADS=$OMP_NUM_THREADS"
  if ! (cd "$build/tests" && "${norand[@]}" "$build/tests/$exe" --gtest_color=no --gtest_filter="$filter" \
        >"$logs/$name.out" 2>&1); then
    echo "   FAILED (see $logs/$name.out)"
    status=1
  fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$logs/$name.out" | sed 's/^/   /' || true
  grep -h "Archer detected" "$logs/$name.out" | head -1 | sed 's/^/   /' || true
}
run kernels test_kernels '*'
run optim test_optim 'AdamW.*'
run sharded_step test_model 'ShardedStep.*'

reports=$(cat "$logs"/tsan.* 2>/dev/null | grep -c "^WARNING: ThreadSanitizer" || true)
echo "ThreadSanitizer reports: $reports (logs in $logs)"
for f in "$logs"/tsan.*; do
  [ -e "$f" ] || continue
  grep -A12 "^WARNING: ThreadSanitizer" "$f" | head -40
done
[ "$reports" = 0 ] || status=1
exit $status
