#!/usr/bin/env python3
"""Streaming tokenization: peak memory and time of `qlora preprocess` against the data's size.

Generates text datasets of growing size (JSON Lines or Parquet, written in pieces so that this
script stays small too), then runs `qlora preprocess CONFIG --json` on each, with `streaming: false`
(tokenized samples and packed rows in memory) and `streaming: true` (through scratch files on disk,
the rows a mapping of them), and records the process's peak RSS (GNU time's "Maximum resident set
size") and wall time. The largest size runs with streaming only. Every pair must report the same
data fingerprint.

The model is the embedded demo model's tokenizer (SentencePiece, 4k vocabulary), records are
{"text": ...} of about 2,000 characters of seeded pseudo-words, sequence_len 512 with packing.

usage (the project's venv python; expects build/qlora):
  ~/.cache/qlora/venv/bin/python bench/bench_streaming.py [--format parquet|jsonl]
      [--sizes-mb 64,256,1024] [--big-mb 3072] [--memory-limit-mb N] [--out bench/results/streaming.json]
With --memory-limit-mb (root, cgroup v1), the largest size also runs inside a memory cgroup limited
to N MiB, streaming and then in memory: data larger than the memory the process may use.
"""
import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "kernel": platform.release()}


def words(seed):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]


def records(n_bytes, seed=0):
    """Yields {"text": ...} records until about n_bytes of text."""
    rng = random.Random(seed)
    vocab = words(seed)
    made = 0
    while made < n_bytes:
        text = " ".join(rng.choice(vocab) for _ in range(330))
        made += len(text)
        yield {"text": text}


def write_data(path, fmt, n_bytes):
    if fmt == "jsonl":
        with open(path, "w") as f:
            for r in records(n_bytes):
                f.write(json.dumps(r) + "\n")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        batch = []
        for r in records(n_bytes):
            batch.append(r["text"])
            if len(batch) == 10000:
                w.write_table(pa.table({"text": batch}, schema=schema))
                batch = []
        if batch:
            w.write_table(pa.table({"text": batch}, schema=schema))


def run(data, streaming, work, cgroup=None):
    cfg = os.path.join(work, "cfg.yaml")
    with open(cfg, "w") as f:
        f.write(f"""base_model: {ROOT}/data/demo/model
datasets:
  - path: {data}
    type: text
sequence_len: 512
sample_packing: true
streaming: {"true" if streaming else "false"}
max_steps: 1
adapter: qlora
lora_target_linear: true
output_dir: {work}/run
""")
    env = dict(os.environ, TMPDIR=work)
    t0 = time.time()
    cmd = ["/usr/bin/time", "-v", os.path.join(ROOT, "build", "qlora"), "preprocess", cfg, "--json"]
    if cgroup:  # join the memory-limited group, then run
        cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if cgroup and p.returncode != 0:
        sig = re.search(r"Command terminated by signal (\d+)", p.stderr)
        err = [l for l in p.stderr.splitlines() if l.startswith("qlora: error:")]
        return {"streaming": streaming, "failed": p.returncode, "wall_s": round(wall, 1),
                "error": f"killed by signal {sig.group(1)}" if sig else (err or ["?"])[-1]}
    if p.returncode != 0:
        raise SystemExit(f"qlora preprocess failed ({p.returncode}):\n{p.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    report = json.loads(p.stdout)
    return {"streaming": streaming, "peak_rss_bytes": peak_kib * 1024, "wall_s": round(wall, 1), "report": report}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="parquet", choices=["parquet", "jsonl"])
    ap.add_argument("--sizes-mb", default="64,256,1024")
    ap.add_argument("--big-mb", type=int, default=3072)
    ap.add_argument("--memory-limit-mb", type=int, default=0,
                    help="also run the largest size, both ways, in a cgroup (v1) with this memory limit")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "streaming.json"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qlora-stream-") as work:
        sizes = [int(s) for s in a.sizes_mb.split(",") if s] + ([a.big_mb] if a.big_mb else [])
        for i, mb in enumerate(sizes):
            data = os.path.join(work, f"data.{a.format}")
            t0 = time.time()
            write_data(data, a.format, mb << 20)
            gen = time.time() - t0
            modes = [True] if a.big_mb and i == len(sizes) - 1 else [False, True]
            got = {}
            for streaming in modes:
                r = run(data, streaming, work)
                got[streaming] = r
                tr = r["report"].get("train", {})
                print(f"{mb} MiB text ({os.path.getsize(data) >> 20} MiB {a.format}) streaming={streaming}: "
                      f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, {r['wall_s']} s, "
                      f"{tr.get('tokens', '?')} tokens", flush=True)
                rows.append({"text_mib": mb, "file_bytes": os.path.getsize(data), "generate_s": round(gen, 1),
                             "streaming": streaming, "peak_rss_bytes": r["peak_rss_bytes"], "wall_s": r["wall_s"],
                             "train": tr})
            if a.memory_limit_mb and i == len(sizes) - 1:
                cg = "/sys/fs/cgroup/memory/qlora-bench-streaming"
                os.makedirs(cg, exist_ok=True)
                with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
                    f.write(str(a.memory_limit_mb << 20))
                try:
                    for streaming in (True, False):
                        r = run(data, streaming, work, cgroup=cg)
                        said = (f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB" if "peak_rss_bytes" in r
                                else f"failed (exit {r['failed']}: {r['error']})")
                        print(f"{mb} MiB text under a {a.memory_limit_mb} MiB memory limit, streaming={streaming}: "
                              f"{said}, {r['wall_s']} s", flush=True)
                        rows.append({"text_mib": mb, "file_bytes": os.path.getsize(data),
                                     "memory_limit_bytes": a.memory_limit_mb << 20, "streaming": streaming,
                                     **{k: v for k, v in r.items() if k not in ("report", "streaming")},
                                     "train": r.get("report", {}).get("train", {})})
                finally:
                    os.rmdir(cg)
            if len(got) == 2:
                fa = got[False]["report"].get("train", {}).get("fingerprint")
                fb = got[True]["report"].get("train", {}).get("fingerprint")
                if fa != fb:
                    raise SystemExit(f"fingerprints differ at {mb} MiB: {fa} vs {fb}")
            os.remove(data)
            shutil.rmtree(os.path.join(work, "run"), ignore_errors=True)
    out = {"bench": "streaming tokenization (qlora preprocess)", "machine": machine(), "format": a.format,
           "command": f"~/.cache/qlora/venv/bin/python bench/bench_streaming.py --format {a.format} "
                      f"--sizes-mb {a.sizes_mb} --big-mb {a.big_mb}"
                      + (f" --memory-limit-mb {a.memory_limit_mb}" if a.memory_limit_mb else ""),
           "rows": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
