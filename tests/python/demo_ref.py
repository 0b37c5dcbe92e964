"""Reference side of tests/demo: transformers judges the committed demo model and tokenizer.

  check MODEL_DIR REQUEST.json OUT.json
      REQUEST: {"lines": [str], "input_ids": [[int]], "labels": [[int]]}
      OUT:     {"ids": [[int]] (tokenizer(line)["input_ids"] per line),
                "special": {bos/eos/pad/unk ids}, "vocab_size": int,
                "loss": LlamaForCausalLM(fp32) loss on input_ids/labels,
                "architectures", "model_type", "dtype" (of the stored weights)}
  accuracy MODEL_DIR EVAL.jsonl OUT.json
      Greedy generation (transformers generate) after the chat template's generation prompt;
      OUT: {"accuracy": exact-match rate of the answer followed by EOS, "n": int,
            "examples": [first few {prompt, expected, got}]}
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def check(model_dir, req_path, out_path):
    req = json.load(open(req_path))
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = {
        "ids": [tok(line)["input_ids"] for line in req["lines"]],
        "special": {"bos": tok.bos_token_id, "eos": tok.eos_token_id,
                    "pad": tok.pad_token_id, "unk": tok.unk_token_id},
        "vocab_size": len(tok),
    }
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    stored = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    out["dtype"] = str(next(stored.parameters()).dtype)
    out["architectures"] = model.config.architectures
    out["model_type"] = model.config.model_type
    ids = torch.tensor(req["input_ids"])
    labels = torch.tensor(req["labels"])
    with torch.no_grad():
        out["loss"] = model(input_ids=ids, labels=labels).loss.item()
    json.dump(out, open(out_path, "w"))


def accuracy(model_dir, eval_path, out_path):
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"  # batched generation: prompts end where generation starts
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    rows = [json.loads(line) for line in open(eval_path)]
    right, examples = 0, []
    for b in range(0, len(rows), 50):
        batch = rows[b:b + 50]
        prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                   for r in batch]
        enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
        longest = max(len(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"])
                      for r in batch)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=longest + 4, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for r, prompt, g in zip(batch, prompts, gen[:, enc["input_ids"].shape[1]:].tolist()):
            expected = r["messages"][-1]["content"]
            new = g[:g.index(tok.eos_token_id) + 1] if tok.eos_token_id in g else g
            text = tok.decode(new, skip_special_tokens=True)
            ok = bool(new) and new[-1] == tok.eos_token_id and text == expected
            right += ok
            if len(examples) < 5:
                examples.append({"prompt": prompt, "expected": expected,
                                 "got": tok.decode(new, skip_special_tokens=False)})
    json.dump({"accuracy": right / len(rows), "n": len(rows), "examples": examples},
              open(out_path, "w"), indent=1)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"check": check, "accuracy": accuracy}[cmd](*args)
