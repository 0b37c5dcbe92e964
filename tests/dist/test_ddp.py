"""Data-parallel training, end to end: the real binary on the embedded demo model (data/demo), its
workers started by qlora's own launcher (--nproc-per-node), by torchrun from the venv, or by two
launchers acting as two nodes, all on loopback with Gloo.

usage: test_ddp.py --qlora EXE --torchrun TORCHRUN --work DIR [-k SUBSTRING] [-v]

The yardstick is one process with gradient_accumulation_steps G*W: W processes with G each train
the same global batch and must give the same run. "Same" is measured as
  - metrics.jsonl step lines: loss and grad_norm within 1e-6 relative (|a-b| / max(|a|, |b|)), lr
    equal, the same steps;
  - the final adapter (checkpoints/checkpoint-NNNNNN/adapter_model.safetensors, read with the
    safetensors package): the same tensor names, shapes and dtypes, and for each tensor
    max|a-b| / max|a| <= 1e-6 (a is the yardstick's tensor; where it is all zeros, b must be too).
Resuming with the same world size must be bit-identical (the adapter file's bytes).

Cases: (a) --nproc-per-node 2 and 3 vs 1 process; (b) torchrun --no-python; (c) two launchers as
two nodes (--nnodes 2 --node-rank 0/1); (d) a worker SIGKILLed mid-run: the rest exit within
ddp_timeout naming the rank, the newest checkpoint is intact, --resume completes bit-identical to
an uninterrupted run; (e) SIGTERM to the launcher: exit 0, a checkpoint at the stop step, the
printed resume command gives a run bit-identical to an uninterrupted one; (f) resume of a 2-process checkpoint with 1 process (the global batch
kept, same result) and with 4 (refused, exit 2, one line, nothing changed); (g) a hung worker
(SIGSTOP); (h) launcher options out of range.

Every case is its own function (case_*); reference runs they share are made once, on first use.
Every child runs in its own session with a timeout; on a failure or timeout its whole process tree
is killed. OMP_NUM_THREADS=1 for every worker.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
DEMO = os.path.join(SOURCE, "data", "demo")

REL_TOL = 1e-6
G_TOTAL = 6            # gradient_accumulation_steps of the single-process yardstick (G*W)
SHORT_STEPS = 4        # the comparison runs
LONG_STEPS = 60        # the runs that are killed or stopped mid-run
DDP_TIMEOUT = 20       # seconds, the config's ddp_timeout in every run
RUN_TIMEOUT = 300      # seconds, the limit for any one command
EXIT_MARGIN = 30       # seconds beyond ddp_timeout for the survivors of a killed rank to exit
HANG_TIMEOUT = 8       # ddp_timeout of the run with a hung worker (the survivors wait for it in full)
LAUNCHER_MARGIN = 20   # seconds beyond ddp_timeout for the launcher to end a hung worker after the
                       # first worker exits (it sends SIGTERM, which a stopped process never acts
                       # on, and SIGKILL some seconds later)

ARGS = None
_live = []             # Popen objects still running (killed with their trees on the way out)


# ----------------------------------------------------------------------------- processes

def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(p):
    """SIGKILL a child, its process group and every process below it."""
    pids = descendants(p.pid)
    for sig_target in [lambda: os.killpg(p.pid, signal.SIGKILL)] + [
            (lambda q: lambda: os.kill(q, signal.SIGKILL))(q) for q in [p.pid] + pids]:
        try:
            sig_target()
        except OSError:
            pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def kill_all():
    for p in list(_live):
        if p.poll() is None:
            kill_tree(p)
    _live.clear()


class Proc:
    """One command started in its own session, stdout and stderr to files."""

    def __init__(self, cmd, log, env=None):
        self.cmd = cmd
        self.log = log
        env = dict(os.environ if env is None else env)
        env["OMP_NUM_THREADS"] = "1"
        self.out_f = open(log + ".out", "w")
        self.err_f = open(log + ".err", "w")
        if ARGS.verbose:
            print("   $", " ".join(cmd), flush=True)
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=self.out_f, stderr=self.err_f, stdin=subprocess.DEVNULL,
                                  env=env, start_new_session=True)
        _live.append(self.p)

    @property
    def pid(self):
        return self.p.pid

    def wait(self, timeout=RUN_TIMEOUT):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.p)
            self.close()
            raise AssertionError(f"timed out after {timeout}s: {' '.join(self.cmd)}\n{self.tail()}")
        self.close()
        if self.p in _live:
            _live.remove(self.p)
        return rc

    def close(self):
        self.out_f.close()
        self.err_f.close()

    @property
    def stdout(self):
        return open(self.log + ".out").read()

    @property
    def stderr(self):
        return open(self.log + ".err").read()

    def tail(self, n=3000):
        return f"--- stdout\n{self.stdout[-n:]}\n--- stderr\n{self.stderr[-n:]}"


def run(cmd, log, expect_rc=0, timeout=RUN_TIMEOUT):
    p = Proc(cmd, log)
    rc = p.wait(timeout)
    if expect_rc is not None and rc != expect_rc:
        raise AssertionError(f"exit {rc}, expected {expect_rc}: {' '.join(cmd)}\n{p.tail()}")
    return p


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- runs and files

def case_dir(name):
    d = os.path.join(ARGS.work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def write_config(d, grad_accum, max_steps, save_steps, name="config.yaml", ddp_timeout=DDP_TIMEOUT):
    """The demo model and data, small: micro-batches of 2 at 64 tokens, dropout on."""
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(f"""base_model: {DEMO}/model
adapter: qlora
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
datasets:
  - path: {DEMO}/train.jsonl
    type: chat
