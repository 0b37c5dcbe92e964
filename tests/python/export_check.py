"""transformers, PEFT and bitsandbytes (CPU) as the judges of `qlora export` (tests/export).

usage: export_check.py SPEC.json   -> prints "RESULT <one JSON object>" (the facts; the C++ test decides)
       export_check.py make-gemma DIR
           DIR/<gemma2|gemma3>/model: model_ref.py's tiny random Gemma 2 / Gemma 3 text models (fp32),
           DIR/<...>/adapter: a PEFT LoRA adapter (r 4, alpha 8, all linear layers) for it with random
           lora_B, saved by PEFT

SPEC: {"ids": FILE.safetensors holding "input_ids" [B, T], "checks": [CHECK, ...]}; each check
reports under its "name":
  {"kind": "peft", "base": DIR, "adapter": DIR, "ours": LOGITS.safetensors, "bnb": bool}
      PeftModel.from_pretrained(base, adapter) in fp32 (base loaded as transformers loads it: a
      bnb-4bit checkpoint through bitsandbytes on the CPU); rel = max|ref - ours| / max|ref|;
      also the adapter files' facts (config keys, tensor dtypes, keys).
  {"kind": "merged", "model": DIR, "ours": LOGITS.safetensors, "dtype": "float32"|"bfloat16"}
      AutoModelForCausalLM.from_pretrained(DIR, dtype=dtype) logits vs ours; config facts, files.
  {"kind": "merged_vs_peft", "model": DIR, "base": DIR, "adapter": DIR}
      logits of the merged model vs PeftModel(base 16-bit, adapter), both fp32.
  {"kind": "cast", "a": DIR, "b": DIR, "dtype": "bfloat16"}
      every tensor of DIR a equals DIR b's tensor cast to dtype (bit-exact), counts mismatches.
"""
import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

from bnb_checkpoint import tensors  # every tensor of a (sharded) safetensors directory


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load(path, dtype=torch.float32):
    m = transformers.AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=dtype)
    m.eval()
    return m


def check(c, ids):
    k = c["kind"]
    if k == "peft":
        base = load(c["base"])
        model = PeftModel.from_pretrained(base, c["adapter"])
        model.eval()
        ref = logits(model, ids)
        ours = load_file(c["ours"])["logits"].float()
        cfg = json.load(open(os.path.join(c["adapter"], "adapter_config.json")))
        st = load_file(os.path.join(c["adapter"], "adapter_model.safetensors"))
        lora_layers = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
        return {"rel": rel(ours, ref), "peft_type": cfg.get("peft_type"), "r": cfg.get("r"),
                "dtypes": sorted({str(v.dtype) for v in st.values()}), "keys": len(st),
                "default_in_keys": any(".default." in k for k in st), "lora_layers": lora_layers,
                "use_dora": bool(cfg.get("use_dora")),
                "dora_layers": sum(1 for n, m in model.named_modules()
                                   if n.endswith("lora_magnitude_vector") and len(m) > 0),
                "magnitude_dtypes": sorted({str(v.dtype) for k, v in st.items() if "magnitude" in k}),
                "bnb_linears": sum(1 for m in base.modules() if type(m).__module__.startswith("bitsandbytes")
                                   and type(m).__name__ == "Linear4bit")}
    if k == "merged":
        dtype = getattr(torch, c["dtype"])
        m = load(c["model"], dtype)
        ref = logits(m, ids)
        ours = load_file(c["ours"])["logits"].float()
        cfg = json.load(open(os.path.join(c["model"], "config.json")))
        files = sorted(os.listdir(c["model"]))
        index = os.path.join(c["model"], "model.safetensors.index.json")
        shards = len([f for f in files if f.endswith(".safetensors")])
        idx_ok = None
        if os.path.exists(index):
            j = json.load(open(index))
            ts = tensors(c["model"])
            idx_ok = set(j["weight_map"]) == set(ts) and j["metadata"]["total_size"] == sum(
                t.numel() * t.element_size() for t in ts.values())
        return {"rel": rel(ours, ref), "param_dtypes": sorted({str(p.dtype) for p in m.parameters()}),
                "quantization_config": "quantization_config" in cfg,
                "config_dtype": cfg.get("torch_dtype", cfg.get("dtype")), "files": files, "shards": shards,
                "index_ok": idx_ok, "has_generation_config": m.generation_config is not None}
    if k == "merged_vs_peft":
        merged = logits(load(c["model"]), ids)
        model = PeftModel.from_pretrained(load(c["base"]), c["adapter"])
        model.eval()
        return {"rel": rel(merged, logits(model, ids))}
    if k == "cast":
        a, b = tensors(c["a"]), tensors(c["b"])
        dtype = getattr(torch, c["dtype"])
        bad = [n for n in b if n not in a or not torch.equal(a[n], b[n].to(dtype))]
        return {"same_keys": set(a) == set(b), "mismatched": len(bad), "tensors": len(b),
                "dtypes": sorted({str(v.dtype) for v in a.values()})}
    raise SystemExit("unknown check " + k)


def make_gemma(out):
    from peft import LoraConfig, get_peft_model
    import model_ref
    for i, kind in enumerate(["gemma2", "gemma3"]):
        torch.manual_seed(300 + i)
        m, _ = model_ref.build(kind)
        model_ref.randomize(m, 400 + i)
        mdir = os.path.join(out, kind, "model")
        m.to(torch.float32).save_pretrained(mdir)
        base = load(mdir)
        pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
        g = torch.Generator().manual_seed(500 + i)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
        pm.save_pretrained(os.path.join(out, kind, "adapter"))


def main():
    if sys.argv[1] == "make-gemma":
        make_gemma(sys.argv[2])
        return
    spec = json.load(open(sys.argv[1]))
    ids = load_file(spec["ids"])["input_ids"].long()
    out = {}
    for c in spec["checks"]:
        out[c["name"]] = check(c, ids)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
