"""transformers + bitsandbytes (CPU) as the judges of `qlora quantize` (tests/quant/test_bnb_checkpoint.cpp).

  bnb_checkpoint.py make DIR ARCH        tiny random bf16 model (ARCH: llama | qwen2 | phi3) saved to DIR
  bnb_checkpoint.py compare BASE OURS_DQ OURS_NODQ WORK REPORT.json
      quantizes BASE with transformers itself (BitsAndBytesConfig nf4, with and without double
      quantization), saves those to WORK/ref_dq and WORK/ref_nodq, loads our checkpoints with
      from_pretrained, and reports facts as JSON (the C++ test decides what must hold):
        config / key set / dtypes / shapes / quant_state JSON equal to transformers' own save,
        4-bit code and 8-bit code differences, logits differences, logits after giving
        transformers' model our 8-bit absmax codes; and writes WORK/bnb_dequant.safetensors:
        bnb's dequantization (float32) of every 4-bit weight of transformers' checkpoints.
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
import bitsandbytes.functional as F

from bnb_fp32 import fp32_linear4bit_on_cpu  # tests/python, next to this script

fp32_linear4bit_on_cpu()

SUFFIX = ".weight.quant_state.bitsandbytes__nf4"


def make(d, arch):
    torch.manual_seed(1234)
    common = dict(vocab_size=320, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif arch == "phi3":  # fused qkv_proj and gate_up_proj
        model = transformers.Phi3ForCausalLM(transformers.Phi3Config(**common, pad_token_id=0))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():  # larger spread than the default init, so codes use the whole table
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    model.to(torch.bfloat16).save_pretrained(d)


def load_q(path, double_quant=None):
    kw = {}
    if double_quant is not None:
        kw["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16)
    m = transformers.AutoModelForCausalLM.from_pretrained(path, device_map="cpu", **kw)
    m.eval()
    return m


def tensors(path):
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), "pt") as f:
                for k in f.keys():
                    out[k] = f.get_tensor(k)
    return out


def codes(packed):
    p = packed.reshape(-1)
    return torch.stack([p >> 4, p & 15], dim=1).reshape(-1)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def compare(base, ours_dq, ours_nodq, work, report_path):
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(7))
    rep = {"transformers": transformers.__version__, "bitsandbytes": __import__("bitsandbytes").__version__}
    dequant = {}
    for tag, ours, dq in (("dq", ours_dq, True), ("nodq", ours_nodq, False)):
        ref_dir = os.path.join(work, "ref_" + tag)
        ref = load_q(base, dq)
        ref.save_pretrained(ref_dir)
        mine = load_q(ours)
        r = {}
        r["linear4bit_modules"] = sum(type(m).__name__ == "Linear4bit" for m in mine.modules())
        r["ref_linear4bit_modules"] = sum(type(m).__name__ == "Linear4bit" for m in ref.modules())
        qc_ours = json.load(open(os.path.join(ours, "config.json")))["quantization_config"]
        qc_ref = json.load(open(os.path.join(ref_dir, "config.json")))["quantization_config"]
        r["quantization_config_equal"] = qc_ours == qc_ref
        r["quantization_config_ours"], r["quantization_config_ref"] = qc_ours, qc_ref
        to, tr = tensors(ours), tensors(ref_dir)
        r["keys_equal"] = sorted(to) == sorted(tr)
        r["keys_only_ours"] = sorted(set(to) - set(tr))[:10]
        r["keys_only_ref"] = sorted(set(tr) - set(to))[:10]
        common = sorted(set(to) & set(tr))
        r["dtype_shape_mismatch"] = [k for k in common if to[k].dtype != tr[k].dtype or to[k].shape != tr[k].shape]
        code_diff = q8_diff = q8_total = n_codes = 0
        other_diff, json_diff = [], []
        for k in common:
            a, b = to[k], tr[k]
            if a.dtype != b.dtype or a.shape != b.shape:
                continue
            if k.endswith(SUFFIX):
                ja, jb = json.loads(bytes(a.tolist())), json.loads(bytes(b.tolist()))
                if ja != jb or not torch.equal(a, b):  # the same dict, and the same bytes
                    json_diff.append([k, bytes(a.tolist()).decode(), bytes(b.tolist()).decode()])
            elif k + ".quant_state.bitsandbytes__nf4" in to:  # packed 4-bit codes
                ca, cb = codes(a), codes(b)
                code_diff += int((ca != cb).sum())
                n_codes += ca.numel()
            elif k.endswith(".weight.absmax") and a.dtype == torch.uint8:
                q8_diff += int((a != b).sum())
                q8_total += a.numel()
            elif not torch.equal(a, b):
                other_diff.append(k)
        r.update(code_diff=code_diff, n_codes=n_codes, q8_diff=q8_diff, q8_total=q8_total,
                 other_tensor_diff=other_diff, json_diff=json_diff[:5])
        lo, lr = logits(mine, ids), logits(ref, ids)
        r["logits_max_abs_diff"] = float((lo - lr).abs().max())
        r["logits_rel_norm_diff"] = float((lo - lr).norm() / lr.norm())
        r["logits_bit_equal"] = bool(torch.equal(lo, lr))
        if dq:
            # transformers' own model with our 8-bit absmax codes: the only other difference
            swapped = 0
            mods = dict(mine.named_modules())
            for name, m in ref.named_modules():
                if type(m).__name__ == "Linear4bit":
                    m.weight.quant_state.absmax = mods[name].weight.quant_state.absmax.clone()
                    swapped += 1
            ls = logits(ref, ids)
            r["swapped_modules"] = swapped
            r["logits_bit_equal_after_swapping_8bit_codes"] = bool(torch.equal(lo, ls))
            r["logits_max_abs_diff_after_swap"] = float((lo - ls).abs().max())
        # bnb's dequantization of transformers' own checkpoint, for our reader
        for name, m in load_q(ref_dir).named_modules():
            if type(m).__name__ == "Linear4bit":
                qs = m.weight.quant_state
                qs_dtype = qs.dtype
                qs.dtype = torch.float32
                dequant[tag + ":" + name] = F.dequantize_4bit(m.weight.data, qs).contiguous()
                qs.dtype = qs_dtype
        rep[tag] = r
    save_file(dequant, os.path.join(work, "bnb_dequant.safetensors"))
    json.dump(rep, open(report_path, "w"), indent=1)
    print(json.dumps(rep)[:2000])


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        compare(*sys.argv[2:7])
