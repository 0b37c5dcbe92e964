#!/usr/bin/env python3
"""CPU training throughput and peak RSS: `qlora train` vs transformers + peft + bitsandbytes.

Side by side, on the same machine and thread count, each side in its own process under
/usr/bin/time -v (peak RSS = its "Maximum resident set size"):

  ours       build/qlora train configs/demo.yaml --set ... (NF4 double-quant base, LoRA, AdamW)
  reference  transformers + peft + bitsandbytes (CPU backend): BitsAndBytesConfig(load_in_4bit,
             nf4, double quant, fp32 compute), LoraConfig(all-linear, same r/alpha/dropout),
             torch.optim.AdamW (fp32), same warmup+cosine schedule, grad clipping 1.0, no
             gradient checkpointing, the model in training mode (dropout on)

Both train on exactly the same micro-batches: build/bench/bench_train_cpu_batches writes the
batches our loader feeds (same config and seed), and the reference checks that every row's
token ids and labels equal the HF tokenizer's rendering of a train.jsonl example (chat template,
prompt masked) before training on them.

Models: the embedded demo (data/demo/model, 2M parameters) and a bigger random Llama made here by
transformers (hidden 768, 8 layers, GQA 12/4 heads, intermediate 2048, the demo's 1024-token
vocabulary: ~52M parameters, bf16), so that the ratio is not dominated by per-step overhead.
Same data (data/demo/train.jsonl), sequence_len 64, micro_batch_size 16, r 16, alpha 32.

tokens/s = non-padding input tokens / wall time, over the steps after the first `--skip` (load,
first-step allocations and warmup excluded); the step time is everything from fetching the batch
to the end of the optimizer step.

usage (the project's venv python; builds the two targets it needs):
  ~/.cache/qlora/venv/bin/python bench/bench_train_cpu.py [--threads 2,1] [--quick]
      [--out bench/results/train_cpu.json]
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "demo")
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))

BIG = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
           num_key_value_heads=4)


# ---------------------------------------------------------------------------------------------
# Reference side (runs in its own process: `bench_train_cpu.py hf ...`)

def hf_worker(a):
    t0 = time.perf_counter()
    import torch
    torch.set_num_threads(a.threads)
    import psutil
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig,
                              get_cosine_schedule_with_warmup)
    import bitsandbytes  # noqa: F401  (the 4-bit CPU backend)
    t_import = time.perf_counter() - t0
    proc = psutil.Process()

    # The batches our loader produced; verify them against the HF tokenizer first.
    batches = load_file(a.batches)
    steps = len([k for k in batches if k.startswith("input_ids_")])
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    want = {}
    for line in open(a.train):
        msgs = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs, tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        f = tok(full, add_special_tokens=False)["input_ids"][:a.seq_len]
        want[tuple(f)] = [-100] * len(p) + f[len(p):]
    checked = 0
    for k in range(steps):
        ids, labels, mask = (batches[f"{n}_{k}"] for n in ("input_ids", "labels", "attention_mask"))
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            assert mask[i, :n].all() and not mask[i, n:].any(), "padding must be on the right"
            row = tuple(ids[i, :n].tolist())
            assert row in want, f"step {k} row {i}: token ids differ from the HF tokenizer's for every example"
            assert labels[i, :n].tolist() == want[row], f"step {k} row {i}: labels differ from HF's masking"
            assert (labels[i, n:] == -100).all()
            checked += 1

    t1 = time.perf_counter()
    kw = {"dtype": torch.float32}
    if a.adapter == "qlora":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_pretrained(a.model, **kw)
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, a.warmup, a.total_steps)  # the schedule ours follows
    t_load = time.perf_counter() - t1
    rss_loaded = proc.memory_info().rss

    model.train()
    step_s, tokens, losses = [], [], []
    for k in range(steps):
        ts = time.perf_counter()
        ids, labels, mask = (batches[f"{n}_{k}"] for n in ("input_ids", "labels", "attention_mask"))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        step_s.append(time.perf_counter() - ts)
        tokens.append(int(mask.sum()))
    profile = None
    if getattr(a, "profile_step", 0):
        profile = profile_one_step(model, params, opt, sched, batches, steps - 1)
    print(json.dumps({"import_s": t_import, "load_s": t_load, "rows_checked": checked, "profile": profile,
                      "trainable": sum(p.numel() for p in params), "rss_after_load_bytes": rss_loaded,
                      "step_s": step_s, "tokens": tokens, "loss": losses,
                      "versions": {m: __import__(m).__version__ for m in
                                   ("torch", "transformers", "peft", "bitsandbytes")}}))


def profile_one_step(model, params, opt, sched, batches, k):
    """One more step on batch k: forward + backward under torch.profiler, self CPU time per op
    grouped into parts (seconds), and the clipping + optimizer step timed around it."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    ids, labels, mask = (batches[f"{n}_{k}"] for n in ("input_ids", "labels", "attention_mask"))
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
    t1 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    t2 = time.perf_counter()
    rules = [("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
             ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax")),
             ("dequantize", ("bitsandbytes", "dequantize", "bnb")),
             ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                       "aten::_mm")),
             ("norm_act_elementwise", ("aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::silu",
                                       "aten::neg", "aten::cat", "aten::sum", "aten::div", "aten::copy_", "aten::to",
                                       "aten::_to_copy", "aten::dropout", "aten::bernoulli", "aten::fill_",
                                       "aten::zero", "aten::cos", "aten::sin", "aten::where", "aten::exp"))]
    parts = {name: 0.0 for name, _ in rules}
    parts["other"] = 0.0
    for e in prof.key_averages():
        name = e.key
        part = next((p for p, keys in rules if any(x in name for x in keys)), "other")
        parts[part] += e.self_cpu_time_total / 1e6
    return {"forward_backward_s": t1 - t0, "optimizer_s": t2 - t1, "parts_s": parts,
            "note": "self CPU time per op of one profiled forward+backward, grouped by op name; the lm_head's "
                    "product counts under gemm; 'softmax' ops under attention"}


