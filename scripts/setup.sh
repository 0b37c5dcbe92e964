#!/usr/bin/env bash
# Installs everything qlora needs to build and test, idempotently.
#   - Debian packages (skipped when already installed)
#   - a Python virtualenv OUTSIDE the checkout at $QLORA_CACHE/venv (default ~/.cache/qlora)
#     holding torch==2.11.0 (LibTorch headers, libraries, CMake config) and the pinned
#     reference libraries the tests use as judges (scripts/requirements.txt).
# A second run only checks stamps and takes seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QLORA_CACHE="${QLORA_CACHE:-$HOME/.cache/qlora}"
venv="$QLORA_CACHE/venv"
req="$here/requirements.txt"

debs=(build-essential cmake ninja-build pkg-config ccache git
      libyaml-cpp-dev libcli11-dev libsentencepiece-dev sentencepiece
      nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev libicu-dev
      python3-venv
      zlib1g-dev                # .jsonl.gz / .json.gz datasets
      libgloo-dev               # headers for c10d's Gloo process group (gloo itself is in libtorch)
      clang libclang-rt-14-dev  # scripts/fuzz.sh: clang with libFuzzer and the sanitizer runtimes
      libomp-14-dev)            # scripts/tsan.sh: LLVM's OpenMP runtime and its Archer tool

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  log="$(mktemp)"
  if ! { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
           --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log"; echo "setup: apt-get failed" >&2; exit 1
  fi
  rm -f "$log"
fi

# Python: prefer the interpreter on PATH (3.11 here); the venv lives outside the checkout.
py="${QLORA_PYTHON:-python3}"
stamp="$venv/.qlora-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtualenv $venv"
  mkdir -p "$QLORA_CACHE"
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into $venv (first time: a few GB)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q --progress-bar off -r "$req"
  echo "$want" > "$stamp"
fi
echo "setup: ok (venv $venv)"
