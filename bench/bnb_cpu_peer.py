"""bitsandbytes' CPU dequantize as a peer of bench/bench_nf4.cpp (same shapes, same statistics).

Times bitsandbytes.functional.dequantize_4bit (NF4, blocksize 64, compress_statistics=True, so the
absmax reconstruction is included, as in ours), median of repeats. Its CPU backend has no out=
variant, so each call allocates its output: compare with our "alloc" timing (nf4_dequantize).
Usage: bnb_cpu_peer.py THREADS [--quick]; prints JSON.
"""
import json
import sys
import time

import torch
import bitsandbytes
import bitsandbytes.functional as F


def median_seconds(fn, reps):
    fn()
    fn()
    inner = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if time.perf_counter() - t0 >= 0.02 or inner >= 1 << 20:
            break
        inner *= 2
    v = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        v.append((time.perf_counter() - t0) / inner)
    v.sort()
    return v[len(v) // 2]


def main():
    threads = int(sys.argv[1])
    reps = 3 if "--quick" in sys.argv else 7
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows_out = []
    for rows, cols in [(4096, 4096), (11008, 4096)]:
        w = torch.randn(rows, cols) * 0.02
        packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        for name, dt in [("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)]:
            state.dtype = dt
            s = median_seconds(lambda: F.dequantize_4bit(packed, state), reps)
            nbytes = rows * cols * torch.tensor([], dtype=dt).element_size()
            rows_out.append({"rows": rows, "cols": cols, "out": name, "ms": s * 1e3, "out_GBps": nbytes / s / 1e9})
            print(f"bnb dequantize {rows}x{cols} {name}: {s * 1e3:.2f} ms, {nbytes / s / 1e9:.2f} GB/s",
                  file=sys.stderr)
    print(json.dumps({"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "threads": threads,
                      "dequantize": rows_out}))


if __name__ == "__main__":
    main()
