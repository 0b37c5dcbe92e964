#!/usr/bin/env python3
"""The harder task of bench_lora_init: the demo's base model, a harder chat dataset made the way
the demo's is (data/demo/recipe/make_data.py: its Rng, dates and spellings, held-out dates).

The demo task converts ISO <-> words, which the demo model nearly knows: every run reaches an
eval loss near 0 within a few dozen steps and the initialisations barely separate. Here each
example is one of
  - a conversion between any two of the four spellings the pretraining corpus shows (ISO
    `2023-04-15`, words `15 April 2023`, American `April 15, 2023`, slashed `15/04/2023`),
    twelve directions instead of two;
  - the day before or after a date, in the same spelling: date arithmetic, which the corpus
    never shows (month and year ends included), so it is learnt only in part in a short run.
Eval dates (and their neighbours) appear nowhere in train.jsonl. Deterministic, standard library
only.

    lora_init_task.py --out DIR      writes DIR/train.jsonl, DIR/eval.jsonl
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo", "recipe"))
import make_data as md  # noqa: E402

# Target spelling of a conversion: how the instruction names it.
TARGETS = [(md.iso, ["an ISO date", "a YYYY-MM-DD date"]),
           (md.words, ["words", "day, month name and year"]),
           (md.american, ["an American date", "month name, day and year"]),
           (md.slashed, ["a DD/MM/YYYY date", "a date with slashes"])]
CONVERT = ["Write {x} as {t}.", "Convert {x} to {t}.", "Rewrite {x} as {t}."]
AFTER = ["What is the day after {x}?", "Which date follows {x}?", "Give the date one day after {x}."]
BEFORE = ["What is the day before {x}?", "Which date comes just before {x}?",
          "Give the date one day before {x}."]

ONE_DAY = datetime.timedelta(days=1)
FIRST = datetime.date(md.FIRST_YEAR, 1, 2)  # neighbours stay inside the corpus's range
LAST = datetime.date(md.LAST_YEAR, 12, 30)


def example(rng, d):
    kind = rng.below(4)
    if kind < 2:  # a conversion between two different spellings
        src = rng.below(4)
        dst = (src + 1 + rng.below(3)) % 4
        fmt, names = TARGETS[dst]
        x = md.FORMATS[src](d)
        return md.chat(rng.pick(CONVERT).format(x=x, t=rng.pick(names)), fmt(d))
    f = rng.pick(md.FORMATS)
    if kind == 2:
        return md.chat(rng.pick(AFTER).format(x=f(d)), f(d + ONE_DAY))
    return md.chat(rng.pick(BEFORE).format(x=f(d)), f(d - ONE_DAY))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=20240416)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--eval", type=int, default=200)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    rng = md.Rng(args.seed)
    held = []
    while len(held) < args.eval:
        d = rng.date()
        if FIRST <= d <= LAST and d not in held:
            held.append(d)
    # A held-out date's neighbours are answers of its eval examples: keep them out of training too.
    banned = {d + k * ONE_DAY for d in held for k in (-1, 0, 1)}

    def fresh(r):
        while True:
            d = r.date()
            if FIRST <= d <= LAST and all(d + k * ONE_DAY not in banned for k in (-1, 0, 1)):
                return d

    rt = md.Rng(args.seed + 1)
    train = [example(rt, fresh(rt)) for _ in range(args.train)]
    re = md.Rng(args.seed + 2)
    evals = [example(re, d) for d in held]
    dump = lambda ex: json.dumps(ex, ensure_ascii=False)
    md.write_lines(os.path.join(args.out, "train.jsonl"), map(dump, train))
    md.write_lines(os.path.join(args.out, "eval.jsonl"), map(dump, evals))


if __name__ == "__main__":
    main()
