"""The catalogue of bad inputs: every case must end with exit code 2, one `qlora: error:` line
naming the file and the key or line and what was expected, and leave every file it could have
written exactly as it was.

usage: run_catalogue.py --qlora EXE --work DIR [-k SUBSTRING] [--list] [-v]

The shared good fixtures are made once under DIR/fixture (a tiny Llama and tokenizer made by
transformers and tokenizers via tests/python/train_fixture.py, a sharded copy of it written by
safetensors, a training run with two checkpoints, a PEFT export); each case then copies what it
needs into DIR/cases/NAME/, breaks one thing and runs one command there (cwd = that directory).
Before the command every file under the case directory (inputs, a previous run directory with
its checkpoints, an existing export) is hashed; after it the file list and the hashes must be
identical. The fixture directory is hashed once and checked again at the end.

Every case must pass.
Cases are in cases.py.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

# Text that must never reach the user: C++ exception and abort output, torch backtraces, internal
# error prefixes.
FORBIDDEN = ["internal error", "terminate called", "what():", "Exception raised from", "frame #",
             "Aborted", "Segmentation fault", "c10::", "std::", "nlohmann", "[json.exception",
             "Traceback", "AddressSanitizer", "runtime error:"]


def snapshot(root):
    """{relative path: sha256} of every file under root, plus directories (marked '<dir>')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out[rel + "/"] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            r = os.path.normpath(os.path.join(rel, f))
            if os.path.islink(p):
                out[r] = "<link " + os.readlink(p) + ">"
                continue
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[r] = h.hexdigest()
    return out


def diff(before, after):
    msgs = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            msgs.append("removed " + k)
        elif k not in before:
            msgs.append("added " + k)
        elif before[k] != after[k]:
            msgs.append("changed " + k)
    return msgs