# ---------------------------------------------------------------------------------------------
# Driver

def sh(cmd, env=None, cwd=ROOT):
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def timed(cmd, env):
    """Runs cmd under /usr/bin/time -v; returns (stdout, peak RSS bytes, wall s)."""
    t0 = time.perf_counter()
    r = sh(["/usr/bin/time", "-v"] + cmd, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return r.stdout, int(m.group(1)) * 1024, wall


def make_big_model(path):
    """A random ~52M-parameter Llama saved by transformers (bf16), with the demo's tokenizer."""
    import torch
    import transformers as tf
    base = json.load(open(os.path.join(DEMO, "model", "config.json")))
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=base["vocab_size"], max_position_embeddings=256, rms_norm_eps=1e-6,
                         bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"],
                         pad_token_id=base["pad_token_id"], tie_word_embeddings=False, **BIG)
    model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEMO, "model", f), path)
    return sum(p.numel() for p in model.parameters())


def steady(step_s, tokens, skip):
    return sum(tokens[skip:]) / sum(step_s[skip:])


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) * 1024
    flags = open("/proc/cpuinfo").read()
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "kernel": platform.release(),
            "avx512": " avx512f " in flags, "avx2": " avx2 " in flags}


def run_case(name, model_dir, steps, skip, threads, work, adapter="qlora"):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out_dir = os.path.join(work, f"run-{name}-{adapter}-t{threads}")
    shutil.rmtree(out_dir, ignore_errors=True)
    sets = [f"base_model={model_dir}", f"tokenizer={model_dir}", f"max_steps={steps}", f"output_dir={out_dir}",
            "test_datasets=null", "eval_steps=0", "save_steps=0", "logging_steps=1", "optimizer=adamw",
            f"adapter={adapter}"]
    cfg_path = os.path.join(ROOT, "configs", "demo.yaml")
    batches = os.path.join(work, f"batches-{name}-{steps}.safetensors")
    if not os.path.exists(batches):
        sh([os.path.join(BUILD, "bench", "bench_train_cpu_batches"), cfg_path, str(steps), batches] + sets)
    load = os.getloadavg()[0]

    # Ours.
    cmd = [os.path.join(BUILD, "qlora"), "train", cfg_path]
    for s in sets:
        cmd += ["--set", s]
    stdout, rss, wall = timed(cmd, env)
    rows = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
    rows = [r for r in rows if "loss" in r and "step" in r]
    elapsed = [r["elapsed_s"] for r in rows]
    ours_step_s = [elapsed[0]] + [b - a for a, b in zip(elapsed, elapsed[1:])]
    m = re.search(r"loaded in ([0-9.]+)s", stdout)
    ours = {"peak_rss_bytes": rss, "process_wall_s": wall, "load_s": float(m.group(1)) if m else None,
            "step_s": ours_step_s, "loss": [r["loss"] for r in rows]}

    # Reference, on the same batches.
    import yaml
    y = yaml.safe_load(open(cfg_path))
    ref_cmd = [sys.executable, os.path.abspath(__file__), "hf", "--model", model_dir, "--tokenizer", model_dir,
               "--batches", batches, "--train", os.path.join(ROOT, y["datasets"][0]["path"]),
               "--threads", str(threads), "--adapter", adapter, "--r", str(y["lora_r"]),
               "--alpha", str(y["lora_alpha"]), "--dropout", str(y["lora_dropout"]), "--lr", str(y["learning_rate"]),
               "--warmup", str(y["warmup_steps"]), "--total-steps", str(steps), "--seq-len", str(y["sequence_len"]),
               "--seed", str(y["seed"])]
    stdout, rss_ref, wall_ref = timed(ref_cmd, env)
    ref = json.loads(stdout.strip().splitlines()[-1])
    ref.update({"peak_rss_bytes": rss_ref, "process_wall_s": wall_ref})
    tokens = ref["tokens"]
    ours["tokens_per_s"] = steady(ours["step_s"], tokens, skip)
    ref["tokens_per_s"] = steady(ref["step_s"], tokens, skip)
    res = {"model": name, "adapter": adapter, "threads": threads, "steps": steps, "measured_steps": steps - skip,
           "tokens_measured": sum(tokens[skip:]), "loadavg_before": load,
           "ours": ours, "reference": ref,
           "tokens_per_s_ratio": ours["tokens_per_s"] / ref["tokens_per_s"],
           "peak_rss_ratio": rss / rss_ref,
           "first_step_loss": {"ours": ours["loss"][0], "reference": ref["loss"][0]}}
    print(f"{name} {adapter} t{threads}: ours {ours['tokens_per_s']:.0f} tok/s, {rss / 2**20:.0f} MiB; "
          f"reference {ref['tokens_per_s']:.0f} tok/s, {rss_ref / 2**20:.0f} MiB; "
          f"speed x{res['tokens_per_s_ratio']:.2f}, rss x{res['peak_rss_ratio']:.2f}; "
          f"loss@1 {ours['loss'][0]:.4f} vs {ref['loss'][0]:.4f}", flush=True)
    return res


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "hf":
        ap = argparse.ArgumentParser()
        for k in ("model", "tokenizer", "batches", "train", "adapter"):
            ap.add_argument("--" + k, required=True)
        for k, t in (("threads", int), ("r", int), ("alpha", float), ("dropout", float), ("lr", float),
                     ("warmup", int), ("total-steps", int), ("seq-len", int), ("seed", int)):
            ap.add_argument("--" + k, type=t, required=True)
        ap.add_argument("--profile-step", type=int, default=0)
        return hf_worker(ap.parse_args(sys.argv[2:]))

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--demo-steps", type=int, default=40)
    ap.add_argument("--big-steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=3, help="first steps left out of tokens/s")
    ap.add_argument("--models", default="demo,big")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_cpu.json"))
    a = ap.parse_args()
    sh(["cmake", "--build", BUILD, "--target", "qlora", "bench_train_cpu_batches"])
    import torch
    import transformers, peft, bitsandbytes
    q = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    # Runs of other (model, threads) already in --out are kept: the file can be filled in parts.
    old = json.load(open(a.out)) if os.path.exists(a.out) else {}
    runs = old.get("runs", [])
    out = {
        "description": __doc__.split("\n\n")[0] + " Steady-state tokens/s (non-padding input tokens per second of "
                       "training step, the first `skip` steps excluded) and peak RSS of the whole process "
                       "(/usr/bin/time -v), each side in its own process with the same OMP_NUM_THREADS.",
        "command": "~/.cache/qlora/venv/bin/python bench/bench_train_cpu.py " + " ".join(sys.argv[1:]),
        "commit": q,
        "machine": machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
                     "python": platform.python_version()},
        "setup": {"data": "data/demo/train.jsonl (chat, prompt masked)", "sequence_len": 64,
                  "micro_batch_size": 16, "lora": "r 16, alpha 32, dropout 0.05, all linear layers",
                  "base": "NF4, double quant, blocksize 64, fp32 compute", "optimizer": "AdamW fp32, wd 0",
                  "schedule": "lr 2e-3, 10 warmup steps, cosine", "gradient_checkpointing": False,
                  "skip": a.skip, "big_model": dict(BIG, vocab_size=1024)},
        "runs": runs,
    }
    if "notes" in old:
        out["notes"] = old["notes"]
    if "parameters" in old.get("setup", {}).get("big_model", {}):
        out["setup"]["big_model"]["parameters"] = old["setup"]["big_model"]["parameters"]

    def save():
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")

    work = tempfile.mkdtemp(prefix="qlora-bench-train-")
    try:
        for name in a.models.split(","):
            if name == "demo":
                model_dir, steps = os.path.join(DEMO, "model"), a.demo_steps
            else:
                model_dir, steps = os.path.join(work, "big-model"), a.big_steps
                out["setup"]["big_model"]["parameters"] = make_big_model(model_dir)
            for t in (int(x) for x in a.threads.split(",")):
                r = run_case(name, model_dir, steps, a.skip, t, work)
                r["command"] = out["command"]
                runs[:] = [x for x in runs if (x["model"], x["adapter"], x["threads"]) != (name, "qlora", t)] + [r]
                save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("wrote", a.out)

if __name__ == "__main__":
    main()
