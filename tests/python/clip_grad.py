"""torch.nn.utils.clip_grad_norm_ on generated gradients. Writes into OUTDIR the gradients before
(in_<case>_<i>.bin) and after (out_<case>_<i>.bin) clipping as raw bytes, and prints one line per
case:  <case> <dtype> <max_norm> <count> <n_0> ... <total_norm repr>
usage: clip_grad.py OUTDIR THREADS"""
import os
import sys

import torch

outdir, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(7)
cases = [("fp32_clip", torch.float32, 1.0, 3.0), ("fp32_noclip", torch.float32, 100.0, 0.01),
         ("bf16_clip", torch.bfloat16, 0.5, 2.0), ("mixed", None, 1.0, 1.0)]
sizes = [1000, 37, 4096, 5]
for name, dtype, max_norm, scale in cases:
    grads = []
    for i, n in enumerate(sizes):
        dt = dtype if dtype is not None else (torch.bfloat16 if i % 2 else torch.float32)
        grads.append((torch.randn(n) * scale).to(dt))
    for i, g in enumerate(grads):
        g.contiguous().view(torch.uint8).numpy().tofile(os.path.join(outdir, f"in_{name}_{i}.bin"))
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype))
        p.grad = g.clone()
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    for i, p in enumerate(params):
        p.grad.contiguous().view(torch.uint8).numpy().tofile(os.path.join(outdir, f"out_{name}_{i}.bin"))
    dts = " ".join("bf16" if g.dtype == torch.bfloat16 else "f32" for g in grads)
    print(name, repr(max_norm), len(grads), dts, " ".join(str(n) for n in sizes), repr(total.item()))