sequence_len: 64
micro_batch_size: 2
gradient_accumulation_steps: {grad_accum}
max_steps: {max_steps}
learning_rate: 2.0e-3
lr_scheduler: cosine
warmup_steps: 1
optimizer: paged_adamw_32bit
max_grad_norm: 1.0
seed: 42
save_steps: {save_steps}
logging_steps: 1
ddp_timeout: {ddp_timeout}
output_dir: {d}/run
""")
    return path


def qlora_train(cfg, nproc=None, extra=()):
    cmd = [ARGS.qlora, "train", cfg]
    if nproc is not None:
        cmd += ["--nproc-per-node", str(nproc)]
    return cmd + list(extra)


def step_lines(run_dir):
    """{step: the last metrics.jsonl line logged for it} (a resumed run appends)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                j = json.loads(line)
                if "loss" in j and "step" in j:
                    out[j["step"]] = j
    return out


def max_step_logged(run_dir):
    try:
        return max(step_lines(run_dir), default=0)
    except (OSError, ValueError):
        return 0  # not there yet, or a line being written


def checkpoint(run_dir, step):
    return os.path.join(run_dir, "checkpoints", "checkpoint-%06d" % step)


def adapter(run_dir, step):
    return os.path.join(checkpoint(run_dir, step), "adapter_model.safetensors")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rel(a, b):
    d = abs(a - b)
    m = max(abs(a), abs(b))
    return 0.0 if d == 0 else d / m


def compare_metrics(ref_dir, got_dir, what, steps=None):
    a, b = step_lines(ref_dir), step_lines(got_dir)
    if steps is not None:
        a = {k: v for k, v in a.items() if k in steps}
        b = {k: v for k, v in b.items() if k in steps}
    assert sorted(a) == sorted(b), f"{what}: steps logged {sorted(b)}, expected {sorted(a)}"
    worst = 0.0
    for s in sorted(a):
        for key in ("loss", "grad_norm"):
            r = rel(a[s][key], b[s][key])
            worst = max(worst, r)
            assert r <= REL_TOL, (f"{what}: step {s} {key} {b[s][key]!r} vs {a[s][key]!r} "
                                  f"(relative difference {r:.3g} > {REL_TOL})")
        assert rel(a[s]["lr"], b[s]["lr"]) <= 1e-12, f"{what}: step {s} lr {b[s]['lr']} vs {a[s]['lr']}"
    return worst


