#!/usr/bin/env bash
# The one-call GPU check, for a GPU machine (one that has nvcc, CMake and a Python with torch,
# but no Debian packages and no network):
#   1. configures build-gpu/ against THAT machine's torch with -DQLORA_GPU_CHECK_ONLY=ON (kernels,
#      tests/gpu with the built-in runner, bench_gpu; none of yaml-cpp/CLI11/GoogleTest/...);
#   2. runs the GPU tests (every CUDA kernel vs its CPU twin);
#   3. runs the GPU benchmarks (bench/bench_gpu.cpp);
#   4. writes logs and JSON under $OUT (default build-gpu/out) and prints a short table.
# Exit status: non-zero if the build or any GPU test failed.
# Env: OUT, GPU_BUILD_DIR, QLORA_GPU_PYTHON (default: python3 on PATH), QLORA_CUDA_ARCHS (90),
#      QLORA_GPU_QUICK=1 (shorter benchmark).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${GPU_BUILD_DIR:-$root/build-gpu}"
out="${OUT:-$build/out}"
mkdir -p "$out" "$build"
py="${QLORA_GPU_PYTHON:-$(command -v python3)}"
archs="${QLORA_CUDA_ARCHS:-90}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$(echo "$archs" | sed -E 's/([0-9])([0-9])/\1.\2/g; s/[,;]/;/g')}"

log() { echo "[gpu-check] $*"; }
log "python: $py ($("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1))"
torch_prefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')" || { log "cannot import torch"; exit 1; }
log "torch cmake prefix: $torch_prefix"
(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true) \
  | tee "$out/nvidia-smi.txt"

nvcc_bin="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
t0=$(date +%s)
{
  cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DQLORA_GPU_CHECK_ONLY=ON \
    -DQLORA_PYTHON="$py" -DQLORA_CUDA_ARCHS="$archs" -DCMAKE_CUDA_COMPILER="$nvcc_bin" \
    -DCMAKE_PREFIX_PATH="$torch_prefix" &&
  cmake --build "$build" -j "$(nproc)" --target test_gpu bench_gpu
} >"$out/build.log" 2>&1
build_rc=$?
log "build: rc=$build_rc in $(( $(date +%s) - t0 ))s (log: $out/build.log)"
if [ $build_rc -ne 0 ]; then
  tail -40 "$out/build.log"
  exit 1
fi

t0=$(date +%s)
"$build/test_gpu" 2>&1 | tee "$out/test_gpu.log"
test_rc=${PIPESTATUS[0]}
log "tests: rc=$test_rc in $(( $(date +%s) - t0 ))s"

t0=$(date +%s)
quick=()
[ "${QLORA_GPU_QUICK:-0}" = 1 ] && quick=(--quick)
"$build/bench_gpu" --out "$out/bench_gpu.json" "${quick[@]}" 2>&1 | tee "$out/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
log "bench: rc=$bench_rc in $(( $(date +%s) - t0 ))s"

echo
echo "==================== gpu-check summary ===================="
head -2 "$out/nvidia-smi.txt" | tail -1
grep -E "^[0-9]+ passed, [0-9]+ failed" "$out/test_gpu.log" || echo "tests: no summary line (crashed?)"
grep -E "FAILED" "$out/test_gpu.log" || true
sed -n '/^dequantize/,/^$/p' "$out/bench_gpu.log"
sed -n '/^linear/,/^$/p' "$out/bench_gpu.log"
echo "JSON: $out/bench_gpu.json"
[ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
