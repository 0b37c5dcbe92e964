"""Reference AdamW runs for tests/optim, on generated parameters and gradients, one per mode:
  fp32          torch.optim.AdamW
  8bit          bitsandbytes.optim.AdamW8bit (its CPU path)
  loraplus      torch.optim.AdamW in the groups of PEFT's create_loraplus_optimizer (ratio 16,
                loraplus_weight_decay = the weight decay); manifest lr_scale: each parameter's
                group lr over the base lr
  8bit_nearest  the same bitsandbytes code path with its CPU 8-bit quantizer replaced by the exact
                nearest-entry rule (ties to the lower entry) of bitsandbytes' CUDA kernels, which
                is the rule our optimizer follows (docs/formats.md §1.7); bnb's CPU quantizer
                uses a coarse lookup table instead.
Writes raw little-endian tensors and a manifest into OUTDIR/<mode>:
  manifest.json          {"params": [{"name", "shape"}], "steps", "lrs", "betas", "eps", "weight_decay"}
  init_<i>.bin           float32 initial parameter i
  grad_<t>_<i>.bin       float32 gradient of parameter i at step t (0-based)
  final_<i>.bin          float32 parameter i after all steps
  exp_avg_<i>.bin, exp_avg_sq_<i>.bin    float32 state (torch, or bnb's 32-bit state for small tensors)
  state1_<i>.bin, state2_<i>.bin (uint8), absmax1_<i>.bin, absmax2_<i>.bin (float32): bnb 8-bit state
usage: optim_adamw.py OUTDIR STEPS THREADS
"""
import json
import os
import sys

import torch

outdir, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)

# Shapes: a LoRA-like pair, a tensor that is not a multiple of 256, a small one (< 4096 elements:
# bitsandbytes keeps fp32 state for it), a larger one.
shapes = [("a.lora_A.weight", [8, 1000]), ("a.lora_B.weight", [1000, 8]), ("b.odd", [3, 1777]),
          ("c.small", [40, 30]), ("d.big", [300, 257])]
betas, eps, wd = (0.9, 0.999), 1e-8, 0.01
LORAPLUS_RATIO = 16.0
lrs = [2e-3 * (0.5 + 0.5 * ((t % 5) / 4)) for t in range(steps)]


def quantize_nearest(A, code, absmax_out, out_uint8, blocksize):
    """bnb's CPU _quant_blockwise_fp32_direct with the exact nearest entry (x * (1/absmax))."""
    flat = A.reshape(-1).float()
    n = flat.numel()
    nb = (n + blocksize - 1) // blocksize
    blocks = torch.cat([flat, flat.new_zeros(nb * blocksize - n)]).view(nb, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scale = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    x = (blocks * scale[:, None]).reshape(-1)[:n]
    hi = torch.searchsorted(code, x).clamp(max=255)  # first entry >= x
    lo = (hi - 1).clamp(min=0)
    pick_hi = ((code[hi] - x).abs() < (x - code[lo]).abs()) | (hi == 0)
    out_uint8.copy_(torch.where(pick_hi, hi, lo).to(torch.uint8).view(out_uint8.shape))
    absmax_out.copy_(absmax)


def run(mode):
    d = os.path.join(outdir, mode)
    os.makedirs(d, exist_ok=True)

    def write(name, t):
        t.detach().contiguous().flatten().view(torch.uint8).numpy().tofile(os.path.join(d, name))

    torch.manual_seed(1234)
    params = []
    for i, (name, shape) in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(shape) * 0.1)
        write(f"init_{i}.bin", p)
        params.append(p)

    scales = [1.0] * len(params)
    if mode == "fp32":
        opt = torch.optim.AdamW(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd)
    elif mode == "loraplus":
        # PEFT's LoRA+ groups over a module tree with the parameters' names; each group's lr
        # then follows the schedule times its ratio to the base lr (as LambdaLR scales it).
        from peft.optimizers import create_loraplus_optimizer
        model = torch.nn.Module()
        for (name, _), p in zip(shapes, params):
            parts, m = name.split("."), model
            for part in parts[:-1]:
                if not hasattr(m, part):
                    m.add_module(part, torch.nn.Module())
                m = getattr(m, part)
            m.register_parameter(parts[-1], p)
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lrs[0], loraplus_lr_ratio=LORAPLUS_RATIO,
                                        betas=betas, eps=eps, loraplus_weight_decay=wd)
        for group in opt.param_groups:
            group["scale"] = group["lr"] / lrs[0]
            for p in group["params"]:
                scales[next(i for i, q in enumerate(params) if q is p)] = group["scale"]
    else:
        import bitsandbytes as bnb
        import bitsandbytes.backends.cpu.ops as bnb_cpu
        if not hasattr(bnb_cpu, "_stock_quant"):
            bnb_cpu._stock_quant = bnb_cpu._quant_blockwise_fp32_direct
        bnb_cpu._quant_blockwise_fp32_direct = quantize_nearest if mode == "8bit_nearest" else bnb_cpu._stock_quant
        opt = bnb.optim.AdamW8bit(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd)

    for t in range(steps):
        for i, p in enumerate(params):
            # gradients of growing and varying scale; fp32: some exact zeros. (Not for 8-bit: an
            # element whose v was stored as 0 gets the update lr*m/eps from an exact-zero gradient,
            # on bnb's CUDA path and ours; bnb's CPU lookup table never stores 0 and hides that, so
            # the two would disagree by design - see trainer/optim/adamw.h.)
            g = torch.randn(p.shape) * (0.01 * (1 + t)) * (1 + i)
            if mode == "fp32":
                g[torch.rand(p.shape) < 0.05] = 0.0
            write(f"grad_{t}_{i}.bin", g)
            p.grad = g
        for group in opt.param_groups:
            group["lr"] = lrs[t] * group.get("scale", 1.0)
        opt.step()

    for i, p in enumerate(params):
        write(f"final_{i}.bin", p)
        st = opt.state[p]
        if "exp_avg" in st:
            write(f"exp_avg_{i}.bin", st["exp_avg"])
            write(f"exp_avg_sq_{i}.bin", st["exp_avg_sq"])
        elif st["state1"].dtype == torch.uint8:
            for k in ("state1", "state2", "absmax1", "absmax2"):
                write(f"{k}_{i}.bin", st[k])
        else:  # bitsandbytes' 32-bit state for small tensors
            write(f"exp_avg_{i}.bin", st["state1"])
            write(f"exp_avg_sq_{i}.bin", st["state2"])

    manifest = {"params": [{"name": n, "shape": s, "lr_scale": k} for (n, s), k in zip(shapes, scales)],
                "steps": steps, "lrs": lrs,
                "betas": list(betas), "eps": eps, "weight_decay": wd}
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)


for mode in ("fp32", "8bit", "8bit_nearest", "loraplus"):
    run(mode)
print("ok")
