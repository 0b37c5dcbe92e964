#!/usr/bin/env python3
"""CPU training against the machine's arithmetic limit: a GEMM probe, then `qlora train` and
transformers + peft + bitsandbytes on Llama shapes of about 125M, 350M and 1B parameters.

1. The probe (its own process, OMP_NUM_THREADS = --threads) measures what LibTorch's BLAS can do
   on this CPU: fp32 GEMM GFLOP/s on square and model-shaped products, one GEMM on all threads
   and (what qlora's row shards do) one single-threaded GEMM per thread side by side; the oneDNN
   route (mkldnn_linear) next to MKL's; bf16 where the CPU has native bf16 (avx512_bf16 / AMX
   flags are reported, and the bf16 GEMM is timed either way). peak_gflops = the best fp32 rate
   any route reached.
2. Each case trains a random Llama made here by transformers (bf16 safetensors, the demo's
   tokenizer) for --steps steps, batch B x T, LoRA r 8 alpha 16 dropout 0.05 on all linear layers,
   NF4 double-quant base, fp32 compute, AdamW, chat data whose answers fill every row (no padding;
   the prompt is masked; the `-varied` cases instead have rows of any length, padded per batch),
   once with `qlora train` and once with the reference
   (bench/bench_train_cpu.py's worker: the same batches, checked against the HF tokenizer).
   Peak RSS of each process under /usr/bin/time -v. qlora's last two steps run its step profiler
   (profile_breakdown.json: base products, LoRA, attention, norms/activations, loss, optimizer);
   tokens/s counts the steps before them, after --skip. The reference's time is split by
   torch.profiler over one extra step (self CPU time by op: GEMMs, bitsandbytes dequantize,
   attention, loss, optimizer, other).

FLOPs per step (the same count for both sides, so FLOP/s ratios are tokens/s ratios): for T
tokens, S of them with a target, per layer and linear (in, out): 2 T in out forward and 2 T in out
for the input gradient (the base is frozen: no weight gradient); LoRA 2 T r (in + out) forward and
4 T r (in + out) backward; causal attention 2 L^2 D forward and 4 L^2 D backward per sequence of L
tokens (D = heads x head_dim, the masked half not counted); lm_head 2 S H V forward and 2 S H V
backward. Norms, activations and the optimizer are not counted (memory-bound work).

usage (the project's venv python; builds the targets it needs):
  ~/.cache/qlora/venv/bin/python bench/bench_roofline.py [--threads 2] [--cases 125m-s128,...]
      [--steps 6] [--out bench/results/roofline_cpu.json]
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_train_cpu as btc  # noqa: E402  (sh, timed, machine, the reference worker)

DEMO = os.path.join(ROOT, "data", "demo")
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))

MODELS = {
    # Llama shapes; vocabularies of Llama-2 (32k), GPT-NeoX / Pythia (50k) and Qwen2 (152k).
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048, vocab_size=32000, tie_word_embeddings=False),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=2816, vocab_size=50304, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=5632, vocab_size=151936, tie_word_embeddings=True),
}
CASES = {  # name: (model, sequence_len, micro_batch_size)
    "125m-s128": ("125m", 128, 4),
    "125m-s1024": ("125m", 1024, 1),
    "350m-s128": ("350m", 128, 4),
    "350m-s512": ("350m", 512, 2),
    "1b-s128": ("1b", 128, 4),
    # Rows of varied length, as SFT data has: batches padded to their longest row.
    "125m-s128-varied": ("125m", 128, 4),
    "350m-s128-varied": ("350m", 128, 4),
}
LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.05


# ---------------------------------------------------------------------------------------------
# The probe (its own process)

def probe_worker(threads):
    import torch
    torch.set_num_threads(threads)
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break

    def rate(fn, flops, min_s=1.0):
        fn()
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_s and n >= 2:
                return flops * n / dt / 1e9

    def mats(m, k, n, dtype=torch.float32):
        torch.manual_seed(0)
        return torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)

    shapes = [(2048, 2048, 2048), (4096, 4096, 4096), (512, 768, 2048), (512, 2048, 768), (256, 1024, 2816),
              (256, 2816, 1024), (512, 2048, 5632), (512, 768, 32000), (512, 2048, 151936 // 4)]
    out = {"threads": threads, "torch": torch.__version__,
           "blas": "mkl" if torch.backends.mkl.is_available() else "other",
           "mkldnn": torch.backends.mkldnn.is_available(),
           "cpu_flags": sorted(f for f in flags if any(s in f for s in ("avx512", "amx", "vnni", "bf16", "fma", "avx2"))),
           "fp32": [], "fp32_side_by_side": [], "onednn_fp32": [], "bf16": []}
    for (m, k, n) in shapes:
        a, b = mats(m, k, n)
        out["fp32"].append({"m": m, "k": k, "n": n, "gflops": rate(lambda: torch.mm(a, b), 2 * m * k * n)})
    # Row shards: one single-threaded GEMM per thread, side by side (torch releases the GIL).
    if threads > 1:
        for (m, k, n) in shapes[:1] + shapes[2:7]:
            a, b = mats(m // threads, k, n)
            res = [0.0] * threads

            def one(i):
                torch.set_num_threads(1)
                res[i] = rate(lambda: torch.mm(a, b), 2 * (m // threads) * k * n, min_s=2.0)
            ts = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            out["fp32_side_by_side"].append({"m_per_thread": m // threads, "k": k, "n": n, "gflops": sum(res)})
        torch.set_num_threads(threads)
    for (m, k, n) in shapes[:1] + shapes[2:4]:
        try:
            a, b = mats(m, k, n)
            xm, wm = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
            out["onednn_fp32"].append({"m": m, "k": k, "n": n, "gflops": rate(
                lambda: torch._C._nn.mkldnn_linear(xm, wm, None), 2 * m * k * n)})
        except Exception as e:  # noqa: BLE001  (a build without the route)
            out["onednn_fp32"].append({"m": m, "k": k, "n": n, "error": str(e).splitlines()[0]})
    for (m, k, n) in [(512, 768, 2048), (512, 2048, 768)]:
        a, b = mats(m, k, n, torch.bfloat16)
        out["bf16"].append({"m": m, "k": k, "n": n, "gflops": rate(lambda: torch.mm(a, b), 2 * m * k * n, min_s=0.5)})
    out["native_bf16"] = any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    best = max([r["gflops"] for r in out["fp32"] + out["fp32_side_by_side"] + out["onednn_fp32"] if "gflops" in r])
    out["peak_gflops"] = best
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# Model, data, FLOPs

def make_model(path, spec):
    import torch
    import transformers as tf
    base = json.load(open(os.path.join(DEMO, "model", "config.json")))
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=base["bos_token_id"],
                         eos_token_id=base["eos_token_id"], pad_token_id=base["pad_token_id"], **spec)
    model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEMO, "model", f), path)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


WORDS = ("the of and to in is was for on that with as by at from his her it an were which are this be has had "
         "not or their one two three first year new also after time may during city day world school people war "
         "state team part many most such university until march april june january early later second").split()


def make_data(path, seq_len, varied, n=600):
    """Chat records whose prompt is short and whose answer is longer than seq_len tokens, or
    (varied) of 3 to seq_len / 3 words, so that rows end anywhere between the prompt and
    sequence_len."""
    import random
    rnd = random.Random(seq_len)
    with open(path, "w") as f:
        for _ in range(n):
            u = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 24)))
            words = rnd.randint(3, max(4, seq_len // 3)) if varied else seq_len
            a = " ".join(rnd.choice(WORDS) for _ in range(words))
            f.write(json.dumps({"messages": [{"role": "user", "content": u},
                                             {"role": "assistant", "content": a}]}) + "\n")


def step_flops(spec, tokens, targets, seq_lens):
    h, inter, L = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    hd = h // spec["num_attention_heads"]
    kv = spec["num_key_value_heads"] * hd
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    base = sum(i * o for i, o in linears) * L
    lora_io = sum(i + o for i, o in linears) * L
    parts = {
        "base_forward": 2 * tokens * base,
        "base_grad_input": 2 * tokens * base,
        "lora": 6 * tokens * LORA_R * lora_io,
        "attention": 6 * sum(l * l for l in seq_lens) * h * L,
        "lm_head": 4 * targets * h * spec["vocab_size"],
    }
    return sum(parts.values()), parts


# ---------------------------------------------------------------------------------------------
# One case

def run_case(name, a, work, probe):
    model_name, seq, batch = CASES[name]
    spec = MODELS[model_name]
    model_dir = os.path.join(work, "model-" + model_name)
    if not os.path.exists(model_dir):
        t0 = time.perf_counter()
        params = make_model(model_dir, spec)
        print(f"  made {model_name}: {params / 1e6:.0f}M parameters in {time.perf_counter() - t0:.0f} s", flush=True)
        json.dump({"parameters": params}, open(os.path.join(model_dir, "bench.json"), "w"))
    params = json.load(open(os.path.join(model_dir, "bench.json")))["parameters"]
    varied = name.endswith("-varied")
    data = os.path.join(work, f"data-{seq}{'-varied' if varied else ''}.jsonl")
    if not os.path.exists(data):
        make_data(data, seq, varied)
    steps = a.steps + 2  # the last two steps run the profiler
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    out_dir = os.path.join(work, f"run-{name}")
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = os.path.join(work, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""base_model: {model_dir}
tokenizer: {model_dir}
adapter: qlora
quantization: {{quant_type: nf4, double_quant: true, blocksize: 64, compute_dtype: auto}}
lora_r: {LORA_R}
lora_alpha: {LORA_ALPHA}
lora_dropout: {LORA_DROPOUT}
lora_target_linear: true
datasets:
  - path: {data}
    type: chat
sequence_len: {seq}
sample_packing: false
train_on_inputs: false
micro_batch_size: {batch}
gradient_accumulation_steps: 1
max_steps: {steps}
learning_rate: 2.0e-4
lr_scheduler: cosine
warmup_steps: 2
optimizer: adamw_torch
weight_decay: 0.0
max_grad_norm: 1.0
seed: 42
output_dir: {out_dir}
logging_steps: 1
save_steps: 0
profiler_steps: 2
profiler_steps_start: {steps - 2}
""")
    batches = os.path.join(work, f"batches-{name}.safetensors")
    btc.sh([os.path.join(BUILD, "bench", "bench_train_cpu_batches"), cfg, str(steps), batches])

    # Ours.
    load_before = os.getloadavg()[0]
    stdout, rss, wall = btc.timed([os.path.join(BUILD, "qlora"), "train", cfg], env)
    rows = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
    rows = [r for r in rows if "loss" in r and "step" in r]
    el = [r["elapsed_s"] for r in rows]
    ours_step_s = [el[0]] + [b - x for x, b in zip(el, el[1:])]
    prof = json.load(open(os.path.join(out_dir, "profile_breakdown.json")))

    # Reference: the same batches; then one profiled step.
    ref_cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_train_cpu.py"), "hf", "--model", model_dir,
               "--tokenizer", model_dir, "--batches", batches, "--train", data, "--threads", str(a.threads),
               "--adapter", "qlora", "--r", str(LORA_R), "--alpha", str(LORA_ALPHA), "--dropout", str(LORA_DROPOUT),
               "--lr", "2e-4", "--warmup", "2", "--total-steps", str(steps), "--seq-len", str(seq), "--seed", "42",
               "--profile-step", "1"]
    stdout, rss_ref, wall_ref = btc.timed(ref_cmd, env)
    ref = json.loads(stdout.strip().splitlines()[-1])

    # Both sides' tokens and targets per step from the batches.
    from safetensors.torch import load_file
    bt = load_file(batches)
    tokens, targets, lens = [], [], []
    for k in range(steps):
        mask, labels = bt[f"attention_mask_{k}"], bt[f"labels_{k}"]
        tokens.append(int(mask.sum()))
        targets.append(int((labels[:, 1:] != -100).sum()))
        lens.append([int(x) for x in mask.sum(1)])
    measured = list(range(a.skip, steps - 2))
    flops = [step_flops(spec, tokens[k], targets[k], lens[k])[0] for k in range(steps)]

    def side(step_s):
        t = sum(step_s[k] for k in measured)
        return {"tokens_per_s": sum(tokens[k] for k in measured) / t,
                "gflops": sum(flops[k] for k in measured) / t / 1e9,
                "fraction_of_peak": sum(flops[k] for k in measured) / t / 1e9 / probe["peak_gflops"]}

    o, r = side(ours_step_s), side(ref["step_s"])
    _, parts = step_flops(spec, tokens[measured[0]], targets[measured[0]], lens[measured[0]])
    res = {
        "case": name, "model": model_name, "parameters": params, "vocab_size": spec["vocab_size"],
        "sequence_len": seq, "micro_batch_size": batch, "threads": a.threads, "steps": steps,
        "probe_peak_gflops": probe["peak_gflops"],
        "measured_steps": [k + 1 for k in measured], "tokens_per_step": tokens[measured[0]],
        "targets_per_step": targets[measured[0]], "gflop_per_step": flops[measured[0]] / 1e9,
        "gflop_per_step_parts": {k: v / 1e9 for k, v in parts.items()},
        "loadavg_before": load_before,
        "ours": dict(o, peak_rss_bytes=rss, process_wall_s=wall, step_s=ours_step_s,
                     loss=[x["loss"] for x in rows], profile=prof),
        "reference": dict(r, peak_rss_bytes=rss_ref, process_wall_s=wall_ref, step_s=ref["step_s"],
                          loss=ref["loss"], profile=ref.get("profile"), versions=ref.get("versions")),
        "tokens_per_s_ratio": o["tokens_per_s"] / r["tokens_per_s"],
        "peak_rss_ratio": rss / rss_ref,
    }
    print(f"{name}: ours {o['tokens_per_s']:.0f} tok/s {o['gflops']:.0f} GFLOP/s ({100 * o['fraction_of_peak']:.0f}% "
          f"of peak), {rss / 2**20:.0f} MiB; reference {r['tokens_per_s']:.0f} tok/s {r['gflops']:.0f} GFLOP/s "
          f"({100 * r['fraction_of_peak']:.0f}%), {rss_ref / 2**20:.0f} MiB; x{res['tokens_per_s_ratio']:.2f} speed, "
          f"x{res['peak_rss_ratio']:.2f} memory; loss@1 {rows[0]['loss']:.4f} vs {ref['loss'][0]:.4f}", flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    return res


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        return probe_worker(int(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(c for c in CASES if not c.endswith("-varied")))
    ap.add_argument("--steps", type=int, default=6, help="timed steps (plus two profiled ones)")
    ap.add_argument("--skip", type=int, default=2, help="first steps left out of tokens/s")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "roofline_cpu.json"))
    ap.add_argument("--work", default=None, help="keep models and data here between runs")
    a = ap.parse_args()
    for c in a.cases.split(","):
        if c not in CASES:
            sys.exit(f"--cases: unknown case {c} (expected some of {', '.join(CASES)})")
    btc.sh(["cmake", "--build", BUILD, "--target", "qlora", "bench_train_cpu_batches"])
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    r = btc.sh([sys.executable, os.path.abspath(__file__), "probe", str(a.threads)], env=env)
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"probe: peak {probe['peak_gflops']:.0f} GFLOP/s fp32 at {a.threads} threads; bf16 "
          f"{max(x['gflops'] for x in probe['bf16']):.1f} GFLOP/s (native bf16: {probe['native_bf16']})", flush=True)
    old = json.load(open(a.out)) if os.path.exists(a.out) else {}
    runs = [x for x in old.get("runs", []) if x["case"] not in a.cases.split(",") or x["threads"] != a.threads]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {"description": __doc__.split("\n\n")[0],
           "command": "~/.cache/qlora/venv/bin/python bench/bench_roofline.py " + " ".join(sys.argv[1:]),
           "commit": commit, "machine": btc.machine(), "python": platform.python_version(),
           "setup": {"lora": f"r {LORA_R}, alpha {LORA_ALPHA}, dropout {LORA_DROPOUT}, all linear layers",
                     "base": "NF4, double quant, blocksize 64, fp32 compute", "optimizer": "AdamW fp32, wd 0",
                     "data": "generated chat records, answers longer than sequence_len (no padding), prompt masked; -varied cases: answers of 3 to sequence_len / 3 words, batches padded to their longest row",
                     "models": MODELS, "cases": CASES, "skip": a.skip},
           "probe": probe, "runs": runs}
    if "notes" in old:
        out["notes"] = old["notes"]

    def save():
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    work = a.work or tempfile.mkdtemp(prefix="qlora-roofline-")
    os.makedirs(work, exist_ok=True)
    try:
        for c in a.cases.split(","):
            res = run_case(c, a, work, probe)
            res["command"] = out["command"]
            runs.append(res)
            save()
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
