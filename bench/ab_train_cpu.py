#!/usr/bin/env python3
"""A/B of two qlora builds on the CPU training step: `qlora train` of build A and build B,
alternated run by run (A, B, A, B, ...) so that machine noise falls on both alike.

Each run trains configs/demo.yaml (the demo model, or the ~52M "big" Llama that
bench_train_cpu.py makes) for a fixed number of steps with AdamW, no eval and no checkpoints;
the figure is the target tokens per second of metrics.jsonl (the `tokens` column) over the steps
after the third. Medians over --reps runs are compared.

usage (the project's venv python; both checkouts built, e.g. a git worktree of the old commit):
  ~/.cache/qlora/venv/bin/python bench/ab_train_cpu.py --a OLD_CHECKOUT --b NEW_CHECKOUT \
      [--reps 3] [--threads 2,1] [--out bench/results/train_cpu_ab.json]
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train_cpu", os.path.join(HERE, "bench_train_cpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(root, model_dir, steps, threads, out):
    shutil.rmtree(out, ignore_errors=True)
    sets = [f"max_steps={steps}", f"output_dir={out}", "test_datasets=null", "eval_steps=0", "save_steps=0",
            "logging_steps=1", "optimizer=adamw"]
    if model_dir:
        sets += [f"base_model={model_dir}", f"tokenizer={model_dir}"]
    cmd = [os.path.join(root, "build", "qlora"), "train", "configs/demo.yaml"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    rows = [r for r in rows if "tokens" in r and r["step"] > 3]
    return sum(r["tokens"] for r in rows[1:]) / (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="checkout with build/qlora (the reference build)")
    ap.add_argument("--b", required=True, help="checkout with build/qlora (the build under test)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "train_cpu_ab.json"))
    a = ap.parse_args()
    bench = load_bench()
    work = tempfile.mkdtemp(prefix="qlora-ab-")
    rev = lambda root: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                      text=True).stdout.strip()
    doc = {"benchmark": "qlora train tokens/s, build A vs build B alternated run by run",
           "command": "~/.cache/qlora/venv/bin/python bench/ab_train_cpu.py --a A --b B",
           "machine": bench.machine(), "a": rev(a.a), "b": rev(a.b), "reps": a.reps, "results": []}
    try:
        big = os.path.join(work, "big-model")
        bench.make_big_model(big)
        for name, model_dir, steps in (("demo", None, 40), ("big", big, 12)):
            for t in (int(x) for x in a.threads.split(",")):
                runs = {"a": [], "b": []}
                for _ in range(a.reps):
                    for side in ("a", "b"):
                        runs[side].append(run(getattr(a, side), model_dir, steps, t, os.path.join(work, "run")))
                ma, mb = statistics.median(runs["a"]), statistics.median(runs["b"])
                doc["results"].append({"model": name, "threads": t, "tokens_per_s": runs,
                                       "median_a": ma, "median_b": mb, "b_over_a": mb / ma})
                print(f"{name} t{t}: A {ma:.0f} B {mb:.0f} tokens/s (B/A {mb / ma:.3f}); runs {runs}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
