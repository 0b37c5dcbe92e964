"""A TensorBoard that is already running across a resume: TensorBoard's EventAccumulator reads
LOGDIR, the command runs (a resume), the same accumulator reads again (as a running TensorBoard
reloads: it does not go back to files it has read). Each scalar tag's steps must then strictly
increase, and train/loss must hold exactly the steps of RUN_DIR/metrics.jsonl.

usage: tensorboard_live.py LOGDIR RUN_DIR -- COMMAND...
"""
import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator

i = sys.argv.index("--")
logdir, run_dir = sys.argv[1:i]
acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
before = [e.step for e in acc.Scalars("train/loss")]
rc = subprocess.call(sys.argv[i + 1:])
if rc != 0:
    sys.exit("tensorboard_live: the command exited %d" % rc)
acc.Reload()
for tag in acc.Tags()["scalars"]:
    steps = [e.step for e in acc.Scalars(tag)]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        sys.exit("tensorboard_live: %s steps %s (duplicate or out of order)" % (tag, steps))
with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
    want = [j["step"] for j in map(json.loads, fh) if "loss" in j and "event" not in j]
got = [e.step for e in acc.Scalars("train/loss")]
if got != want:
    sys.exit("tensorboard_live: train/loss steps %s, metrics.jsonl %s" % (got, want))
print("ok: train/loss steps %s before, %s after" % (before, got))
