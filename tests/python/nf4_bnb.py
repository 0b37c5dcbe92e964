"""bitsandbytes (CPU) as the judge for our NF4 numerics (tests/kernels/test_nf4_bnb.cpp).

Usage: nf4_bnb.py DIR. DIR/cases.txt has one case per line:
    name dtype blocksize dq ndim dim0 dim1 ...
and for each case the C++ side wrote raw little-endian files:
    name.x        the input (dtype float32 / bfloat16 / float16)
    name.packed   our uint8 codes, name.absmax (uint8 with dq, else float32),
    name.nested   our float32 nested absmax, name.offset (one float32)   [dq only]
This script writes, for each case:
    name.bnb_packed, name.bnb_absmax_f32    bnb.quantize_4bit without compress_statistics
    name.bnb_qabsmax, name.bnb_nested, name.bnb_offset, name.bnb_packed_dq   with it [dq only]
    name.bnb_deq_ours_{f32,bf16,f16}        bnb.dequantize_4bit of OUR packed bytes + statistics
    name.bnb_deq_bnb_{f32,bf16,f16}         bnb.dequantize_4bit of bnb's own bytes + statistics
    name.bnb_rec_ours                       absmax bnb reconstructs from our dq statistics [dq]
    name.bnb_rec_bnb                        absmax bnb reconstructs from its dq statistics [dq]
"""
import os
import sys
import time

# bitsandbytes wraps its pure-torch CPU fallbacks (odd shapes) in torch.compile; eager mode is the
# same arithmetic without minutes of inductor compilation on a cold cache.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import torch
import bitsandbytes.functional as F

from bnb_fp32 import exact_dequantize_4bit_on_cpu  # tests/python, next to this script

# bitsandbytes' AVX-512 CPU dequantize kernel assumes whole blocks per row; NF4 blocks run over the
# flattened tensor. This hands its kernel the flattened tensor (bnb_fp32.py says why and how).
exact_dequantize_4bit_on_cpu()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OUT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def load(path, dtype, shape=None):
    raw = np.fromfile(path, dtype=np.uint8)
    t = torch.from_numpy(raw).view(dtype)
    return t.reshape(shape) if shape is not None else t


def save(path, t):
    t.contiguous().view(torch.uint8).numpy().tofile(path)


def main(d):
    code = F.get_4bit_type("nf4", device="cpu")
    dmap = F.create_dynamic_map(signed=True)
    for line in open(os.path.join(d, "cases.txt")):
        t0 = time.time()
        f = line.split()
        if not f:
            continue
        name, dtype, bs, dq, ndim = f[0], DTYPES[f[1]], int(f[2]), f[3] == "1", int(f[4])
        shape = tuple(int(v) for v in f[5:5 + ndim])
        p = lambda suffix: os.path.join(d, name + "." + suffix)
        x = load(p("x"), dtype, shape)

        packed, st = F.quantize_4bit(x, blocksize=bs, compress_statistics=False, quant_type="nf4")
        save(p("bnb_packed"), packed)
        save(p("bnb_absmax_f32"), st.absmax)
        if dq:
            packed_dq, st_dq = F.quantize_4bit(x, blocksize=bs, compress_statistics=True, quant_type="nf4")
            save(p("bnb_packed_dq"), packed_dq)
            save(p("bnb_qabsmax"), st_dq.absmax)
            save(p("bnb_nested"), st_dq.state2.absmax)
            save(p("bnb_offset"), st_dq.offset.reshape(1).float())
            rec = F.dequantize_blockwise(st_dq.absmax, st_dq.state2) + st_dq.offset
            save(p("bnb_rec_bnb"), rec)
            bnb_state = st_dq
            bnb_packed = packed_dq
        else:
            bnb_state = st
            bnb_packed = packed

        # Our packed bytes and statistics, handed to bitsandbytes as a QuantState.
        n = x.numel()
        ours_packed = load(p("packed"), torch.uint8).reshape(-1, 1)
        assert ours_packed.shape[0] == (n + 1) // 2
        if dq:
            ours_q = load(p("absmax"), torch.uint8)
            ours_nested = load(p("nested"), torch.float32)
            ours_offset = load(p("offset"), torch.float32).reshape(())
            state2 = F.QuantState(absmax=ours_nested, code=dmap, blocksize=256, dtype=torch.float32)
            ours_state = F.QuantState(absmax=ours_q, shape=x.shape, code=code, blocksize=bs, quant_type="nf4",
                                      dtype=torch.float32, offset=ours_offset, state2=state2)
            rec = F.dequantize_blockwise(ours_q, state2) + ours_offset
            save(p("bnb_rec_ours"), rec)
        else:
            ours_state = F.QuantState(absmax=load(p("absmax"), torch.float32), shape=x.shape, code=code,
                                      blocksize=bs, quant_type="nf4", dtype=torch.float32)

        for tag, odt in OUT.items():
            ours_state.dtype = odt
            save(p("bnb_deq_ours_" + tag), F.dequantize_4bit(ours_packed, ours_state))
            bnb_state.dtype = odt
            save(p("bnb_deq_bnb_" + tag), F.dequantize_4bit(bnb_packed, bnb_state))
        print("case", name, "n", n, "%.1fs" % (time.time() - t0), flush=True)
    print("bitsandbytes", __import__("bitsandbytes").__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main(sys.argv[1])
