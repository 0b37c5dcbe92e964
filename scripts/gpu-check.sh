#!/usr/bin/env bash
# The one-call GPU check. On a GPU machine (torch 2.11.0+cu130 in its python3, nvcc, CMake; none of
# our Debian packages; no network) it runs the real program from the bundle that
# scripts/gpu-bundle.sh made here (.gpu-bundle/qlora-bundle.tar.xz, carried along):
#   1. unpacks the bundle, points LD_LIBRARY_PATH at its libraries and that machine's LibTorch,
#      and checks that `qlora --version` loads and sees the GPU;
#   2. runs scripts/gpu_check.py: the GPU kernel tests, the CPU kernel tests forced onto the
#      AVX-512 table, the demo on the GPU against the CPU, resume after SIGTERM, export and
#      generate, the kernel benchmark and the end-to-end benchmark (bench/e2e_gpu.py);
#   3. leaves gpu_check.json, bench_e2e.json, bench_gpu.json, summary.txt and logs.tar.gz in $OUT
#      and prints the table last.
# If the bundle is missing or does not load there, it falls back to building kernels/ and the GPU
# kernel tests from source against that machine's torch (--kernels-only) and says why.
#
#   scripts/gpu-check.sh                 on the GPU machine
#   scripts/gpu-check.sh --dry-run       here, on the CPU: bundles the current build, unpacks it
#                                        like the GPU machine does and runs every step with tiny
#                                        shapes (tests/gpu_check_dry_run runs this)
#   scripts/gpu-check.sh --kernels-only  only the source build of the kernel tests and bench_gpu
#   --only STEP,...                      only these steps of scripts/gpu_check.py, e.g. a first call
#                                        with gpu_tests,cpu_isa,demo,resume,offload,dora,export and a
#                                        second with bench_e2e and the whole budget
# Env: OUT (default <work>/out), QLORA_GPU_WORK (default /tmp/qlora-gpu-check), QLORA_GPU_BUDGET_S
#      (seconds for every step together; default 480, 400 for --dry-run), QLORA_GPU_PYTHON
#      (default python3), BUILD_DIR (--dry-run: the build to bundle), QLORA_CUDA_ARCHS (90).
# Exit status: 0 when every step that ran passed.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode=device
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry ;;
    --kernels-only) mode=kernels ;;
    --only) only="${2:-}"; shift ;;
    *) echo "usage: scripts/gpu-check.sh [--dry-run | --kernels-only] [--only STEP,STEP...]" >&2; exit 2 ;;
  esac
  shift
done
work="${QLORA_GPU_WORK:-/tmp/qlora-gpu-check}"
out="${OUT:-$work/out}"
mkdir -p "$work" "$out"
log() { echo "[gpu-check] $*"; }

kernels_only() {  # the source build of kernels/ + tests/gpu + bench_gpu against this machine's torch
  local py build archs torch_prefix nvcc_bin gen t0 build_rc test_rc bench_rc
  py="${QLORA_GPU_PYTHON:-$(command -v python3)}"
  build="${GPU_BUILD_DIR:-$root/build-gpu}"
  archs="${QLORA_CUDA_ARCHS:-90}"
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$(echo "$archs" | sed -E 's/([0-9])([0-9])/\1.\2/g; s/[,;]/;/g')}"
  torch_prefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')" || { log "cannot import torch"; return 1; }
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
  log "kernels-only build: rc=$build_rc in $(( $(date +%s) - t0 ))s (log: $out/build.log)"
  if [ $build_rc -ne 0 ]; then tail -40 "$out/build.log"; return 1; fi
  "$build/test_gpu" 2>&1 | tee "$out/test_gpu.log"
  test_rc=${PIPESTATUS[0]}
  "$build/bench_gpu" --out "$out/bench_gpu.json" --quick 2>&1 | tee "$out/bench_gpu.log"
  bench_rc=${PIPESTATUS[0]}
  grep -E "^[0-9]+ passed, [0-9]+ failed" "$out/test_gpu.log" || echo "tests: no summary line (crashed?)"
  [ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
}

if [ $mode = kernels ]; then
  kernels_only
  exit $?
fi

py="${QLORA_GPU_PYTHON:-$(command -v python3)}"
bundle="$root/.gpu-bundle/qlora-bundle.tar.xz"
device=cuda
budget="${QLORA_GPU_BUDGET_S:-480}"
if [ $mode = dry ]; then
  py="${QLORA_GPU_PYTHON:-$HOME/.cache/qlora/venv/bin/python}"
  bundle="$work/qlora-bundle.tar.xz"
  device=cpu
  budget="${QLORA_GPU_BUDGET_S:-400}"
  QLORA_BUNDLE_XZ_LEVEL=0 "$root/scripts/gpu-bundle.sh" --no-build --out "$bundle" || exit 1
fi
(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true) \
  >"$out/nvidia-smi.txt"
log "python: $py ($("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1))"

if [ ! -f "$bundle" ]; then
  log "no bundle at $bundle (make it with scripts/gpu-bundle.sh where the project builds, and carry .gpu-bundle)"
  log "falling back to the kernels-only source build; the trainer steps do not run"
  kernels_only
  exit 1
fi
unpacked="$work/bundle"
rm -rf "$unpacked"
"$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$bundle" "$unpacked" || exit 1
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$unpacked/lib:$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$unpacked/py${PYTHONPATH:+:$PYTHONPATH}"
cat "$unpacked/MANIFEST" | sed 's/^/[gpu-check] bundle /'
if ! version="$("$unpacked/bin/qlora" --version 2>&1)"; then
  log "the bundled qlora does not start here:"
  echo "$version" | head -20
  ldd "$unpacked/bin/qlora" | grep -E "not found|version" | head -20
  log "falling back to the kernels-only source build; the trainer steps do not run"
  kernels_only
  exit 1
fi
echo "$version" | sed 's/^/[gpu-check] /'
if [ $mode = device ] && ! echo "$version" | grep -q "^GPU: [0-9]"; then
  log "qlora sees no GPU here; nothing to check"
  exit 1
fi

args=(--bin "$unpacked/bin" --repo "$root" --out "$out" --work "$work" --device "$device" --budget-s "$budget")
[ $mode = dry ] && args+=(--dry-run)
[ -n "$only" ] && args+=(--only "$only")
PYTHONUNBUFFERED=1 "$py" "$root/scripts/gpu_check.py" "${args[@]}"
