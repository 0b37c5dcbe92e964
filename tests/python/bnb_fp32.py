"""bitsandbytes as an exact fp32 judge on every CPU.

Two things differ on a CPU with AVX-512 from an AVX2-only CPU:

1. On a CPU with AVX512-BF16, bitsandbytes' Linear4bit (0.50) repacks its weights the first time it
   runs in eval mode without autograd and then multiplies in bf16: inputs and absmax are rounded to
   bf16, about 1e-3 relative error, and some shapes fail outright. On other CPUs it dequantizes to
   the compute dtype and multiplies in fp32. Our CPU path computes in fp32, so the reference scripts
   call fp32_linear4bit_on_cpu() before they build a 4-bit model: every CPU then gets the fp32 path.

2. On a CPU with AVX-512F, bitsandbytes' native CPU dequantize_4bit kernel
   (csrc/cpu_ops.cpp dequantizeBlockwise4bitCpu, its AVX-512 branch, taken when the last dimension n
   is a multiple of 16) reads the scale of element (row, col) from absmax[row * (n / blocksize) +
   col / blocksize]: it assumes every row holds whole blocks. NF4 blocks run over the flattened
   tensor (bitsandbytes' own quantize_4bit, its CUDA kernels, its scalar CPU branch, its pure-torch
   implementation, and kernels/nf4.h all use absmax[(row * n + col) / blocksize]), so for n % 16 == 0
   and n % blocksize != 0 (a down_proj with in_features 96 or 352, blocksize 64) that branch scales
   most elements with another block's absmax: 40018 of 45056 elements of a [128, 352] weight differ,
   by up to 0.1 on weights of spread 0.05 (test_nf4_bnb.cpp case rows_cross_n16 checks this shape).
   Every 4-bit path of bitsandbytes on the CPU (F.dequantize_4bit, Linear4bit in eval and train
   mode) goes through that op. exact_dequantize_4bit_on_cpu() wraps the op's CPU kernel so that the
   same bitsandbytes kernel sees the weight as what the format says it is, one flattened row
   (shape (1, numel)); its output is reshaped back. With one row the AVX-512 branch indexes absmax by
   the flat position, the scalar branch is unchanged (it was already flat), and bitsandbytes' own
   pure-torch fallbacks still run where it takes them (an odd last dimension gets the real shape;
   blocksize >= 2048 on AVX-512). Same kernel, same rounding, same NaN handling.
"""

_override_lib = None  # the torch.library.Library that holds the override (kept alive)


def exact_dequantize_4bit_on_cpu():
    global _override_lib
    if _override_lib is not None:
        return
    import gc
    import math
    import warnings
    import torch
    import bitsandbytes.backends.cpu.ops as cpu_ops
    from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib as native_lib

    if isinstance(native_lib, ErrorHandlerMockBNBNativeLibrary):
        return  # no native library: the op runs bitsandbytes' pure-torch kernel, which is flat already

    # bitsandbytes' CPU kernel of the op (registered as an anonymous function; torch keeps it only
    # inside its dispatcher): the one function of that module that has the odd-shape fallback.
    found = [f for f in gc.get_objects()
             if type(f).__name__ == "function" and f.__module__ == cpu_ops.__name__
             and "shape_fallback" in f.__code__.co_varnames and "quant_type" in f.__code__.co_varnames]
    if len(found) != 1:
        raise RuntimeError("bnb_fp32: bitsandbytes' CPU dequantize_4bit kernel not found (%d candidates); "
                           "this workaround was written for bitsandbytes 0.50" % len(found))
    native = found[0]

    def dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
        if len(shape) == 0 or shape[-1] % 2 != 0:  # bitsandbytes' own flat fallback handles these
            return native(A, absmax, blocksize, quant_type, shape, dtype)
        return native(A, absmax, blocksize, quant_type, [1, math.prod(shape)], dtype).reshape(shape)

    lib = torch.library.Library("bitsandbytes", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore", UserWarning)
        lib.impl("dequantize_4bit", dequantize_4bit, "CPU", allow_override=True)
    _override_lib = lib


def fp32_linear4bit_on_cpu():
    """Both of the above: fp32 Linear4bit and the exact dequantization, on every CPU."""
    import bitsandbytes.nn.modules as modules
    # Linear4bit.__init__ asks this once per module (support_avx512bf16_for_cpu).
    modules.has_avx512bf16 = lambda: False
    exact_dequantize_4bit_on_cpu()
