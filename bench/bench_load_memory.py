"""Peak host memory of loading a ~1B-parameter llama into NF4: qlora's streaming loader vs
transformers + bitsandbytes (BitsAndBytesConfig load_in_4bit, nf4, double quant) on CPU.

  build the bench:  cmake --build build --target bench_load_memory
  run:              ~/.cache/qlora/venv/bin/python bench/bench_load_memory.py [--keep DIR]

The model (Llama-3.2-1B shapes: hidden 2048, 16 layers, intermediate 8192, 32 heads / 8 kv,
vocab 128256, tied embeddings, 1.24 B parameters) is generated here with transformers from a
config, random init, saved as bf16 safetensors in a temporary directory, never committed.
Each loader runs in its own process; peak = VmHWM of that process. Writes
bench/results/load_memory.json.
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(d):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    c = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    m = LlamaForCausalLM(c).to(torch.bfloat16)
    m.save_pretrained(d)
    return sum(p.numel() for p in m.parameters())


HF_LOADER = r"""
import json, sys, time, torch
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
import bitsandbytes
torch.zeros(1)
base, base_hwm = kb("VmRSS:"), kb("VmHWM:")
q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                       bnb_4bit_compute_dtype=torch.bfloat16)
t0 = time.time()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=q, dtype=torch.bfloat16, device_map="cpu")
secs = time.time() - t0
print(json.dumps({"loader": "transformers %s + bitsandbytes %s (load_in_4bit nf4, double quant, device_map=cpu)"
                  % (__import__("transformers").__version__, bitsandbytes.__version__),
                  "compute_dtype": "bf16", "baseline_rss_bytes": base, "baseline_peak_rss_bytes": base_hwm,
                  "peak_rss_bytes": kb("VmHWM:"), "final_rss_bytes": kb("VmRSS:"),
                  "model_bytes": m.get_memory_footprint(), "seconds": secs}))
"""


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit("no JSON in output:\n" + text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="generate the model into this directory (reused if present)")
    ap.add_argument("--exe", default=os.path.join(ROOT, "build/bench/bench_load_memory"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/load_memory.json"))
    a = ap.parse_args()
    tmp = None
    if a.keep:
        d = a.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="qlora_bench_1b_")
        d = tmp.name
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    nparams = None
    if not os.path.exists(os.path.join(d, "config.json")):
        t0 = time.time()
        nparams = make_model(d)
        print(f"generated {nparams / 1e9:.2f} B parameters in {time.time() - t0:.0f} s", file=sys.stderr)
    if nparams is None:  # a kept model: count from the safetensors headers
        from safetensors import safe_open
        nparams = 0
        for f in os.listdir(d):
            if f.endswith(".safetensors"):
                with safe_open(os.path.join(d, f), "pt") as st:
                    for k in st.keys():
                        n = 1
                        for x in st.get_slice(k).get_shape():
                            n *= x
                        nparams += n
    runs = []
    for dtype in ["bf16", "fp32"]:
        r = subprocess.run([a.exe, d, dtype], capture_output=True, text=True, env=env)
        if r.returncode:
            raise SystemExit(r.stdout + r.stderr)
        runs.append(last_json(r.stdout))
        print(runs[-1], file=sys.stderr)
    r = subprocess.run([sys.executable, "-c", HF_LOADER, d], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    runs.append(last_json(r.stdout))
    print(runs[-1], file=sys.stderr)
    for x in runs:
        x["peak_minus_baseline_bytes"] = x["peak_rss_bytes"] - x["baseline_rss_bytes"]
    ours = runs[0]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    res = {
        "description": "Peak host RSS while loading a random ~1B llama (bf16 safetensors) into NF4 on CPU. "
                       "qlora streams tensor by tensor out of the mmap and quantizes as it goes; the bound it "
                       "aims at is peak - baseline <= model_bytes + largest_tensor_bytes (+ fixed overhead).",
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()},
        "model": {"shape": "Llama-3.2-1B (hidden 2048, 16 layers, intermediate 8192, 32/8 heads, vocab 128256, tied)",
                  "parameters": nparams, "file_bytes": sum(os.path.getsize(os.path.join(d, f))
                                                           for f in os.listdir(d) if f.endswith(".safetensors"))},
        "bound_check": {"qlora_bf16_peak_minus_baseline": ours["peak_minus_baseline_bytes"],
                        "model_plus_largest_tensor": ours["model_bytes"] + ours["largest_tensor_bytes"]},
        "command": "cmake --build build --target bench_load_memory && "
                   "~/.cache/qlora/venv/bin/python bench/bench_load_memory.py",
        "runs": runs,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    os.replace(a.out + ".tmp", a.out)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
