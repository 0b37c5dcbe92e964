"""Greedy generation speed on CPU: `qlora generate` vs transformers generate on the same model and
prompt, with 1 and 2 threads. Writes bench/results/generate.json.

  ~/.cache/qlora/venv/bin/python bench/bench_generate.py [--model data/demo/model] [--new 200]

qlora's speed is the decode rate it reports on stderr ("N prompt + M new tokens in S s"), which
covers prefill + all decode steps (not loading), with --ignore-eos. transformers is timed around model.generate()
(fp32, sdpa, KV cache), with min_new_tokens = max_new_tokens so both produce the same count.
qlora runs the base 16-bit in fp32 (no --load-in-4bit), the same weights transformers uses.
"""
import argparse, json, os, platform, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_qlora(exe, model, prompt, new, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([exe, "generate", "--model", model, "--prompt", prompt, "--max-new-tokens", str(new),
                        "--device", "cpu", "--ignore-eos"], env=env, capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) prompt \+ (\d+) new tokens in ([\d.]+) s", r.stderr)
    return int(m.group(2)), float(m.group(3)), r.stdout


def run_hf(model, prompt, new, threads):
    code = f"""
import json, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads({threads})
tok = AutoTokenizer.from_pretrained({model!r})
m = AutoModelForCausalLM.from_pretrained({model!r}, dtype=torch.float32).eval()
ids = tok({prompt!r}, return_tensors="pt").input_ids
kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens={new}, min_new_tokens={new})
with torch.no_grad():
    m.generate(ids, **dict(kw, max_new_tokens=8, min_new_tokens=8))  # warm-up
    t = time.perf_counter(); out = m.generate(ids, **kw); s = time.perf_counter() - t
print(json.dumps({{"new": out.shape[1] - ids.shape[1], "s": s}}))
"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return j["new"], j["s"]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "data/demo/model"))
    ap.add_argument("--exe", default=os.path.join(ROOT, "build/qlora"))
    ap.add_argument("--prompt", default="Convert the date 2042-06-07 to words.")
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/generate.json"))
    a = ap.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for threads in (1, 2):
        n, s, _ = run_qlora(a.exe, a.model, a.prompt, a.new, threads)
        rows.append({"impl": "qlora", "threads": threads, "new_tokens": n, "seconds": s, "tokens_per_s": n / s})
        n, s = run_hf(a.model, a.prompt, a.new, threads)
        rows.append({"impl": "transformers", "threads": threads, "new_tokens": n, "seconds": s, "tokens_per_s": n / s})
        for r in rows[-2:]:
            print(f"{r['impl']:>12} {threads} thread(s): {r['new_tokens']} tokens in {r['seconds']:.3f} s = "
                  f"{r['tokens_per_s']:.1f} tokens/s")
    import torch, transformers
    res = {"model": os.path.relpath(a.model, ROOT), "prompt": a.prompt, "max_new_tokens": a.new, "greedy": True,
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                       "load_average_1m_before": load,
                       "note": "shared 2-core VM with other builds/tests running; with 2 threads on a loaded "
                               "machine OpenMP workers wait on each other, so the 2-thread rows are mostly noise"},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "command": "~/.cache/qlora/venv/bin/python bench/bench_generate.py", "results": rows}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
