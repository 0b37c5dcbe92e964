"""Smoke test of the reference environment: the judges import and bnb NF4 works on CPU."""
import torch, transformers, peft, bitsandbytes, tokenizers, sentencepiece, safetensors  # noqa: F401
import bitsandbytes.functional as F

x = torch.randn(4096, dtype=torch.float32)
q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
y = F.dequantize_4bit(q, st)
assert q.dtype == torch.uint8 and q.numel() == 2048, (q.dtype, q.shape)
err = (y - x).abs().max().item()
assert err < 0.5 * x.abs().max().item(), err
print(f"ok torch={torch.__version__} transformers={transformers.__version__} peft={peft.__version__} "
      f"bitsandbytes={bitsandbytes.__version__} maxerr={err:.4f}")
