#!/usr/bin/env python3
"""Generates the embedded demo's text: the pretraining corpus and the fine-tuning datasets.

The demo's skill is dates. The pretraining corpus (plain sentences, one document per line) shows
dates in several spellings -- ISO `2023-04-15`, `15 April 2023`, `April 15, 2023`, `15/04/2023` --
often two spellings of the same day side by side, plus sentences about the months. It never
contains an instruction or a dialogue. The fine-tuning task is an instruction in the chat format
(`{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`) the base model never saw:

    user:      Convert the date 2023-04-15 to words.      assistant: 15 April 2023
    user:      Write 15 April 2023 as an ISO date.        assistant: 2023-04-15

Held-out dates (eval.jsonl) appear nowhere else: not in train.jsonl, not in the corpus.

Deterministic: the only source of randomness is random.Random(seed).random(), whose sequence
Python guarantees across versions; every choice is derived from it here. Standard library only.

    make_data.py --out DIR      writes DIR/corpus.txt, DIR/train.jsonl, DIR/eval.jsonl
"""
import argparse
import datetime
import json
import os

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth"]

FIRST_YEAR, LAST_YEAR = 1900, 2099

# Small vocabulary of things that happen on dates, so sentences vary around the dates.
SUBJECTS = ["The meeting", "The concert", "The report", "The letter", "The market", "The race",
            "Our trip", "The festival", "The exam", "The launch", "The wedding", "The storm",
            "The election", "The game", "The lecture", "The party", "The visit", "The review",
            "The harvest", "The audit", "The release", "The ceremony", "The flight", "The sale"]
VERBS = ["took place on", "happened on", "was held on", "is planned for", "was moved to",
         "ended on", "began on", "is set for", "was signed on", "was on"]
PEOPLE = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas",
          "Kara", "Leo", "Mila", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor"]
ACTIONS = ["was born on", "moved to the city on", "started work on", "wrote to us on",
           "arrived on", "left on", "called on", "finished the book on", "planted the tree on",
           "visited the museum on"]
TAILS = ["", "", "", " It rained all day.", " Everyone was there.", " Nobody forgot it.",
         " It was a quiet day.", " The sun was out.", " It was a long day.",
         " Tickets sold out.", " The town was busy."]

# The instructions of the fine-tuning task (never in the corpus).
TO_WORDS = ["Convert the date {iso} to words.", "Write the date {iso} in words.",
            "Spell out the date {iso}."]
TO_ISO = ["Write {words} as an ISO date.", "Convert {words} to the format YYYY-MM-DD.",
          "Give the ISO form of {words}."]


class Rng:
    """Every choice comes from random.Random.random(), the one stable sequence."""

    def __init__(self, seed):
        import random
        self._r = random.Random(seed)

    def below(self, n):  # uniform integer in [0, n)
        return min(int(self._r.random() * n), n - 1)

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def chance(self, p):
        return self._r.random() < p

    def date(self):
        first = datetime.date(FIRST_YEAR, 1, 1).toordinal()
        last = datetime.date(LAST_YEAR, 12, 31).toordinal()
        return datetime.date.fromordinal(first + self.below(last - first + 1))


def iso(d):
    return d.isoformat()


def words(d):  # "15 April 2023": the day without a leading zero
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def american(d):  # "April 15, 2023"
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def slashed(d):  # "15/04/2023"
    return f"{d.day:02d}/{d.month:02d}/{d.year}"


FORMATS = [iso, words, american, slashed]


def corpus_line(rng, d):
    """One pretraining document about the date d. Mostly several spellings of the same day side
    by side (half of those ISO next to words, the pair the task asks for), so that converting a
    date is what predicting the text needs; some month facts and single-date sentences."""
    kind = rng.below(10)
    if kind == 0:  # a month fact
        m = rng.below(12)
        return rng.pick([
            f"{MONTHS[m]} is the {ORDINALS[m]} month of the year.",
            f"The {ORDINALS[m]} month of the year is {MONTHS[m]}.",
            f"In dates, month {m + 1:02d} is {MONTHS[m]}.",
            f"{MONTHS[m]} is month number {m + 1}.",
        ])
    if kind == 1:  # one spelling only
        spelling = rng.pick(FORMATS)(d)
        if rng.chance(0.5):
            return f"{rng.pick(SUBJECTS)} {rng.pick(VERBS)} {spelling}.{rng.pick(TAILS)}"
        return f"{rng.pick(PEOPLE)} {rng.pick(ACTIONS)} {spelling}.{rng.pick(TAILS)}"
    if kind == 2:  # all four spellings, in a random order
        order = [f(d) for f in FORMATS]
        for i in range(len(order) - 1, 0, -1):
            j = rng.below(i + 1)
            order[i], order[j] = order[j], order[i]
        return f"{order[0]}, {order[1]}, {order[2]} and {order[3]} are the same day."
    # two spellings of the same day (kinds 3..9)
    if rng.chance(0.5):
        x, y = iso(d), words(d)
    else:
        x, y = rng.pick(FORMATS)(d), rng.pick(FORMATS)(d)
        if x == y:
            x, y = iso(d), words(d)
    if rng.chance(0.5):
        x, y = y, x
    who = rng.pick(PEOPLE)
    return rng.pick([
        f"{rng.pick(SUBJECTS)} {rng.pick(VERBS)} {x}, that is {y}.{rng.pick(TAILS)}",
        f"{who} {rng.pick(ACTIONS)} {x} ({y}).{rng.pick(TAILS)}",
        f"The date {x} is also written {y}.",
        f"{x} and {y} are the same day.",
        f"In the records, {x} appears as {y}.",
        f"{who} wrote {x} where the form asked for {y}.",
        f"{x} is {y}.",
        f"{x}: {y}.",
    ])


def chat(user, assistant):
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def task_example(rng, d):
    if rng.chance(0.5):
        return chat(rng.pick(TO_WORDS).format(iso=iso(d)), words(d))
    return chat(rng.pick(TO_ISO).format(words=words(d)), iso(d))


def write_lines(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=20240415)
    ap.add_argument("--corpus-lines", type=int, default=120000)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--only", choices=["all", "corpus", "datasets"], default="all")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    # Held-out dates first, from their own stream, so changing corpus size leaves eval intact.
    rng = Rng(args.seed)
    held = []
    while len(held) < args.eval:
        d = rng.date()
        if d not in held:
            held.append(d)
    held_set = set(held)

    def fresh(r):
        while True:
            d = r.date()
            if d not in held_set:
                return d

    if args.only in ("all", "datasets"):
        rt = Rng(args.seed + 1)
        train = [task_example(rt, fresh(rt)) for _ in range(args.train)]
        re = Rng(args.seed + 2)
        evals = [task_example(re, d) for d in held]
        dump = lambda ex: json.dumps(ex, ensure_ascii=False)
        write_lines(os.path.join(args.out, "train.jsonl"), map(dump, train))
        write_lines(os.path.join(args.out, "eval.jsonl"), map(dump, evals))
    if args.only in ("all", "corpus"):
        rc = Rng(args.seed + 3)
        write_lines(os.path.join(args.out, "corpus.txt"),
                    (corpus_line(rc, fresh(rc)) for _ in range(args.corpus_lines)))


if __name__ == "__main__":
    main()
