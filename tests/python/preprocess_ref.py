"""Checks `qlora preprocess --json` against transformers' tokenizer on prompt/completion-style data.

usage: preprocess_ref.py MODEL_DIR DATA.jsonl TYPE SEQUENCE_LEN PREPROCESS.json

TYPE is alpaca or prompt_completion (ASCII data: byte and character offsets agree). For every
record the expected sample is tokenizer(prompt + completion) (BOS from the tokenizer's
post-processor) followed by EOS; a token is supervised when its offsets overlap the completion
(transformers' offset mapping), and the EOS is; a sample's first token never is. Samples longer
than SEQUENCE_LEN are cut to it; those left without a supervised token are dropped. Checked: the
counts (truncated, dropped, samples, tokens, supervised tokens, supervised EOS), the packing
efficiency without packing, the length percentiles before truncation (numpy's inverted_cdf, the
nearest rank), and each shown sample: its ids are one record's, its supervised runs are exactly
that record's supervised tokens, and each run's text is the tokenizer's decode of its ids.
Prints "ok" or the first difference (exit 1).
"""
import json, sys

import numpy as np
import transformers as tf

model, data, typ, seq_len, ours_path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
tok = tf.AutoTokenizer.from_pretrained(model)
ours = json.load(open(ours_path))
eos = tok.eos_token_id

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{i}\n\n### Response:\n")
ALPACA_IN = ("Below is an instruction that describes a task, paired with an input that provides further context. "
             "Write a response that appropriately completes the request.\n\n### Instruction:\n{i}\n\n### Input:\n"
             "{x}\n\n### Response:\n")


def fail(msg):
    print(msg)
    sys.exit(1)


records = [json.loads(l) for l in open(data) if l.strip()]
expected = []  # (ids after truncation, supervised mask after truncation, length before truncation)
truncated = dropped = 0
for r in records:
    if typ == "alpaca":
        prompt = (ALPACA_IN if r.get("input") else ALPACA).format(i=r["instruction"], x=r.get("input", ""))
        completion = r["output"]
    else:
        prompt, completion = r["prompt"], r["completion"]
    text = prompt + completion
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["input_ids"] + [eos]
    b, e = len(prompt), len(text)
    sup = [s < e and t > b for (s, t) in enc["offset_mapping"]] + [True]
    sup[0] = False
    full = len(ids)
    if full > seq_len:
        truncated += 1
        ids, sup = ids[:seq_len], sup[:seq_len]
    if not any(sup):
        dropped += 1
        continue
    expected.append((ids, sup, full))

checks = {
    "truncated": (ours["truncated"], truncated),
    "dropped": (ours["dropped_no_supervised"], dropped),
    "samples": (ours["train"]["samples"], len(expected)),
    "tokens": (ours["train"]["tokens"], sum(len(i) for i, _, _ in expected)),
    "supervised_tokens": (ours["train"]["supervised_tokens"], sum(sum(s) for _, s, _ in expected)),
    "supervised_eos": (ours["train"]["supervised_eos"],
                       sum(1 for i, s, _ in expected for k in range(len(i)) if s[k] and i[k] == eos)),
}
if not ours["sample_packing"]:
    checks["packing_efficiency"] = (round(ours["train"]["packing_efficiency"], 9),
                                    round(checks["tokens"][1] / max(1, len(expected) * seq_len), 9))
lengths = np.array([f for _, _, f in expected] or [0])
for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
    want = int(lengths.min()) if q == 0 else int(np.percentile(lengths, q, method="inverted_cdf"))
    checks["length " + name] = (ours["train"]["length"][name], want)
for k, (got, want) in checks.items():
    if got != want:
        fail(f"{k}: qlora {got}, transformers {want}")

by_ids = {tuple(i): s for i, s, _ in expected}
for n, sample in enumerate(ours.get("samples", [])):
    ids, sup = [], []
    for run in sample["runs"]:
        ids += run["ids"]
        sup += [run["supervised"]] * len(run["ids"])
        want = tok.decode(run["ids"], skip_special_tokens=False)
        if run["text"] != want:
            fail(f"sample {n}: run text {run['text']!r}, transformers decodes {want!r}")
    if tuple(ids) not in by_ids:
        fail(f"sample {n}: ids {ids} are no record's")
    if by_ids[tuple(ids)] != sup:
        fail(f"sample {n}: supervised {sup}, transformers' offsets give {by_ids[tuple(ids)]}")
print("ok", len(expected), "samples,", len(ours.get("samples", [])), "shown")
