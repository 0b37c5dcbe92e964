#!/usr/bin/env python3
"""Data-parallel training on the CPU: tokens/s and peak RSS per rank, 1 process vs 2 (Gloo on
loopback), the same global batch.

  1p x 2t   build/qlora train CFG                          micro_batch_size 8 x gradient_accumulation_steps 2, OMP_NUM_THREADS=2
  1p x 1t   the same with OMP_NUM_THREADS=1                (the per-core yardstick)
  2p x 1t   build/qlora train CFG --nproc-per-node 2       micro_batch_size 8 x gradient_accumulation_steps 1 per rank,
                                                           OMP_NUM_THREADS=1 per worker

Config: configs/demo.yaml's data and LoRA (r 16, alpha 32, dropout 0.05, all linear layers, NF4
double-quant base), sequence_len 64, global batch 16, AdamW fp32, no eval, no checkpoint but the
last. Models: the embedded demo (data/demo/model, 2M parameters) and bench_train_cpu.py's bigger
random Llama (hidden 768, 8 layers, ~52M parameters, made here by transformers), where the
per-step all-reduce and launch overhead weigh less.

tokens/s: target tokens (the tokens the loss is taken on) per second of training, from rank 0's
metrics.jsonl step lines: the "tokens" of the steps after the first `--skip` divided by the
elapsed_s between them. The script checks that the 2-process run logs the same tokens per step as
the 1-process runs (the whole global batch's). Also reported: the median of the lines'
tokens_per_s (input tokens per second of the step, as rank 0 logs it).
Peak RSS per rank: VmHWM of every process of the run (the launcher, each worker by its RANK),
read from /proc/PID/status every 20 ms until the process exits (VmHWM only grows, so the last
reading is the peak up to 20 ms before the exit); the 1-process run is read the same way.
RSS counts the pages of the shared libraries each process touched (LibTorch's are hundreds of MiB,
the same page-cache pages in every process), so the per-rank peaks do not add up to the machine's
use; the largest RssAnon seen in the same readings (the process's private memory: heap, tensors)
is reported beside it. Each configuration runs `--repeats` times; the median tokens/s and the
largest peaks are reported.

usage: ~/.cache/qlora/venv/bin/python bench/ddp_cpu.py [--models demo,big] [--cases 1px2t,1px1t,2px1t] [--repeats 3]
       [--demo-steps 40] [--big-steps 12] [--skip 3] [--out bench/results/ddp_cpu.json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "data", "demo")
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_train_cpu  # noqa: E402  (machine description, the bigger model)

GLOBAL_BATCH = 16
MICRO = 8
CASES = [("1p x 2t", 1, 2), ("1p x 1t", 1, 1), ("2p x 1t", 2, 1)]


def write_config(path, model_dir, out_dir, steps, grad_accum):
    with open(path, "w") as f:
        f.write(f"""base_model: {model_dir}
tokenizer: {model_dir}
adapter: qlora
quantization:
  quant_type: nf4
  double_quant: true
  blocksize: 64
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_linear: true
datasets:
  - path: {DEMO}/train.jsonl
    type: chat
