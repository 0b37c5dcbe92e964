#!/usr/bin/env python3
"""Kill-and-resume sweep: a small training run is killed with SIGKILL at many random moments
(a share of them while a checkpoint is being written), resumed with --resume after each kill,
and its final adapter and optimizer state are compared bit for bit with an uninterrupted run.

  ~/.cache/qlora/venv/bin/python scripts/kill_resume_sweep.py [--kills 60] [--seed 1]
      [--qlora build/qlora] [--work /tmp/qlora-kill-sweep] [--out bench/results/kill_resume_sweep.json]

The model, tokenizer and data are tests/python/train_fixture.py's (a tiny Llama made by
transformers). Kill moments are drawn from a seeded generator in two kinds:
  time   a uniform moment between the start of the process and about 20 training steps after
         its startup (measured on the uninterrupted run);
  ckpt   the moment a checkpoint's staging folder (checkpoints/.checkpoint-N.tmp-*) appears,
         plus a random 0-3 ms: the kill lands while the checkpoint is being written or published.
A kill counts as "during a checkpoint write" when a staging folder existed just before the kill
or was left behind by it. After a kill the run continues with `qlora train CFG --resume` (or starts
again when no checkpoint was published yet). The run is long enough that the kills end before
it does; a run that still finishes before its kill ends the sweep early (reported). Exit code 0
when the final files match.
"""
import argparse, hashlib, json, os, random, shutil, signal, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "optimizer.json",
            "rng_state.safetensors"]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def staging(ckdir):
    try:
        return [n for n in os.listdir(ckdir) if n.startswith(".checkpoint-") and ".tmp-" in n]
    except FileNotFoundError:
        return []


def published(ckdir):
    try:
        return sorted(n for n in os.listdir(ckdir) if n.startswith("checkpoint-"))
    except FileNotFoundError:
        return []


def write_config(path, fix, run_dir, steps, save_steps):
    with open(path, "w") as f:
        f.write(f"""base_model: {fix}/model
adapter: qlora
lora_r: 8
lora_alpha: 16
lora_dropout: 0.1
lora_target_linear: true
sequence_len: 256
micro_batch_size: 2
gradient_accumulation_steps: 1
max_steps: {steps}
learning_rate: 0.002
lr_scheduler: cosine
warmup_steps: 2
optimizer: paged_adamw
optimizer_device_budget: 4KB
save_steps: {save_steps}
save_total_limit: 2
datasets:
  - path: {fix}/train.jsonl
    type: alpaca
output_dir: {run_dir}
""")


def start(qlora, cfg, resume, env):
    args = [qlora, "train", cfg] + (["--resume"] if resume else [])
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def final_files(run_dir, steps):
    d = os.path.join(run_dir, "checkpoints", "checkpoint-%06d" % steps)
    return {n: sha(os.path.join(d, n)) for n in COMPARED}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlora", default=os.path.join(ROOT, "build", "qlora"))
    ap.add_argument("--work", default="/tmp/qlora-kill-sweep")
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--save-steps", type=int, default=3)
    ap.add_argument("--ckpt-share", type=float, default=0.5, help="share of kills aimed at checkpoint writes")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "kill_resume_sweep.json"))
    a = ap.parse_args()
    t_all = time.time()
    rng = random.Random(a.seed)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    shutil.rmtree(a.work, ignore_errors=True)
    fix = os.path.join(a.work, "fixture")
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "python", "train_fixture.py"), fix], check=True,
                   stdout=subprocess.DEVNULL, env=dict(env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))

    # Uninterrupted reference.
    ref_cfg, ref_run = os.path.join(a.work, "ref.yaml"), os.path.join(a.work, "ref")
    write_config(ref_cfg, fix, ref_run, a.steps, a.save_steps)
    t0 = time.time()
    p = start(a.qlora, ref_cfg, False, env)
    t_first = None  # when the first checkpoint is published: startup + save_steps steps
    while p.poll() is None:
        if t_first is None and published(os.path.join(ref_run, "checkpoints")):
            t_first = time.time() - t0
        time.sleep(0.002)
    err = p.stderr.read()
    if p.returncode != 0 or t_first is None:
        sys.exit("reference run failed:\n" + err.decode())
    ref_wall = time.time() - t0
    step_s = (ref_wall - t_first) / (a.steps - a.save_steps)
    time_window = t_first + 20 * step_s
    ref = final_files(ref_run, a.steps)

    cfg, run_dir = os.path.join(a.work, "swept.yaml"), os.path.join(a.work, "swept")
    write_config(cfg, fix, run_dir, a.steps, a.save_steps)
    ckdir = os.path.join(run_dir, "checkpoints")
    kills, during_ckpt, by_kind, restarts, resumes, finished_early = 0, 0, {"time": 0, "ckpt": 0}, 0, 0, 0
    last_step = []  # newest published checkpoint after each kill
    while kills < a.kills:
        resume = bool(published(ckdir))
        resumes += resume
        restarts += not resume
        p = start(a.qlora, cfg, resume, env)
        kind = "ckpt" if rng.random() < a.ckpt_share else "time"
        extra = rng.uniform(0.0, 0.003)
        deadline = time.time() + (rng.uniform(0.0, time_window) if kind == "time" else ref_wall)
        before = []
        while p.poll() is None and time.time() < deadline:
            if kind == "ckpt" and staging(ckdir):
                time.sleep(extra)
                break
            time.sleep(0.0002 if kind == "ckpt" else 0.002)
        if p.poll() is not None:  # the run finished (or failed) before the moment came
            err = p.stderr.read().decode()
            if p.returncode != 0:
                sys.exit(f"run failed (exit {p.returncode}) after {kills} kills:\n{err}")
            finished_early = 1
            break
        before = staging(ckdir)
        p.send_signal(signal.SIGKILL)
        p.wait()
        left = staging(ckdir)
        in_ckpt = bool(before or left)
        kills += 1
        by_kind[kind] += 1
        during_ckpt += in_ckpt
        last_step.append(published(ckdir)[-1:])

    # The last run goes to the end.
    resume = False
    if not finished_early:
        resume = bool(published(ckdir))
        p = start(a.qlora, cfg, resume, env)
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit("final run failed:\n" + err.decode())
    got = final_files(run_dir, a.steps)
    mismatched = [n for n in COMPARED if got[n] != ref[n]]
    res = {
        "command": "scripts/kill_resume_sweep.py --kills %d --seed %d --steps %d --save-steps %d" %
                   (a.kills, a.seed, a.steps, a.save_steps),
        "steps": a.steps,
        "save_steps": a.save_steps,
        "kills": kills,
        "kills_by_kind": by_kind,
        "kills_during_checkpoint_write": during_ckpt,
        "fresh_starts": restarts,
        "resumes": resumes + resume,
        "sweep_ended_early_by_a_finished_run": bool(finished_early),
        "newest_checkpoint_step_after_each_kill": [int(x[0].split("-")[1]) if x else 0 for x in last_step],
        "compared_files": COMPARED,
        "match": not mismatched,
        "mismatched_files": mismatched,
        "reference_run_wall_s": round(ref_wall, 2),
        "reference_first_checkpoint_s": round(t_first, 2),
        "time_kill_window_s": round(time_window, 2),
        "wall_s": round(time.time() - t_all, 1),
        "omp_num_threads": env["OMP_NUM_THREADS"],
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2))
    sys.exit(0 if not mismatched else 1)


if __name__ == "__main__":
    main()
