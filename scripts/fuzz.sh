#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang into build-fuzz and runs them.
#
#   scripts/fuzz.sh --smoke                every target for QLORA_FUZZ_SMOKE_S seconds (default 15),
#                                          after replaying its seed corpus and its regression inputs
#                                          (tests/fuzz/regressions/TARGET); exit 1 on any finding
#   scripts/fuzz.sh TARGET [--runs N] [--seconds S] [--no-build] [-- libFuzzer options...]
#                                          one long run; new inputs go to build-fuzz/corpus/TARGET,
#                                          findings to build-fuzz/findings/TARGET/, the log to
#                                          build-fuzz/logs/TARGET.log
#   scripts/fuzz.sh --record FILE TARGET...  after long runs: their logs as JSON (bench/results/fuzz.json)
#   scripts/fuzz.sh --list                 the targets
#   scripts/fuzz.sh --build                build only
# Environment: BUILD_DIR (default build-fuzz), QLORA_JOBS (default: cores), QLORA_CACHE.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
jobs="${QLORA_JOBS:-$(nproc)}"
fuzzdir="$root/tests/fuzz"
targets=(safetensors config dataset tokenizer_json tokenizer_config jinja peft manifest gguf)

# -max_len per target: large enough for the seeds that matter (real chat templates, a small
# tokenizer.json), small enough to keep the executions fast.
max_len() {
  case "$1" in
    tokenizer_json) echo 32768 ;;
    jinja | tokenizer_config) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

build_targets() {
  export CCACHE_DIR="${CCACHE_DIR:-${QLORA_CACHE:-$HOME/.cache/qlora}/ccache}"
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
  if [ ! -f "$build/build.ninja" ]; then
    mkdir -p "$build"
    # QLORA_CUDA_ARCHS: torch's CMake config would otherwise probe for a GPU.
    CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DQLORA_FUZZ=ON -DQLORA_CUDA=OFF -DQLORA_CUDA_ARCHS=80 >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
  fi
  cmake --build "$build" -j "$jobs" --target fuzz
}

# Options shared by every run: sanitizer findings end the run; LibTorch's one-time allocations
# are not leaks of ours, so leak checking is on only for the targets that do not load it.
run_target() {  # TARGET CORPUS_DIR [extra libFuzzer args...]
  local t="$1" work="$2"
  shift 2
  local exe="$build/fuzz/fuzz_$t" args=()
  mkdir -p "$work" "$build/findings/$t"
  args+=(-max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
         -artifact_prefix="$build/findings/$t/")
  [ -f "$fuzzdir/dict/$t.dict" ] && args+=(-dict="$fuzzdir/dict/$t.dict")
  case "$t" in safetensors | peft | manifest | gguf) args+=(-detect_leaks=0) ;; esac
  local dirs=("$work" "$fuzzdir/corpus/$t")
  [ -d "$fuzzdir/regressions/$t" ] && dirs+=("$fuzzdir/regressions/$t")
  # The files the target writes, in a folder of this run's own (RAM when /dev/shm exists).
  local tmp rc=0
  tmp="$(mktemp -d "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/qlora-fuzz.XXXXXX")"
  QLORA_FUZZ_TMP="$tmp" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
    "$exe" "${args[@]}" "$@" "${dirs[@]}" || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

case "${1:-}" in
  "" | -h | --help)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 0 ;;
  --list)
    printf '%s\n' "${targets[@]}"
    exit 0 ;;
  --build)
    build_targets
    exit 0 ;;
  --record)
    out="$2"
    shift 2
    python3 "$fuzzdir/record.py" "$build/logs" "$out" "$@"
    exit 0 ;;
  --smoke)
    build_targets
    secs="${QLORA_FUZZ_SMOKE_S:-15}"
    failed=()
    for t in "${targets[@]}"; do
      work="$(mktemp -d)"
      echo "fuzz: smoke $t (${secs}s)"
      if ! run_target "$t" "$work" -max_total_time="$secs" >"$build/smoke-$t.log" 2>&1; then
        failed+=("$t")
        tail -n 40 "$build/smoke-$t.log"
      else
        { grep -E '^#[0-9]+[[:space:]]+DONE' "$build/smoke-$t.log" || true; } | tail -n 1 | sed "s/^/fuzz: $t: /"
      fi
      rm -rf "$work"
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzz: findings in: ${failed[*]} (inputs under $build/findings/)" >&2
      exit 1
    fi
    echo "fuzz: smoke ok (${#targets[@]} targets)"
    exit 0 ;;
  -*)
    echo "fuzz.sh: unknown option $1 (see --help)" >&2
    exit 2 ;;
esac

t="$1"
shift
[[ " ${targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (--list)" >&2; exit 2; }
extra=()
build_first=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) extra+=(-runs="$2"); shift 2 ;;
    --seconds) extra+=(-max_total_time="$2"); shift 2 ;;
    --no-build) build_first=0; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$build_first" = 1 ] && build_targets
mkdir -p "$build/logs"
set +e
run_target "$t" "$build/corpus/$t" "${extra[@]}" 2>&1 | tee "$build/logs/$t.log"
rc=${PIPESTATUS[0]}
exit "$rc"