def compare_adapters(ref_file, got_file, what):
    from safetensors import safe_open
    with safe_open(ref_file, "pt") as fa, safe_open(got_file, "pt") as fb:
        ka, kb = sorted(fa.keys()), sorted(fb.keys())
        assert ka == kb, f"{what}: tensor names differ: {sorted(set(ka) ^ set(kb))[:5]}"
        worst = 0.0
        for k in ka:
            ta, tb = fa.get_tensor(k), fb.get_tensor(k)
            assert ta.shape == tb.shape and ta.dtype == tb.dtype, \
                f"{what}: {k}: {tuple(tb.shape)} {tb.dtype} vs {tuple(ta.shape)} {ta.dtype}"
            ta, tb = ta.double(), tb.double()
            assert bool(ta.isfinite().all()) and bool(tb.isfinite().all()), f"{what}: {k} not finite"
            scale = float(ta.abs().max())
            diff = float((ta - tb).abs().max())
            r = 0.0 if diff == 0 else (math.inf if scale == 0 else diff / scale)
            worst = max(worst, r)
            assert r <= REL_TOL, (f"{what}: {k}: max|a-b| {diff:.3g} / max|a| {scale:.3g} = {r:.3g} "
                                  f"> {REL_TOL}")
    return worst


def check_manifest(ckpt):
    """Every file the checkpoint's manifest.json lists is there with its size and SHA-256."""
    with open(os.path.join(ckpt, "manifest.json")) as f:
        files = json.load(f)["files"]
    assert files, f"{ckpt}: empty manifest"
    for name, meta in files.items():
        p = os.path.join(ckpt, name)
        assert os.path.isfile(p), f"{ckpt}: {name} listed but missing"
        assert os.path.getsize(p) == meta["bytes"], f"{ckpt}: {name}: size differs from the manifest"
        assert sha(p) == meta["sha256"], f"{ckpt}: {name}: SHA-256 differs from the manifest"


def latest_checkpoint(run_dir):
    with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
        name = f.read().strip()
    m = re.fullmatch(r"checkpoint-(\d+)", name)
    assert m, f"checkpoints/latest reads {name!r}"
    return int(m.group(1)), os.path.join(run_dir, "checkpoints", name)


def snapshot(root):
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = sha(p)
    return out


