#!/usr/bin/env bash
# CPU NF4 benchmarks in one run: our kernels (build/bench/bench_nf4) and bitsandbytes' CPU
# dequantize as a peer (bench/bnb_cpu_peer.py), for each thread count in BENCH_THREADS (default
# "1 <nproc>"), merged with a description of the machine into bench/results/nf4_cpu.json.
# Env: BUILD_DIR (build), BENCH_THREADS, QLORA_BENCH_QUICK=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
py="${QLORA_PYTHON:-${QLORA_CACHE:-$HOME/.cache/qlora}/venv/bin/python}"
threads_list="${BENCH_THREADS:-1 $(nproc)}"
quick=()
[ "${QLORA_BENCH_QUICK:-0}" = 1 ] && quick=(--quick)
"$root/scripts/build.sh" bench_nf4 >/dev/null
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for t in $threads_list; do
  echo "== $t thread(s); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  cut -d' ' -f1-3 /proc/loadavg >"$tmp/load_$t"
  OMP_NUM_THREADS=$t "$build/bench/bench_nf4" --out "$tmp/ours_$t.json" "${quick[@]}"
  OMP_NUM_THREADS=$t "$py" "$root/bench/bnb_cpu_peer.py" "$t" "${quick[@]}" >"$tmp/bnb_$t.json"
done
mkdir -p "$root/bench/results"
"$py" - "$tmp" "$root/bench/results/nf4_cpu.json" $threads_list <<'PY'
import datetime, json, platform, subprocess, sys
tmp, dst, threads = sys.argv[1], sys.argv[2], sys.argv[3:]
cpu = {}
for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
    k, _, v = line.partition(":")
    if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "L1d cache", "L2 cache", "L3 cache", "CPU max MHz"):
        cpu[k.strip()] = v.strip()
flags = open("/proc/cpuinfo").read()
cpu["avx2"], cpu["avx512f"] = " avx2" in flags, " avx512f" in flags
cpu["mem_total"] = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split(":")[1].strip()
runs = []
for t in threads:
    ours, bnb = json.load(open(f"{tmp}/ours_{t}.json")), json.load(open(f"{tmp}/bnb_{t}.json"))
    peer = {(r["rows"], r["cols"], r["out"]): r for r in bnb["dequantize"]}
    for r in ours["dequantize"]:
        p = peer[(r["rows"], r["cols"], r["out"])]
        # bitsandbytes allocates its output each call: compare with our allocating call
        r["bnb_ms"], r["speedup_vs_bnb_same_allocation"] = p["ms"], p["ms"] / r["alloc_ms"]
    runs.append({"threads": int(t), "load_average_before": open(f"{tmp}/load_{t}").read().strip(),
                 "cpu_isa_used": ours["cpu_isa"], "dequantize": ours["dequantize"], "linear": ours["linear"]})
    bnb_version, torch_version = bnb["bitsandbytes"], bnb["torch"]
result = {"benchmark": "NF4 CPU kernels (scripts/bench-nf4.sh)", "date": datetime.date.today().isoformat(),
          "machine": {"cpu": cpu, "kernel": platform.release(),
                      "note": "a load average above the core count means other jobs shared the cores during the "
                              "run: absolute numbers are then low and noisy; the ratios are measured side by side"},
          "bitsandbytes": bnb_version, "torch": torch_version, "runs": runs}
json.dump(result, open(dst, "w"), indent=2)
for run in runs:
    print(f"\n{run['threads']} thread(s), load {run['load_average_before']}")
    print("%-12s %-5s %8s %8s %7s %9s %9s %7s" % ("dequantize", "out", "GB/s", "memcpy", "ratio", "alloc ms",
                                                 "bnb ms", "vs bnb"))
    for r in run["dequantize"]:
        print("%5dx%-6d %-5s %8.2f %8.2f %7.2f %9.2f %9.2f %6.1fx" % (
            r["rows"], r["cols"], r["out"], r["out_GBps"], max(r["memcpy_GBps"], r["memcpy_parallel_GBps"]),
            r["ratio_vs_best_memcpy"], r["alloc_ms"], r["bnb_ms"], r["speedup_vs_bnb_same_allocation"]))
    print("%-18s %9s %9s %7s %9s %9s %7s" % ("linear M,N,K", "nf4 ms", "dense ms", "ratio", "bwd ms", "dense", "ratio"))
    for r in run["linear"]:
        print("%4d,%6d,%5d  %9.3f %9.3f %7.2f %9.3f %9.3f %7.2f" % (
            r["M"], r["N"], r["K"], r["nf4_ms"], r["dense_fp32_ms"], r["time_ratio"], r["nf4_grad_input_ms"],
            r["dense_grad_input_ms"], r["grad_time_ratio"]))
print("\nwrote", dst)
PY
