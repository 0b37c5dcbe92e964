"""bitsandbytes as an fp32 judge on every CPU.

On a CPU with AVX512-BF16, bitsandbytes' Linear4bit (0.50) repacks its weights the first time it
runs in eval mode without autograd and then multiplies in bf16: inputs and absmax are rounded to
bf16, about 1e-3 relative error, and some shapes fail outright. On other CPUs it dequantizes to
the compute dtype and multiplies in fp32. Our CPU path computes in fp32, so the reference scripts
call fp32_linear4bit_on_cpu() before they build a 4-bit model: every CPU then gets the fp32 path.
"""


def fp32_linear4bit_on_cpu():
    import bitsandbytes.nn.modules as modules
    # Linear4bit.__init__ asks this once per module (support_avx512bf16_for_cpu).
    modules.has_avx512bf16 = lambda: False
