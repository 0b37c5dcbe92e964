"""Reads a run's TensorBoard logs with TensorBoard's own readers and checks them against the
run's metrics.jsonl and config.yaml.

usage: tensorboard_check.py LOGDIR RUN_DIR [--dump FILE]

  - every file in LOGDIR is an event file named events.out.tfevents.<unix time>.<host>..., and its
    first event is file_version "brain.Event:2" (event_file_loader, file by file, in name order);
  - read raw in that order, each scalar tag's steps strictly increase (no duplicate, none out of
    order), and the only text tag is "config";
  - EventAccumulator (what TensorBoard's UI is fed from): the scalar tags and steps are exactly the
    numbers of metrics.jsonl's step and eval lines, named in HF Trainer's style, each value the
    float32 of the line's number; the last config text is config.yaml in a yaml code block, under
    the text plugin.
--dump FILE writes {tag: [[step, value], ...]} (from EventAccumulator) as JSON.
Exits non-zero with the first difference.
"""
import json
import os
import re
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, event_file_loader

# metrics.jsonl's step fields and their tags; an eval's eval_X is eval/X.
STEP_TAGS = {
    "loss": "train/loss",
    "lr": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "tokens": "train/tokens",
    "tokens_per_s": "train/tokens_per_second",
    "elapsed_s": "train/elapsed_seconds",
    "memory_bytes": "train/memory_bytes",
    "skipped_steps": "train/skipped_steps",
    "aux_loss": "train/aux_loss",
}


def fail(msg):
    sys.exit("tensorboard_check: " + msg)


def tag_of(key):
    if key.startswith("eval_"):
        return "eval/" + key[5:]
    if key not in STEP_TAGS:
        fail("metrics.jsonl field %r has no expected TensorBoard tag" % key)
    return STEP_TAGS[key]


def main():
    args = sys.argv[1:]
    dump = None
    if "--dump" in args:
        i = args.index("--dump")
        dump = args[i + 1]
        del args[i:i + 2]
    logdir, run_dir = args

    files = sorted(os.listdir(logdir))
    if not files:
        fail("no files in " + logdir)
    raw_steps = {}
    for name in files:
        if not re.fullmatch(r"events\.out\.tfevents\.\d{10}\.[^/]+", name):
            fail("unexpected file name " + name)
        events = list(event_file_loader.EventFileLoader(os.path.join(logdir, name)).Load())
        if not events or events[0].file_version != "brain.Event:2":
            fail(name + ": the first event is not file_version brain.Event:2")
        for ev in events[1:]:
            for v in ev.summary.value:
                if v.HasField("metadata") and v.metadata.plugin_data.plugin_name == "text":
                    if v.tag != "config":
                        fail("unexpected text tag " + v.tag)
                    continue
                steps = raw_steps.setdefault(v.tag, [])
                if steps and ev.step <= steps[-1]:
                    fail("%s: %s at step %d after step %d (duplicate or out of order)" % (name, v.tag, ev.step,
                                                                                         steps[-1]))
                steps.append(ev.step)

    expected = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        for line in fh:
            j = json.loads(line)
            if "event" in j:
                continue
            for k, v in j.items():
                if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                expected.setdefault(tag_of(k), []).append((j["step"], float(np.float32(v))))

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0,
                                                                    event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    if sorted(tags["scalars"]) != sorted(expected):
        fail("scalar tags %s, metrics.jsonl has %s" % (sorted(tags["scalars"]), sorted(expected)))
    got = {}
    for tag in tags["scalars"]:
        got[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        if got[tag] != expected[tag]:
            fail("%s: TensorBoard %s, metrics.jsonl %s" % (tag, got[tag], expected[tag]))
        if [s for s, _ in got[tag]] != raw_steps.get(tag):
            fail("%s: steps differ between the raw files and EventAccumulator" % tag)

    if "config" not in tags["tensors"]:
        fail("no config text")
    if acc.SummaryMetadata("config").plugin_data.plugin_name != "text":
        fail("config is not under the text plugin")
    texts = acc.Tensors("config")
    text = texts[-1].tensor_proto.string_val[0].decode()
    with open(os.path.join(run_dir, "config.yaml")) as fh:
        want = "```yaml\n" + fh.read() + "```\n"
    if text != want:
        fail("config text differs from config.yaml:\n" + text)
    if [t.step for t in texts] != sorted(set(t.step for t in texts)):
        fail("config texts at steps %s" % [t.step for t in texts])

    if dump:
        with open(dump, "w") as fh:
            json.dump({"scalars": got, "config_steps": [t.step for t in texts], "files": files}, fh)
    print("ok: %d files, %d scalar tags, %d events" % (len(files), len(got), sum(len(v) for v in got.values())))


main()
