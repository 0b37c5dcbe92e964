#!/usr/bin/env python3
"""The embedded demo's goals, measured with `qlora train` (no Python in the runs themselves):

  qlora    configs/demo.yaml          QLoRA, NF4 double-quant base, paged_adamw_32bit
  lora     configs/demo-lora.yaml     plain LoRA on the 16-bit base (the yardstick)
  qlora8   configs/demo.yaml --set optimizer=paged_adamw_8bit

each with --set eval_on_start=true --set eval_exact_match=true (greedy exact match on
data/demo/eval.jsonl before training, at eval_steps and after), OMP_NUM_THREADS=2 unless set.
Reports exact match and eval loss before/after, the relative difference of the final eval losses
(QLoRA vs LoRA; 8-bit vs 32-bit optimizer) and wall times; writes bench/results/demo.json.

usage: ~/.cache/qlora/venv/bin/python bench/bench_demo.py [--out FILE] [--runs qlora,lora,qlora8]
       [--set key=value ...]   (extra overrides for every run, e.g. --set max_steps=200)
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
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))

RUNS = {
    "qlora": ("configs/demo.yaml", []),
    "lora": ("configs/demo-lora.yaml", []),
    "qlora8": ("configs/demo.yaml", ["optimizer=paged_adamw_8bit"]),
}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "kernel": platform.release()}


def run(name, work, extra, env):
    cfg, sets = RUNS[name]
    out_dir = os.path.join(work, name)
    sets = sets + [f"output_dir={out_dir}", "eval_on_start=true", "eval_exact_match=true"] + extra
    cmd = [os.path.join(BUILD, "qlora"), "train", cfg]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{name} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) * 1024
    rows = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
    steps = [x for x in rows if "loss" in x]
    evals = [x for x in rows if "eval_loss" in x]
    train_s = steps[-1]["elapsed_s"]
    res = {"command": "OMP_NUM_THREADS=%s build/qlora train %s %s" % (
               env.get("OMP_NUM_THREADS", ""), cfg,
               " ".join("--set " + s for s in sets if not s.startswith("output_dir="))),
           "steps": steps[-1]["step"], "wall_s": wall, "train_loop_s": train_s, "peak_rss_bytes": rss,
           "evals": [{"step": e["step"], "eval_loss": e["eval_loss"], "exact_match": e.get("eval_accuracy")}
                     for e in evals],
           "final_train_loss": steps[-1]["loss"]}
    res["before"] = res["evals"][0]
    res["after"] = res["evals"][-1]
    print(f"{name}: exact match {res['before']['exact_match']:.3f} -> {res['after']['exact_match']:.3f}, "
          f"eval loss {res['before']['eval_loss']:.4f} -> {res['after']['eval_loss']:.5f}, "
          f"wall {wall:.0f}s (training loop {train_s:.0f}s)", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "demo.json"))
    ap.add_argument("--runs", default="qlora,lora,qlora8")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    a = ap.parse_args()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    work = tempfile.mkdtemp(prefix="qlora-bench-demo-")
    try:
        res = {n: run(n, work, a.sets, env) for n in a.runs.split(",")}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rel(x, y):
        return (x - y) / y

    cmp = {}
    if "qlora" in res and "lora" in res:
        q, l = res["qlora"]["after"]["eval_loss"], res["lora"]["after"]["eval_loss"]
        cmp["qlora_vs_lora_final_eval_loss_rel_diff"] = rel(q, l)
        cmp["qlora_vs_lora_final_eval_loss_abs_diff"] = q - l
        cmp["qlora_within_1pct_of_lora"] = abs(rel(q, l)) <= 0.01
    if "qlora8" in res and "qlora" in res:
        e, f = res["qlora8"]["after"]["eval_loss"], res["qlora"]["after"]["eval_loss"]
        cmp["adamw8bit_vs_32bit_final_eval_loss_rel_diff"] = rel(e, f)
        cmp["adamw8bit_vs_32bit_final_eval_loss_abs_diff"] = e - f
    q = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {"description": __doc__.split("\n\n")[0].replace("\n", " "),
           "command": "~/.cache/qlora/venv/bin/python bench/bench_demo.py " + " ".join(sys.argv[1:]),
           "commit": q, "machine": machine(), "threads": env["OMP_NUM_THREADS"],
           "runs": res, "comparisons": cmp}
    if os.path.exists(a.out):  # hand-written interpretation is kept across reruns
        notes = json.load(open(a.out)).get("notes")
        if notes:
            out["notes"] = notes
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(cmp, indent=2))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
