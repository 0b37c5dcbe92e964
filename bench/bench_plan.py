#!/usr/bin/env python3
"""How well `qlora plan` predicts a run's peak memory: predicted vs measured, on the CPU.

For each configuration of the table below, `qlora plan CONFIG --json --no-time` predicts the peak;
then `qlora train CONFIG` runs a few steps (the optimizer state exists from the first step on, and
the peak of the step is reached in every step) and reports its peak RSS above the RSS the process
held at the start ("memory: peak ... (N bytes) ...", the same number `qlora train` prints to
users). The error is (predicted - measured) / measured. The goal: within 10% everywhere.

Models are random Llama checkpoints made here by transformers (bf16 safetensors) with the demo's
tokenizer; the data is text records long enough to fill every row, so every micro-batch is full.

usage (the project's venv python; builds nothing, expects build/qlora):
  ~/.cache/qlora/venv/bin/python bench/bench_plan.py [--only N,M] [--quick]
      [--out bench/results/plan_cpu.json]
Takes about 10 minutes on 2 cores (--quick: the 6 fastest configurations).
"""
import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))

# name: (vocab, hidden, intermediate, layers, heads, kv heads, tied)
MODELS = {
    "llama-5M": (8192, 256, 768, 4, 4, 2, False),
    "llama-50M": (32000, 512, 1536, 8, 8, 4, False),
    "llama-120M": (32000, 768, 2048, 12, 12, 4, True),
}

# model, sequence_len, micro_batch_size, gradient_checkpointing, optimizer, lora_r, lora_dropout
CONFIGS = [
    ("llama-5M", 256, 4, False, "adamw_torch", 16, 0.05),
    ("llama-5M", 512, 8, False, "paged_adamw_8bit", 16, 0.05),
    ("llama-5M", 1024, 2, True, "adamw_torch", 64, 0.05),
    ("llama-5M", 128, 16, False, "paged_adamw_32bit", 8, 0.0),
    ("llama-50M", 128, 4, False, "adamw_torch", 16, 0.05),
    ("llama-50M", 512, 2, False, "paged_adamw_32bit", 16, 0.05),
    ("llama-50M", 512, 4, True, "paged_adamw_8bit", 16, 0.05),
    ("llama-50M", 1024, 1, False, "adamw_torch", 64, 0.0),
    ("llama-50M", 256, 8, True, "adamw_torch", 32, 0.1),
    ("llama-120M", 128, 4, False, "paged_adamw_32bit", 16, 0.05),
    ("llama-120M", 256, 4, True, "adamw_8bit", 16, 0.05),
    ("llama-120M", 512, 2, False, "adamw_torch", 8, 0.0),
    ("llama-120M", 1024, 2, True, "paged_adamw_32bit", 16, 0.05),
    ("llama-120M", 512, 4, True, "adamw_torch", 64, 0.1),
    # not among the runs the constants of trainer/train/plan.cpp were measured on
    ("llama-50M", 256, 2, False, "adamw_8bit", 16, 0.05),
    ("llama-120M", 256, 8, True, "adamw_torch", 16, 0.0),
    ("llama-5M", 2048, 1, False, "paged_adamw_32bit", 32, 0.05),
]
HELD_OUT = {14, 15, 16}
QUICK = [0, 1, 3, 4, 5, 8]


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    flags = open("/proc/cpuinfo").read()
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "kernel": platform.release(),
            "avx512": " avx512f " in flags, "avx2": " avx2 " in flags}


def make_model(name, path):
    import torch
    import transformers as tf
    V, H, I, L, heads, kv, tied = MODELS[name]
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=tied)
    model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "data/demo/model", f), path)


def make_data(path):
    rng = random.Random(0)
    words = ["the", "date", "of", "April", "March", "2023", "was", "a", "Monday", "and", "then", "came",
             "15", "October", "in", "year", "1999", "June", "7", "Sunday", "converted", "to", "words"]
    with open(path, "w") as f:
        for _ in range(48):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(3000))}) + "\n")