sequence_len: 64
micro_batch_size: {MICRO}
gradient_accumulation_steps: {grad_accum}
max_steps: {steps}
learning_rate: 2.0e-3
lr_scheduler: cosine
warmup_steps: 10
optimizer: adamw
seed: 42
save_steps: 0
logging_steps: 1
output_dir: {out_dir}
""")


def proc_tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def read_mem(pid):
    """(VmHWM, RssAnon) in bytes, or None when the process is gone."""
    hwm = anon = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        return None
    return None if hwm is None or anon is None else (hwm, anon)


def read_rank(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for kv in f.read().split(b"\0"):
                if kv.startswith(b"RANK="):
                    return int(kv[5:])
    except (OSError, ValueError):
        pass
    return None


def run_once(cmd, env, timeout=1800):
    """Runs cmd; returns (stdout, wall seconds, {pid: (rank or None, peak VmHWM, peak RssAnon seen)})."""
    peaks, stop = {}, threading.Event()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)

    def poll():
        while not stop.is_set():
            for q in proc_tree(p.pid):
                m = read_mem(q)
                if m is None:
                    continue
                rank, old_hwm, old_anon = peaks.get(q, (None, 0, 0))
                if rank is None and q != p.pid:
                    rank = read_rank(q)
                peaks[q] = (rank, max(old_hwm, m[0]), max(old_anon, m[1]))
            stop.wait(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        raise
    finally:
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return out, wall, peaks


def run_case(label, nproc, threads, model_dir, steps, skip, work):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out_dir = os.path.join(work, "run")
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = os.path.join(work, "config.yaml")
    write_config(cfg, model_dir, out_dir, steps, GLOBAL_BATCH // MICRO // nproc)
    cmd = [os.path.join(BUILD, "qlora"), "train", cfg] + (["--nproc-per-node", str(nproc)] if nproc > 1 else [])
    load = os.getloadavg()[0]
    stdout, wall, peaks = run_once(cmd, env)
    rows = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
    rows = [r for r in rows if "loss" in r and "step" in r]
    assert len(rows) == steps, f"{label}: {len(rows)} step lines, expected {steps}"
    tokens = [r["tokens"] for r in rows]
    span = rows[-1]["elapsed_s"] - rows[skip - 1]["elapsed_s"]
    per_rank, anon_rank = {}, {}
    launcher = launcher_anon = None
    for pid, (rank, hwm, anon) in peaks.items():
        if nproc == 1 and pid == min(peaks):
            rank = 0
        if rank is not None:
            per_rank[rank] = max(per_rank.get(rank, 0), hwm)
            anon_rank[rank] = max(anon_rank.get(rank, 0), anon)
        elif nproc > 1 and pid == min(peaks):
            launcher, launcher_anon = hwm, anon
    start = next((l for l in stdout.splitlines() if l.startswith("distributed:")), None)
    return {"tokens_per_s": sum(tokens[skip:]) / span, "tokens": tokens, "wall_s": wall,
            "logged_input_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[skip:]),
            "train_loop_s": rows[-1]["elapsed_s"], "peak_rss_bytes_per_rank": [per_rank.get(r) for r in range(nproc)],
            "peak_rss_anon_bytes_per_rank": [anon_rank.get(r) for r in range(nproc)],
            "launcher_peak_rss_bytes": launcher, "launcher_peak_rss_anon_bytes": launcher_anon, "rank0_memory_bytes_logged": max(r["memory_bytes"] for r in rows),
            "loss": [r["loss"] for r in rows], "loadavg_before": load, "start_line": start}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,big")
    ap.add_argument("--cases", default="1px2t,1px1t,2px1t")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-steps", type=int, default=40)
    ap.add_argument("--big-steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=3, help="first steps left out of tokens/s")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "ddp_cpu.json"))
    a = ap.parse_args()
    import torch
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {"description": __doc__.split("\n\n")[0].replace("\n", " "),
           "command": "~/.cache/qlora/venv/bin/python bench/ddp_cpu.py " + " ".join(sys.argv[1:]),
           "commit": commit, "machine": bench_train_cpu.machine(), "versions": {"torch": torch.__version__},
           "setup": {"data": "data/demo/train.jsonl (chat, prompt masked)", "sequence_len": 64,
                     "global_batch": GLOBAL_BATCH, "micro_batch_size": MICRO,
                     "lora": "r 16, alpha 32, dropout 0.05, all linear layers",
                     "base": "NF4, double quant, blocksize 64, fp32 compute", "optimizer": "AdamW fp32",
                     "skip": a.skip, "repeats": a.repeats, "backend": "gloo (loopback)",
                     "big_model": dict(bench_train_cpu.BIG, vocab_size=1024)},
           "runs": []}
    work = tempfile.mkdtemp(prefix="qlora-bench-ddp-")
    try:
        for name in a.models.split(","):
            if name == "demo":
                model_dir, steps = os.path.join(DEMO, "model"), a.demo_steps
            else:
                model_dir, steps = os.path.join(work, "big"), a.big_steps
                if not os.path.exists(model_dir):
                    out["setup"]["big_model"]["parameters"] = bench_train_cpu.make_big_model(model_dir)
            base_tokens = None
            for label, nproc, threads in [c for c in CASES if c[0].replace(" x ", "x") in a.cases.split(",")]:
                reps = [run_case(label, nproc, threads, model_dir, steps, a.skip, work) for _ in range(a.repeats)]
                tps = [r["tokens_per_s"] for r in reps]
                res = {"model": name, "case": label, "processes": nproc, "threads_per_process": threads,
                       "steps": steps, "micro_batch_size": MICRO,
                       "gradient_accumulation_steps": GLOBAL_BATCH // MICRO // nproc,
                       "target_tokens_per_s": statistics.median(tps), "target_tokens_per_s_runs": tps,
                       "logged_input_tokens_per_s": statistics.median(r["logged_input_tokens_per_s"] for r in reps),
                       "peak_rss_bytes_per_rank": [max(r["peak_rss_bytes_per_rank"][k] or 0 for r in reps)
                                                   for k in range(nproc)],
                       "peak_rss_anon_bytes_per_rank": [max(r["peak_rss_anon_bytes_per_rank"][k] or 0 for r in reps)
                                                        for k in range(nproc)],
                       "launcher_peak_rss_bytes": max((r["launcher_peak_rss_bytes"] or 0) for r in reps) or None,
                       "launcher_peak_rss_anon_bytes": max((r["launcher_peak_rss_anon_bytes"] or 0) for r in reps) or None,
                       "rank0_memory_bytes_logged": max(r["rank0_memory_bytes_logged"] for r in reps),
                       "wall_s_runs": [r["wall_s"] for r in reps],
                       "train_loop_s_runs": [r["train_loop_s"] for r in reps],
                       "loadavg_before": [r["loadavg_before"] for r in reps],
                       "start_line": reps[0]["start_line"],
                       "final_loss": reps[0]["loss"][-1]}
                if base_tokens is None:
                    base_tokens = reps[0]["tokens"]
                res["tokens_per_step_equal_to_1p"] = reps[0]["tokens"] == base_tokens
                out["runs"].append(res)
                print(f"{name} {label}: {res['target_tokens_per_s']:.0f} target tok/s (runs {', '.join('%.0f' % t for t in tps)}), "
                      f"peak RSS per rank {[round(x / 2**20) for x in res['peak_rss_bytes_per_rank']]} MiB "
                      f"(anonymous {[round(x / 2**20) for x in res['peak_rss_anon_bytes_per_rank']]} MiB)"
                      + (f", launcher {res['launcher_peak_rss_bytes'] / 2**20:.0f} MiB "
                         f"(anonymous {res['launcher_peak_rss_anon_bytes'] / 2**20:.0f} MiB)"
                         if res["launcher_peak_rss_bytes"] else "")
                      + f", same tokens per step as 1p: {res['tokens_per_step_equal_to_1p']}", flush=True)
            one = next((r for r in out["runs"] if r["model"] == name and r["case"] == "1p x 2t"), None)
            two = next((r for r in out["runs"] if r["model"] == name and r["case"] == "2p x 1t"), None)
            if not (one and two):
                continue
            out.setdefault("comparisons", {})[name] = {
                "2p_x_1t_vs_1p_x_2t_tokens_per_s_ratio": two["target_tokens_per_s"] / one["target_tokens_per_s"],
                "2p_total_peak_rss_vs_1p_ratio": sum(two["peak_rss_bytes_per_rank"]) / one["peak_rss_bytes_per_rank"][0],
                "2p_total_peak_rss_anon_vs_1p_ratio":
                    sum(two["peak_rss_anon_bytes_per_rank"]) / one["peak_rss_anon_bytes_per_rank"][0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if os.path.exists(a.out):  # hand-written interpretation is kept across reruns
        notes = json.load(open(a.out)).get("notes")
        if notes:
            out["notes"] = notes
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(out.get("comparisons", {}), indent=2))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
