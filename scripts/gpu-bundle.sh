#!/usr/bin/env bash
# Packs what the GPU check runs into one file, .gpu-bundle/qlora-bundle.tar.xz (git-ignored), to be
# carried to a GPU machine that has torch 2.11.0+cu130 but none of our Debian packages and no
# network (scripts/gpu-check.sh unpacks and runs it there), along with .gpu-deps (the headers of
# the kernels-only fallback build there; refreshed here too):
#   bin/   qlora, test_gpu (every CUDA kernel against its CPU twin), test_kernels (the CPU kernel
#          tests, run there forced onto each instruction-set table the CPU has), bench_gpu
#   lib/   the shared libraries those need that are neither glibc nor LibTorch/CUDA (yaml-cpp,
#          SentencePiece, PCRE2, ICU, Google Benchmark, and Arrow and Parquet from the pyarrow
#          wheel, which the GPU machine lacks), and the wheel's libcudart, so one CUDA runtime is
#          loaded
#   py/    bitsandbytes (the reference side of the benchmark), trimmed to its CPU and CUDA 13.0
#          libraries
#   MANIFEST  commit, torch version, the glibc / libstdc++ versions the binaries need
# The binaries come from the normal build (scripts/build.sh, Release, CUDA architectures 80;90)
# against the same torch wheel as the GPU machine's, so LibTorch is taken from that machine's
# torch (LD_LIBRARY_PATH; the binaries use RUNPATH, which it overrides).
#   scripts/gpu-bundle.sh [--no-build] [--out FILE]
# Env: BUILD_DIR (default build), QLORA_PYTHON (the venv python, for bitsandbytes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
out="$root/.gpu-bundle/qlora-bundle.tar.xz"
do_build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) do_build=0 ;;
    --out) out="$2"; shift ;;
    *) echo "gpu-bundle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
py="${QLORA_PYTHON:-$HOME/.cache/qlora/venv/bin/python}"

if [ $do_build = 1 ]; then
  "$root/scripts/build.sh" qlora test_gpu test_kernels bench_gpu
fi
bins=("$build/qlora" "$build/tests/test_gpu" "$build/tests/test_kernels")
[ -x "$build/bench/bench_gpu" ] && bins+=("$build/bench/bench_gpu")
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "gpu-bundle.sh: $b is not built (run scripts/build.sh first)" >&2; exit 1; }
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/py"
cp "${bins[@]}" "$stage/bin/"

# Shared libraries: everything ldd resolves that is not glibc / the compiler runtime (the GPU
# machine's are newer) and not LibTorch or the NVIDIA wheels (taken from that machine's torch).
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libutil|libgcc_s|libstdc\+\+|libgomp)\.so'
for b in "${bins[@]}"; do
  ldd "$b" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
  [[ "$name" =~ $skip ]] && continue
  case "$path" in
    "$torch_lib"/*|*/site-packages/nvidia/*|*/torch/lib/../../nvidia/*) continue ;;
  esac
  cp -L "$path" "$stage/lib/$name"
done
# One CUDA runtime: the wheel's, which LibTorch itself loads.
cudart="$(dirname "$torch_lib")/../nvidia/cu13/lib/libcudart.so.13"
[ -f "$cudart" ] && cp -L "$cudart" "$stage/lib/libcudart.so.13"

bnb="$("$py" -c 'import os, bitsandbytes; print(os.path.dirname(bitsandbytes.__file__))' 2>/dev/null)"
cp -r "$bnb" "$stage/py/bitsandbytes"
# Its metadata too: transformers looks for the installed distribution before it loads a 4-bit model.
cp -r "$(dirname "$bnb")"/bitsandbytes-*.dist-info "$stage/py/"
find "$stage/py" -name __pycache__ -prune -exec rm -rf {} +
find "$stage/py/bitsandbytes" -maxdepth 1 -name 'libbitsandbytes_*.so' \
  ! -name 'libbitsandbytes_cpu.so' ! -name 'libbitsandbytes_cuda130.so' -delete

{
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "torch: $("$py" -c 'import torch; print(torch.__version__)')"
  echo "bitsandbytes: $("$py" -c 'import bitsandbytes; print(bitsandbytes.__version__)' 2>/dev/null)"
  for b in "$stage"/bin/* "$stage"/lib/*; do
    need="$({ objdump -T "$b" 2>/dev/null || true; } | { grep -oE '(GLIBC|GLIBCXX|CXXABI)_[0-9.]+' || true; } |
            sort -uV | awk -F_ '{v[$1]=$0} END {for (k in v) printf "%s ", v[k]}')"
    echo "needs: $(basename "$b"): $need"
  done
} >"$stage/MANIFEST"

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
tar -C "$stage" -cf - . | xz -T0 -"${QLORA_BUNDLE_XZ_LEVEL:-6}" >"$tmp"
mv "$tmp" "$out"
size=$(stat -c %s "$out")
echo "gpu-bundle: $out ($((size / 1024 / 1024)) MiB; $(ls "$stage/bin" | tr '\n' ' ')+ $(ls "$stage/lib" | wc -l) libraries)"
# The headers the kernels-only fallback build needs there (scripts/gpu-check.sh --kernels-only).
"$root/scripts/gpu-deps.sh" >/dev/null
if [ "$size" -gt $((48 * 1024 * 1024)) ]; then
  echo "gpu-bundle.sh: the bundle is over 48 MiB: too large to carry to a GPU machine with the working tree" >&2
  exit 1
fi
