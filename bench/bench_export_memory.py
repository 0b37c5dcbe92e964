"""Peak host memory and time of `qlora export --format merged` on a ~1B-parameter llama.

  build:  ./scripts/build.sh   (build/qlora)
  run:    ~/.cache/qlora/venv/bin/python bench/bench_export_memory.py [--keep DIR]

The base is bench_load_memory.py's synthetic Llama-3.2-1B-shaped checkpoint (bf16 safetensors,
1.24 B parameters, random init, generated here into a temporary directory, never committed); the
adapter is a random PEFT LoRA (r 16, alpha 32, every linear, lora_B nonzero). The export runs in
its own process (default: merge into dequant(NF4), bf16, 5GB shards); its peak is the VmHWM qlora
reports at the end ("peak RSS ..."; the child's ru_maxrss is not used: it carries over the
Python parent's resident set from before exec). Writes bench/results/export_memory.json.
"""
import argparse, json, os, platform, re, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_load_memory import make_model  # noqa: E402


def make_adapter(model_dir, out, r=16):
    import torch
    from safetensors.torch import save_file
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or H // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (q, H), "self_attn.k_proj": (kv, H), "self_attn.v_proj": (kv, H),
              "self_attn.o_proj": (H, q), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
    g = torch.Generator().manual_seed(0)
    ts = {}
    for l in range(L):
        for m, (o, i) in shapes.items():
            k = f"base_model.model.model.layers.{l}.{m}"
            ts[k + ".lora_A.weight"] = torch.randn(r, i, generator=g) / i ** 0.5
            ts[k + ".lora_B.weight"] = torch.randn(o, r, generator=g) * 1e-3
    os.makedirs(out, exist_ok=True)
    save_file(ts, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": model_dir, "r": r,
               "lora_alpha": 2 * r, "lora_dropout": 0.0, "target_modules": list(m.split(".")[1] for m in shapes),
               "bias": "none", "use_rslora": False, "fan_in_fan_out": False, "modules_to_save": None,
               "use_dora": False, "inference_mode": True}, open(os.path.join(out, "adapter_config.json"), "w"))
    return sum(t.numel() * 4 for t in ts.values())


def mem_total():
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="generate the base into this directory (reused if present)")
    ap.add_argument("--exe", default=os.path.join(ROOT, "build/qlora"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/export_memory.json"))
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="qlora_bench_export_")
    d = a.keep or os.path.join(tmp.name, "model")
    if not os.path.exists(os.path.join(d, "config.json")):
        t0 = time.time()
        n = make_model(d)
        print(f"generated {n / 1e9:.2f} B parameters in {time.time() - t0:.0f} s", file=sys.stderr)
    adapter = os.path.join(tmp.name, "adapter")
    adapter_bytes = make_adapter(d, adapter)
    file_bytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
    out = os.path.join(tmp.name, "merged")
    cmd = [a.exe, "export", adapter, "--base-model", d, "--format", "merged", "--out", out]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = p.stdout.read()
    status = p.wait()
    secs = time.time() - t0
    if status != 0:
        raise SystemExit(text)
    print(text, file=sys.stderr)
    m = re.search(r"peak RSS ([0-9.]+) (B|KiB|MiB|GiB)", text)
    peak = int(float(m.group(1)) * {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}[m.group(2)])
    out_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    cfg = json.load(open(os.path.join(d, "config.json")))
    largest = 2 * cfg["vocab_size"] * cfg["hidden_size"]  # the (tied) embedding, bf16
    largest_linear = 4 * cfg["intermediate_size"] * cfg["hidden_size"]  # fp32
    res = {
        "description": "Peak host RSS of `qlora export --format merged` (merge into dequant(NF4), bf16 output, "
                       "default 5GB shards) of a random ~1B llama with a random r=16 all-linear LoRA. The merge "
                       "streams tensor by tensor from the base's mmap into the output file: an adapted linear "
                       "costs an fp32 copy, its NF4 form and the fp32 dequantization (largest: 8192x2048); "
                       "copied tensors already in bf16 are written straight from the mapping.",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_bytes": mem_total(),
                    "python": platform.python_version(), "note": "shared by several jobs while measuring"},
        "model": {"shape": "Llama-3.2-1B (hidden 2048, 16 layers, intermediate 8192, 32/8 heads, vocab 128256, tied)",
                  "file_bytes": file_bytes, "adapter_fp32_bytes": adapter_bytes},
        "command": "./scripts/build.sh && ~/.cache/qlora/venv/bin/python bench/bench_export_memory.py",
        "export_command": "qlora export ADAPTER --base-model MODEL --format merged --out OUT",
        "peak_rss_bytes": peak,
        "peak_rss_note": "qlora's own VmHWM, printed with 0.1 MiB resolution; includes LibTorch's baseline and "
                         "the mapped pages of the tensor being streamed (the tied bf16 embedding, 525 MB, is "
                         "written straight from the mmap)",
        "output_bytes": out_bytes,
        "largest_tensor_bytes": largest,
        "largest_linear_fp32_bytes": largest_linear,
        "seconds": secs,
        "qlora_output": text.strip().splitlines()[-3:],
    }
    json.dump(res, open(a.out, "w"), indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