def config_yaml(model_dir, data, out, c):
    _, seq, mb, ckpt, optimizer, r, dropout = c
    return f"""base_model: {model_dir}
adapter: qlora
lora_r: {r}
lora_alpha: {2 * r}
lora_dropout: {dropout}
lora_target_linear: true
datasets:
  - path: {data}
    type: text
sequence_len: {seq}
micro_batch_size: {mb}
gradient_accumulation_steps: 1
gradient_checkpointing: {str(ckpt).lower()}
optimizer: {optimizer}
learning_rate: 1.0e-4
max_steps: 3
save_steps: 1000
logging_steps: 1
output_dir: {out}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/plan_cpu.json"))
    ap.add_argument("--threads", default="2")
    a = ap.parse_args()
    idx = list(range(len(CONFIGS)))
    if a.quick:
        idx = QUICK
    if a.only:
        idx = [int(x) for x in a.only.split(",")]
    qlora = os.path.join(BUILD, "qlora")
    env = dict(os.environ, OMP_NUM_THREADS=a.threads)
    work = tempfile.mkdtemp(prefix="qlora-bench-plan-")
    rows = []
    try:
        data = os.path.join(work, "train.jsonl")
        make_data(data)
        made = {}
        for i in idx:
            c = CONFIGS[i]
            if c[0] not in made:
                made[c[0]] = os.path.join(work, c[0])
                make_model(c[0], made[c[0]])
            out = os.path.join(work, f"run{i}")
            cfg = os.path.join(work, f"cfg{i}.yaml")
            with open(cfg, "w") as f:
                f.write(config_yaml(made[c[0]], data, out, c))
            p = subprocess.run([qlora, "plan", cfg, "--json", "--no-time"], env=env, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"plan failed for {c}:\n{p.stderr}")
            plan = json.loads(p.stdout)
            t0 = time.perf_counter()
            r = subprocess.run([qlora, "train", cfg], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"train failed for {c}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
            m = re.search(r"memory: peak .*?\((\d+) bytes\)", r.stdout)
            measured = int(m.group(1))
            predicted = plan["memory"]["peak_bytes"]
            err = (predicted - measured) / measured
            row = {"model": c[0], "sequence_len": c[1], "micro_batch_size": c[2], "gradient_checkpointing": c[3],
                   "optimizer": c[4], "lora_r": c[5], "lora_dropout": c[6],
                   "measured_peak_above_start_bytes": measured, "predicted_peak_bytes": predicted,
                   "error": round(err, 4), "held_out": i in HELD_OUT, "train_wall_s": round(wall, 1),
                   "predicted_parts": {x["name"]: x["bytes"] for x in plan["memory"]["parts"]}}
            rows.append(row)
            print(f"[{i:2d}] {c[0]:10s} S{c[1]:<5d} B{c[2]:<3d} ckpt={int(c[3])} {c[4]:18s} r{c[5]:<3d} "
                  f"measured {measured / 2**20:8.1f} MiB  predicted {predicted / 2**20:8.1f} MiB  "
                  f"error {100 * err:+6.1f}%", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    worst = max(abs(r["error"]) for r in rows)
    within = sum(abs(r["error"]) <= 0.10 for r in rows)
    res = {"description": "qlora plan's predicted peak memory vs the peak RSS above the process's start "
                          "measured by qlora train (CPU, fp32 compute, NF4 base, LoRA on all linears)",
           "command": "~/.cache/qlora/venv/bin/python bench/bench_plan.py",
           "machine": machine(), "threads": int(a.threads),
           "within_10_percent": f"{within}/{len(rows)}", "worst_abs_error": worst, "runs": rows}
    if not a.only and not a.quick:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    print(f"within 10%: {within}/{len(rows)}; worst |error| {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