class Fixture:
    def __init__(self, qlora, work):
        self.qlora = qlora
        self.dir = os.path.join(work, "fixture")
        self.model = os.path.join(self.dir, "model")
        self.sharded = os.path.join(self.dir, "sharded")
        self.train = os.path.join(self.dir, "train.jsonl")
        self.eval = os.path.join(self.dir, "eval.jsonl")
        self.chat = os.path.join(self.dir, "chat.jsonl")
        self.run = os.path.join(self.dir, "run")
        self.peft = os.path.join(self.dir, "peft")

    def build(self):
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        py = sys.executable
        r = subprocess.run([py, os.path.join(SOURCE, "tests/python/train_fixture.py"), self.dir],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("fixture: train_fixture.py failed:\n" + r.stdout + r.stderr)
        # A sharded copy, cut and indexed by the safetensors library.
        import torch
        from safetensors.torch import load_file, save_file
        sd = load_file(os.path.join(self.model, "model.safetensors"))
        os.makedirs(self.sharded)
        for f in os.listdir(self.model):
            if f != "model.safetensors":
                shutil.copy(os.path.join(self.model, f), self.sharded)
        names = sorted(sd)
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        wm = {}
        for shard, ns in shards.items():
            save_file({n: sd[n].contiguous() for n in ns}, os.path.join(self.sharded, shard), metadata={"format": "pt"})
            wm.update({n: shard for n in ns})
        total = sum(t.numel() * t.element_size() for t in sd.values())
        with open(os.path.join(self.sharded, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, fh, indent=2)
        # A chat dataset for the role cases.
        with open(self.chat, "w") as fh:
            for w in ["abc", "de", "fgh", "ij", "aab", "bcd"]:
                fh.write(json.dumps({"messages": [{"role": "user", "content": "Reverse " + w},
                                                  {"role": "assistant", "content": w[::-1]}]}) + "\n")
        # A good run with two checkpoints, and a good PEFT export of it.
        with open(os.path.join(self.dir, "good.yaml"), "w") as fh:
            fh.write(self.config_text(self.run))
        r = subprocess.run([self.qlora, "train", os.path.join(self.dir, "good.yaml")], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("fixture: the good training run failed:\n" + r.stdout + r.stderr)
        r = subprocess.run([self.qlora, "export", self.run, "--format", "peft", "--out", self.peft],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("fixture: the good export failed:\n" + r.stdout + r.stderr)
        cps = sorted(os.listdir(os.path.join(self.run, "checkpoints")))
        if cps[:2] != ["checkpoint-000002", "checkpoint-000004"]:
            sys.exit("fixture: expected checkpoints 2 and 4, got " + str(cps))

    # The good config, one key per line in this order; `over` replaces values (raw YAML text;
    # None drops the key), `extra` is appended verbatim.
    def config_keys(self, output_dir):
        return [
            ("base_model", self.model),
            ("adapter", "qlora"),
            ("lora_r", "4"),
            ("lora_alpha", "8"),
            ("lora_dropout", "0.0"),
            ("lora_target_linear", "true"),
            ("sequence_len", "256"),
            ("micro_batch_size", "2"),
            ("gradient_accumulation_steps", "1"),
            ("max_steps", "4"),
            ("learning_rate", "0.002"),
            ("lr_scheduler", "cosine"),
            ("warmup_steps", "1"),
            ("datasets", "\n  - path: " + self.train + "\n    type: alpaca"),
            ("save_steps", "2"),
            ("logging_steps", "1"),
            ("seed", "7"),
            ("output_dir", output_dir),
        ]

    def config_text(self, output_dir, over=None, extra=""):
        over = over or {}
        lines = []
        keys = self.config_keys(output_dir)
        for k, v in keys:
            if k in over:
                v = over[k]
                if v is None:
                    continue
            lines.append(k + ": " + v)
        for k, v in over.items():
            if v is not None and k not in dict(keys):
                lines.append(k + ": " + v)
        return "\n".join(lines) + "\n" + extra


class Case:
    """One bad input. `setup(ctx)` prepares the case directory and returns the argument list
    (after the executable). `file`, `key` and `expect` are fragments the error line must hold
    (`expect` case-insensitively); a callable is given ctx and returns the fragment."""

    def __init__(self, name, area, setup, file, key, expect):
        self.name, self.area, self.setup = name, area, setup
        self.file, self.key, self.expect = file, key, expect


class Ctx:
    def __init__(self, fx, root):
        self.fx = fx
        self.dir = root
        self.vars = {}

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def write(self, rel, data):
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
        return p

    def copy(self, src, rel):
        dst = self.path(rel)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(src, dst)
        return dst

    def run_dir(self, checkpoints=True):
        """A copy of the good run directory at ./run, with its two checkpoints or (a run directory
        a fresh start may write into) without them: the output_dir to protect."""
        if not os.path.exists(self.path("run")):
            self.copy(self.fx.run, "run")
            if not checkpoints:
                shutil.rmtree(self.path("run", "checkpoints"))
        return self.path("run")

    def config(self, over=None, extra="", name="cfg.yaml", checkpoints=False):
        """A config training into a copy of the good run (which must be left as it was); without
        its checkpoints unless asked, so that a fresh start is allowed to get to the bad input."""
        out = self.run_dir(checkpoints)
        return self.write(name, self.fx.config_text(out, over, extra))

    def line_of(self, cfg, key):
        with open(cfg) as fh:
            for i, line in enumerate(fh, 1):
                if line.startswith(key + ":") or line.lstrip().startswith(key + ":"):
                    return i
        raise KeyError(key)


def resolve(v, ctx):
    return v(ctx) if callable(v) else v


def check(case, ctx, args, qlora, timeout):
    before = snapshot(ctx.dir)
    t0 = time.time()
    try:
        r = subprocess.run([qlora] + args, cwd=ctx.dir, capture_output=True, text=True, errors="replace",
                           timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        return ["timed out after %d s" % timeout], "", time.time() - t0
    dt = time.time() - t0
    problems = []
    if r.returncode != 2:
        problems.append("exit code %d, expected 2" % r.returncode)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("qlora: error:")]
    others = [l for l in lines if not l.startswith("qlora: error:") and not l.startswith("qlora: warning:")]
    if len(errors) != 1:
        problems.append("%d 'qlora: error:' lines on stderr, expected 1" % len(errors))
    if others:
        problems.append("stderr has other lines: %r" % others[:3])
    for bad in FORBIDDEN:
        if bad in r.stderr or bad in r.stdout:
            problems.append("output holds %r" % bad)
    err = errors[0] if errors else ""
    if len(err) > 2000:
        problems.append("the error line is %d characters long" % len(err))
    for what, frag, ci in (("file", case.file, False), ("key", case.key, False), ("expected", case.expect, True)):
        frag = resolve(frag, ctx)
        if frag is None:
            continue
        hay, needle = (err.lower(), frag.lower()) if ci else (err, frag)
        if needle not in hay:
            problems.append("the error line does not name the %s %r" % (what, frag))
    changes = diff(before, snapshot(ctx.dir))
    if changes:
        problems.append("files changed: " + "; ".join(changes[:6]) + (" ..." if len(changes) > 6 else ""))
    shown = err if err else (r.stderr.strip().splitlines() or ["<no stderr>"])[-1]
    return problems, shown, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("-v", action="store_true", help="print every error line")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    import cases

    all_cases = cases.CASES
    names = [c.name for c in all_cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        sys.exit("duplicate case names: " + ", ".join(sorted(dup)))
    if len(all_cases) < 60:
        sys.exit("the catalogue holds %d cases, fewer than 60" % len(all_cases))
    if a.list:
        for c in all_cases:
            print("%-12s %s" % (c.area, c.name))
        print(len(all_cases), "cases")
        return 0
    selected = [c for c in all_cases if a.k in c.name]
    qlora = os.path.abspath(a.qlora)
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    fx = Fixture(qlora, work)
    fx.build()
    print("fixtures built in %.1f s" % (time.time() - t0), flush=True)
    fixture_before = snapshot(fx.dir)
    case_root = os.path.join(work, "cases")
    if os.path.exists(case_root):
        shutil.rmtree(case_root)
    # The checks themselves must be able to fail: a good export into a new directory exits 0,
    # prints no error and adds files, and each of those must be reported.
    ctl = Ctx(fx, os.path.join(case_root, "_control"))
    os.makedirs(ctl.dir)
    control = Case("_control", "control", None, "x", None, "x")
    problems, _, _ = check(control, ctl, ["export", ctl.run_dir(), "--format", "peft", "--out", ctl.path("out")],
                           qlora, a.timeout)
    want = ["exit code 0", "0 'qlora: error:' lines", "does not name the file", "files changed: added out/"]
    missing = [w for w in want if not any(w in p for p in problems)]
    if missing:
        print("the control case was not caught as expected: missing %r in %r" % (missing, problems))
        return 1
    shutil.rmtree(ctl.dir)
    failed, passed = [], 0
    for c in selected:
        ctx = Ctx(fx, os.path.join(case_root, c.name))
        os.makedirs(ctx.dir)
        try:
            args = c.setup(ctx)
        except Exception as e:  # a broken case is a failure of the catalogue itself
            problems, shown, dt = ["setup failed: %r" % e], "", 0.0
        else:
            problems, shown, dt = check(c, ctx, args, qlora, a.timeout)
        if not problems:
            passed += 1
            status = "ok"
        else:
            failed.append(c.name)
            status = "FAIL"
        print("%-8s %-45s %5.1fs %s" % (c.area, c.name, dt, status), flush=True)
        if problems or a.v:
            print("    stderr: " + shown[:400])
            for p in problems:
                print("    - " + p)
    changes = diff(fixture_before, snapshot(fx.dir))
    if changes:
        failed.append("fixture directory changed: " + "; ".join(changes[:6]))
    print("\n%d cases: %d passed, %d failed, %.0f s in all" % (len(selected), passed, len(failed), time.time() - t0))
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
