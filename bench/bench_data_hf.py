"""The Hugging Face side of bench_data: a Llama 3 style tokenizer, synthetic chat and alpaca
datasets, and how long transformers takes to tokenize and mask them on one thread.

    bench_data_hf.py OUT_DIR   (OUT_DIR holds template.jinja and tagged.jinja, written by bench_data)

Chat: apply_chat_template(tagged twin, tokenize=True, return_assistant_tokens_mask=True) per
record (what TRL does for assistant-only loss). Alpaca: tokenizer(prompt + output,
return_offsets_mapping=True) per record, then the mask from the offsets.
Prints one JSON line: {"tokenizer", "chat", "alpaca": {"path", "records", "tokens", "hf_s"}}.
"""
import json
import os
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "tests", "python"))
import tokcorpus  # noqa: E402
import tokenizer_fixtures  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging  # noqa: E402

logging.set_verbosity_error()

ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n{}"
                     "\n\n### Input:\n{}\n\n### Response:\n")


def main():
    out = os.path.abspath(sys.argv[1])
    tagged = open(os.path.join(out, "tagged.jinja"), encoding="utf-8").read()
    lines = tokcorpus.lines(7, 40000)
    tok_dir = tokenizer_fixtures.make_llama3(out, lines[:3000])["llama3"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(1)
    text = lambda n: " ".join(rng.choice(lines) for _ in range(n))  # noqa: E731

    chat_path = os.path.join(out, "chat.jsonl")
    chats = []
    with open(chat_path, "w", encoding="utf-8") as f:
        for _ in range(2000):
            msgs = [{"role": "system", "content": text(1)}]
            for _ in range(3):
                msgs += [{"role": "user", "content": text(2)}, {"role": "assistant", "content": text(5)}]
            chats.append(msgs)
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    alpaca_path = os.path.join(out, "alpaca.jsonl")
    alpacas = []
    with open(alpaca_path, "w", encoding="utf-8") as f:
        for _ in range(10000):
            r = {"instruction": text(1), "input": text(1), "output": text(4)}
            alpacas.append(r)
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    t0 = time.perf_counter()
    chat_tokens = 0
    for msgs in chats:
        enc = tok.apply_chat_template(msgs, tokenize=True, chat_template=tagged, return_dict=True,
                                      return_assistant_tokens_mask=True)
        chat_tokens += len(enc["input_ids"])
    chat_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    alpaca_tokens = 0
    for r in alpacas:
        prompt = ALPACA_WITH_INPUT.format(r["instruction"], r["input"])
        enc = tok(prompt + r["output"], return_offsets_mapping=True)
        mask = [e > len(prompt) for s, e in enc["offset_mapping"]]
        alpaca_tokens += len(enc["input_ids"]) + 0 * len(mask)
    alpaca_s = time.perf_counter() - t0

    print(json.dumps({"tokenizer": tok_dir,
                      "chat": {"path": chat_path, "records": len(chats), "tokens": chat_tokens, "hf_s": chat_s},
                      "alpaca": {"path": alpaca_path, "records": len(alpacas), "tokens": alpaca_tokens,
                                 "hf_s": alpaca_s}}))


if __name__ == "__main__":
    main()