def wait_for_step(proc, run_dir, step, timeout=RUN_TIMEOUT):
    """Waits until metrics.jsonl has a step line >= step; fails if the process ends first."""
    t0 = time.monotonic()
    while max_step_logged(run_dir) < step:
        if proc.p.poll() is not None:
            raise AssertionError(f"exited ({proc.p.returncode}) before step {step} was logged\n{proc.tail()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"step {step} not logged within {timeout}s\n{proc.tail()}")
        time.sleep(0.005)


def worker_ranks(launcher_pid):
    """{rank: pid} of the launcher's children, from RANK in each one's environment."""
    out = {}
    for c in children(launcher_pid):
        try:
            with open(f"/proc/{c}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = c
    return out


def assert_printed_once(out, what):
    """Only rank 0 prints progress: no stdout line comes twice (once per rank)."""
    seen, twice = set(), []
    for line in out.splitlines():
        if line.strip() and line in seen:
            twice.append(line)
        seen.add(line)
    assert not twice, f"{what}: printed more than once (by more than one rank): {twice[:3]}"


def error_lines(text):
    return [l for l in text.splitlines() if l.startswith("qlora: error:")]


# ----------------------------------------------------------------------------- reference runs

_refs = {}


def ref_short(world):
    """The comparison run: G_TOTAL/world micro-batches per rank, SHORT_STEPS steps, `world`
    processes (1: no launcher). Made once."""
    key = ("short", world)
    if key not in _refs:
        d = case_dir(f"ref_short_w{world}")
        cfg = write_config(d, G_TOTAL // world, SHORT_STEPS, 2)
        p = run(qlora_train(cfg, None if world == 1 else world), os.path.join(d, "train"))
        _refs[key] = (d, cfg, p)
    return _refs[key]


def ref_long2():
    """An uninterrupted 2-process run of LONG_STEPS steps (G_TOTAL/2 each). Made once."""
    key = ("long", 2)
    if key not in _refs:
        d = case_dir("ref_long_w2")
        cfg = write_config(d, G_TOTAL // 2, LONG_STEPS, 4)
        p = run(qlora_train(cfg, 2), os.path.join(d, "train"))
        _refs[key] = (d, cfg, p)
    return _refs[key]


# ----------------------------------------------------------------------------- cases

def case_a_launcher_2_and_3_vs_1():
    """1 process with G*W vs --nproc-per-node 2 and 3 with the same global batch."""
    d1, _, p1 = ref_short(1)
    assert "distributed:" not in p1.stdout + p1.stderr, "a single process printed a distributed line"
    for w in (2, 3):
        dw, _, pw = ref_short(w)
        out = pw.stdout + pw.stderr
        assert re.search(rf"^distributed: world size {w}\b", out, re.M), \
            f"{w} processes: no 'distributed: world size {w}' line\n{pw.tail()}"
        assert out.count("distributed: world size") == 1, f"{w} processes: the start line is not printed once"
        assert_printed_once(pw.stdout, f"{w} processes")
        steps_printed = len(re.findall(r"^step \d+/", pw.stdout, re.M))
        assert steps_printed == SHORT_STEPS, f"{w} processes: {steps_printed} progress lines for {SHORT_STEPS} steps"
        m = compare_metrics(os.path.join(d1, "run"), os.path.join(dw, "run"), f"{w} processes vs 1")
        t = compare_adapters(adapter(os.path.join(d1, "run"), SHORT_STEPS),
                             adapter(os.path.join(dw, "run"), SHORT_STEPS), f"{w} processes vs 1")
        print(f"   {w} processes vs 1: metrics worst relative difference {m:.3g}, adapter {t:.3g}")
        with open(os.path.join(dw, "run", "checkpoints", "checkpoint-%06d" % SHORT_STEPS,
                               "trainer_state.json")) as f:
            ws = json.load(f).get("world_size")
        assert ws == w, f"{w} processes: trainer_state.json world_size is {ws!r}"
    # Rank 0 alone writes: the 2-process run directory holds what a single run's does.
    names1 = sorted(os.listdir(os.path.join(d1, "run")))
    names2 = sorted(os.listdir(os.path.join(ref_short(2)[0], "run")))
    assert names1 == names2, f"run directory of 2 processes holds {names2}, of 1 process {names1}"


def case_b_torchrun():
    """torchrun (the venv's) starts the workers: the same run as --nproc-per-node 2."""
    d2 = ref_short(2)[0]
    d = case_dir("torchrun")
    cfg = write_config(d, G_TOTAL // 2, SHORT_STEPS, 2)
    cmd = [ARGS.torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--no-python", ARGS.qlora, "train", cfg]
    p = run(cmd, os.path.join(d, "train"))
    out = p.stdout + p.stderr
    assert re.search(r"^distributed: world size 2\b", out, re.M), f"no 'distributed: world size 2' line\n{p.tail()}"
    assert_printed_once(p.stdout, "torchrun")
    m = compare_metrics(os.path.join(d2, "run"), os.path.join(d, "run"), "torchrun vs --nproc-per-node 2")
    t = compare_adapters(adapter(os.path.join(d2, "run"), SHORT_STEPS), adapter(os.path.join(d, "run"), SHORT_STEPS),
                         "torchrun vs --nproc-per-node 2")
    print(f"   torchrun vs --nproc-per-node 2: metrics {m:.3g}, adapter {t:.3g}")


def case_c_two_nodes():
    """Two launchers side by side acting as two nodes of one process each."""
    d2 = ref_short(2)[0]
    d = case_dir("two_nodes")
    cfg = write_config(d, G_TOTAL // 2, SHORT_STEPS, 2)
    port = str(free_port())
    node = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    p0 = Proc(qlora_train(cfg, 1, node + ["--node-rank", "0"]), os.path.join(d, "node0"))
    p1 = Proc(qlora_train(cfg, 1, node + ["--node-rank", "1"]), os.path.join(d, "node1"))
    rc0, rc1 = p0.wait(), p1.wait()
    assert rc0 == 0 and rc1 == 0, f"node exits {rc0}, {rc1}\nnode 0:\n{p0.tail()}\nnode 1:\n{p1.tail()}"
    assert re.search(r"^distributed: world size 2\b", p0.stdout + p0.stderr, re.M), \
        f"node 0: no 'distributed: world size 2' line\n{p0.tail()}"
    assert not p1.stdout.strip(), f"node 1 (rank 1) printed on stdout:\n{p1.stdout[:2000]}"
    assert_printed_once(p0.stdout, "two nodes, node 0")
    m = compare_metrics(os.path.join(d2, "run"), os.path.join(d, "run"), "two nodes vs one")
    t = compare_adapters(adapter(os.path.join(d2, "run"), SHORT_STEPS), adapter(os.path.join(d, "run"), SHORT_STEPS),
                         "two nodes vs one")
    print(f"   two nodes vs --nproc-per-node 2: metrics {m:.3g}, adapter {t:.3g}")


def case_d_worker_killed():
    """SIGKILL one worker mid-run: the launcher and the other worker exit non-zero within
    ddp_timeout (+ margin), naming the rank; the newest checkpoint is intact; --resume completes
    the run, bit-identical to an uninterrupted one."""
    dref = ref_long2()[0]
    d = case_dir("killed")
    cfg = write_config(d, G_TOTAL // 2, LONG_STEPS, 4)
    run_dir = os.path.join(d, "run")
    p = Proc(qlora_train(cfg, 2), os.path.join(d, "train"))
    wait_for_step(p, run_dir, 6)  # the checkpoint of step 4 is published by now
    ranks = worker_ranks(p.pid)
    assert sorted(ranks) == [0, 1], f"launcher children by RANK: {ranks}"
    os.kill(ranks[1], signal.SIGKILL)
    t_kill = time.monotonic()
    rc = p.wait(timeout=DDP_TIMEOUT + EXIT_MARGIN)
    took = time.monotonic() - t_kill
    assert rc != 0, f"launcher exited 0 after a worker was killed\n{p.tail()}"
    deadline = time.monotonic() + 5
    while alive(ranks[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(ranks[0]), "rank 0 is still running after the launcher exited"
    errs = error_lines(p.stderr)
    assert errs, f"no 'qlora: error:' line\n{p.tail()}"
    assert any(re.search(r"\brank 1\b", l) for l in errs), f"no error line names rank 1:\n" + "\n".join(errs)
    assert any(re.search(r"\brank 0\b.*\brank 1\b", l) for l in errs), \
        f"rank 0 did not report that rank 1 stopped responding:\n" + "\n".join(errs)
    assert "Traceback" not in p.stderr and "terminate called" not in p.stderr, p.tail()
    stopped = max_step_logged(run_dir)
    assert stopped < LONG_STEPS, f"the run reached step {stopped} of {LONG_STEPS}: the kill came too late"
    step, ckpt = latest_checkpoint(run_dir)
    assert 4 <= step <= stopped, f"newest checkpoint is step {step}, the run stopped at {stopped}"
    check_manifest(ckpt)
    print(f"   killed rank 1 (pid {ranks[1]}) at step ~{stopped}: launcher exit {rc} after {took:.1f}s "
          f"(ddp_timeout {DDP_TIMEOUT}); newest checkpoint {step} intact; {errs[0]!r}")
    r = run(qlora_train(cfg, 2, ["--resume"]), os.path.join(d, "resume"))
    assert re.search(rf"resumed from .*checkpoint-{step:06d}", r.stdout + r.stderr), \
        f"resume did not start from checkpoint {step}\n{r.tail()}"
    check_manifest(checkpoint(run_dir, LONG_STEPS))
    assert sha(adapter(run_dir, LONG_STEPS)) == sha(adapter(os.path.join(dref, "run"), LONG_STEPS)), \
        "the resumed run's final adapter differs from the uninterrupted run's"


def case_e_sigterm():
    """SIGTERM to the launcher: exit 0 with a checkpoint at the stop step, the stop notice and
    progress printed once; the 'resume with:' command it prints (the launcher's options included)
    completes the run, whose final adapter equals an uninterrupted 2-process run's bit for bit."""
    dref = ref_long2()[0]
    d = case_dir("sigterm")
    cfg = write_config(d, G_TOTAL // 2, LONG_STEPS, 4)
    run_dir = os.path.join(d, "run")
    p = Proc(qlora_train(cfg, 2), os.path.join(d, "train"))
    wait_for_step(p, run_dir, 2)
    ranks = worker_ranks(p.pid)
    p.p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=DDP_TIMEOUT + EXIT_MARGIN)
    assert rc == 0, f"launcher exit {rc} after SIGTERM\n{p.tail()}"
    for r_, pid in ranks.items():
        assert not alive(pid), f"rank {r_} (pid {pid}) still running after the launcher exited"
    stopped = max_step_logged(run_dir)
    assert stopped < LONG_STEPS, f"the run reached step {stopped} of {LONG_STEPS} before SIGTERM took effect"
    step, ckpt = latest_checkpoint(run_dir)
    assert step == stopped, f"newest checkpoint is step {step}, the last step logged {stopped}"
    check_manifest(ckpt)
    assert not error_lines(p.stderr), p.tail()
    assert_printed_once(p.stdout, "SIGTERM")
    hint = re.search(r"^resume with: (.*)$", p.stdout + p.stderr, re.M)
    assert hint, f"SIGTERM: no 'resume with:' line\n{p.tail()}"
    resume = shlex.split(hint.group(1))
    assert resume[:2] == ["qlora", "train"] and "--resume" in resume and "--nproc-per-node" in resume, \
        f"SIGTERM: the resume command does not restart the launcher: {hint.group(1)!r}"
    print(f"   SIGTERM: exit 0, checkpoint at step {step}; {hint.group(0)!r}")
    run([ARGS.qlora] + resume[1:], os.path.join(d, "resume"))  # the command it printed
    assert sha(adapter(run_dir, LONG_STEPS)) == sha(adapter(os.path.join(dref, "run"), LONG_STEPS)), \
        "the resumed run's final adapter differs from the uninterrupted run's"
    compare_metrics(os.path.join(dref, "run"), run_dir, "resumed after SIGTERM vs uninterrupted")
    notices = len(re.findall(r"stop requested", p.stdout + p.stderr))
    assert notices <= 1, f"SIGTERM: the stop notice is printed {notices} times (once per rank)\n{p.tail()}"


def case_f_resume_other_world_size():
    """A 2-process run stopped after step 2 resumes with 1 process (G doubled, global batch kept)
    and matches the uninterrupted 2-process run; 4 processes (6 % 4 != 0) are refused."""
    d2 = ref_short(2)[0]
    d = case_dir("reshape")
    cfg = write_config(d, G_TOTAL // 2, SHORT_STEPS, 0)
    run_dir = os.path.join(d, "run")
    run(qlora_train(cfg, 2, ["--test-stop-after-step", "2"]), os.path.join(d, "stop"))
    step, ckpt = latest_checkpoint(run_dir)
    assert step == 2, f"stopped run's newest checkpoint is step {step}"
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        assert json.load(f).get("world_size") == 2, "trainer_state.json does not record world_size 2"

    before = snapshot(d)
    bad = run(qlora_train(cfg, 4, ["--resume"]), os.path.join(d, "resume4"), expect_rc=2)
    errs = error_lines(bad.stderr)
    assert len(errs) == 1, f"4 processes: expected one 'qlora: error:' line, got {len(errs)}\n{bad.tail()}"
    assert re.search(r"\b4\b", errs[0]) and re.search(r"\b(6|3)\b", errs[0]), \
        f"4 processes: the error gives neither the new world size and the checkpoint's batch: {errs[0]!r}"
    after = snapshot(d)
    changed = [k for k in set(before) | set(after)
               if before.get(k) != after.get(k) and not k.startswith("resume4.")]
    assert not changed, f"the refused resume changed {sorted(changed)}"
    print(f"   4 processes refused: {errs[0]!r}")

    r = run(qlora_train(cfg, None, ["--resume"]), os.path.join(d, "resume1"))
    out = r.stdout + r.stderr
    line = next((l for l in out.splitlines() if re.search(r"global batch", l, re.I)), None)
    assert line, f"1 process: no line about the global batch\n{r.tail()}"
    assert re.search(rf"\b{G_TOTAL}\b", line), f"1 process: the line does not give the new gradient_accumulation_steps {G_TOTAL}: {line!r}"
    print(f"   1 process resumes: {line!r}")
    m = compare_metrics(os.path.join(d2, "run"), run_dir, "resumed with 1 process vs 2 processes")
    t = compare_adapters(adapter(os.path.join(d2, "run"), SHORT_STEPS), adapter(run_dir, SHORT_STEPS),
                         "resumed with 1 process vs 2 processes")
    print(f"   resumed with 1 process vs 2 processes: metrics {m:.3g}, adapter {t:.3g}")


def case_g_worker_hangs():
    """SIGSTOP one worker mid-run (a hang: its sockets stay open): the other worker exits within
    ddp_timeout (+ margin) with an error line naming the rank; the launcher ends the hung one and
    exits non-zero; the newest checkpoint is intact."""
    t_out = HANG_TIMEOUT
    d = case_dir("hang")
    cfg = write_config(d, G_TOTAL // 2, LONG_STEPS, 4, ddp_timeout=t_out)
    run_dir = os.path.join(d, "run")
    p = Proc(qlora_train(cfg, 2), os.path.join(d, "train"))
    wait_for_step(p, run_dir, 6)  # the checkpoint of step 4 is published by now
    ranks = worker_ranks(p.pid)
    assert sorted(ranks) == [0, 1], f"launcher children by RANK: {ranks}"
    os.kill(ranks[1], signal.SIGSTOP)
    t_stop = time.monotonic()
    rank0_gone = None
    while p.p.poll() is None and time.monotonic() - t_stop < 2 * t_out + EXIT_MARGIN + LAUNCHER_MARGIN:
        if rank0_gone is None and not alive(ranks[0]):
            rank0_gone = time.monotonic() - t_stop
        time.sleep(0.05)
    took = time.monotonic() - t_stop
    if p.p.poll() is None:
        kill_tree(p.p)
    rc = p.wait(timeout=10)
    assert rank0_gone is not None, f"rank 0 still running {took:.0f}s after rank 1 hung\n{p.tail()}"
    assert rank0_gone <= t_out + EXIT_MARGIN, \
        f"rank 0 exited {rank0_gone:.1f}s after rank 1 hung (ddp_timeout {t_out})\n{p.tail()}"
    assert took <= rank0_gone + t_out + LAUNCHER_MARGIN, \
        (f"the launcher exited {took:.0f}s after rank 1 hung, {took - rank0_gone:.0f}s after rank 0 exited "
         f"(ddp_timeout {t_out})\n{p.tail()}")
    assert rc != 0, f"launcher exited 0 after a worker hung\n{p.tail()}"
    assert not alive(ranks[1]), "the hung rank 1 was left behind"
    errs = error_lines(p.stderr)
    assert any(re.search(r"\brank 1\b", l) for l in errs), f"no error line names rank 1:\n{p.tail()}"
    step, ckpt = latest_checkpoint(run_dir)
    check_manifest(ckpt)
    print(f"   rank 1 stopped (SIGSTOP), ddp_timeout {t_out}s: rank 0 gone after {rank0_gone:.1f}s, launcher "
          f"exit {rc} after {took:.1f}s; {errs[0]!r}")


def case_h_launcher_usage():
    """Launcher options out of range: exit 2, one error line naming the option, nothing written."""
    d = case_dir("usage")
    cfg = write_config(d, G_TOTAL // 2, SHORT_STEPS, 2)
    for extra, option in ((["--nproc-per-node", "0"], "--nproc-per-node"),
                          (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2",
                            "--master-addr", "127.0.0.1", "--master-port", str(free_port())], "--node-rank")):
        p = run([ARGS.qlora, "train", cfg] + extra, os.path.join(d, "usage"), expect_rc=2, timeout=60)
        errs = error_lines(p.stderr)
        assert len(errs) == 1 and option in errs[0], f"{' '.join(extra)}: expected one error naming {option}\n{p.tail()}"
        assert not os.path.exists(os.path.join(d, "run")), f"{' '.join(extra)}: the run directory was created"
        print(f"   {' '.join(extra)}: {errs[0]!r}")


CASES = [case_a_launcher_2_and_3_vs_1, case_b_torchrun, case_c_two_nodes, case_d_worker_killed,
         case_e_sigterm, case_f_resume_other_world_size, case_g_worker_hangs, case_h_launcher_usage]


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlora", required=True)
    ap.add_argument("--torchrun", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("-k", default="", help="run only the cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true")
    ARGS = ap.parse_args()
    ARGS.qlora = os.path.abspath(ARGS.qlora)
    ARGS.work = os.path.abspath(ARGS.work)
    shutil.rmtree(ARGS.work, ignore_errors=True)
    os.makedirs(ARGS.work)
    signal.signal(signal.SIGTERM, lambda *_: (kill_all(), sys.exit(143)))

    failed, passed = [], 0
    t_all = time.monotonic()
    for case in CASES:
        if ARGS.k not in case.__name__:
            continue
        t0 = time.monotonic()
        print(f"{case.__name__}: {case.__doc__.splitlines()[0]}", flush=True)
        try:
            case()
            passed += 1
            print(f"   ok ({time.monotonic() - t0:.1f}s)", flush=True)
        except Exception:
            failed.append(case.__name__)
            print(f"   FAILED ({time.monotonic() - t0:.1f}s)\n" + traceback.format_exc(), flush=True)
        finally:
            kill_all()
    print(f"{time.monotonic() - t_all:.0f}s in all")
    print(f"{passed} passed, {len(failed)} failed")
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
