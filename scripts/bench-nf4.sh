#!/usr/bin/env bash
# CPU NF4 benchmarks in one run: our kernels (build/bench/bench_nf4) and bitsandbytes' CPU
# dequantize as a peer (bench/bnb_cpu_peer.py), merged with a description of the machine into
# bench/results/nf4_cpu.json.   Env: BUILD_DIR (build), QLORA_BENCH_QUICK=1, OMP_NUM_THREADS.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
py="${QLORA_PYTHON:-${QLORA_CACHE:-$HOME/.cache/qlora}/venv/bin/python}"
threads="${OMP_NUM_THREADS:-$(nproc)}"
export OMP_NUM_THREADS="$threads"
quick=()
[ "${QLORA_BENCH_QUICK:-0}" = 1 ] && quick=(--quick)
"$root/scripts/build.sh" bench_nf4 >/dev/null
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$build/bench/bench_nf4" --out "$tmp/ours.json" "${quick[@]}"
"$py" "$root/bench/bnb_cpu_peer.py" "$threads" "${quick[@]}" >"$tmp/bnb.json"
mkdir -p "$root/bench/results"
"$py" - "$tmp/ours.json" "$tmp/bnb.json" "$root/bench/results/nf4_cpu.json" "$load_before" <<'PY'
import json, os, platform, subprocess, sys, datetime
ours, bnb, dst = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
load = {"before": sys.argv[4], "after": " ".join(open("/proc/loadavg").read().split()[:3])}
cpu = {}
try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache", "CPU max MHz"):
            cpu[k.strip()] = v.strip()
    flags = open("/proc/cpuinfo").read()
    cpu["avx2"], cpu["avx512f"] = " avx2" in flags, " avx512f" in flags
    cpu["mem_total"] = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split(":")[1].strip()
except OSError:
    pass
peer = {(r["rows"], r["cols"], r["out"]): r for r in bnb["dequantize"]}
for r in ours["dequantize"]:
    p = peer.get((r["rows"], r["cols"], r["out"]))
    if p:
        r["bnb_ms"], r["bnb_out_GBps"], r["speedup_vs_bnb"] = p["ms"], p["out_GBps"], p["ms"] / r["ms"]
result = {"benchmark": "NF4 CPU kernels (scripts/bench-nf4.sh)", "date": datetime.date.today().isoformat(),
          "machine": {"cpu": cpu, "kernel": platform.release(), "threads_used": ours["threads"],
                      "cpu_isa_used": ours["cpu_isa"], "load_average_1_5_15min": load,
                      "note": "load average > cores means other jobs shared the cores: absolute "
                              "numbers are low and noisy; compare the ratios measured side by side"},
          "bitsandbytes": bnb["bitsandbytes"], "torch": bnb["torch"],
          "dequantize": ours["dequantize"], "linear": ours["linear"]}
json.dump(result, open(dst, "w"), indent=2)
print("\n%-12s %-5s %8s %8s %10s %8s" % ("dequantize", "out", "GB/s", "memcpy", "bnb GB/s", "vs bnb"))
for r in ours["dequantize"]:
    print("%5dx%-6d %-5s %8.2f %8.2f %10.2f %7.1fx" % (r["rows"], r["cols"], r["out"], r["out_GBps"],
          max(r["memcpy_GBps"], r["memcpy_parallel_GBps"]), r.get("bnb_out_GBps", 0), r.get("speedup_vs_bnb", 0)))
print("wrote", dst)
PY
