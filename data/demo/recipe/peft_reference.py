#!/usr/bin/env python3
"""Reference fine-tune of the demo with transformers + peft (+ bitsandbytes for QLoRA), on CPU.

Not the demo's path (that is `qlora train configs/demo.yaml`, no Python): this is the evidence
that the task is learnable in the demo's budget, and a yardstick for qlora's own numbers. It
follows configs/demo.yaml: LoRA on all linear layers, chat-format data with the prompt masked
out of the loss, AdamW, warmup then cosine, greedy exact match on the eval set before and after.

    peft_reference.py [--adapter qlora|lora] [--steps N] [--batch N] [--lr X] [--r N] ...

Run with the project's venv (~/.cache/qlora/venv/bin/python).
"""
import argparse
import json
import math
import os
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.dirname(HERE)


def load_examples(tok, path, seq_len):
    """(input_ids, labels) per example: the prompt (through the generation prompt) masked."""
    out = []
    for line in open(path):
        msgs = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs, tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        f = tok(full, add_special_tokens=False)["input_ids"][:seq_len]
        assert f[:len(p)] == p, "prompt tokens must be a prefix of the full example's"
        out.append((f, [-100] * len(p) + f[len(p):]))
    return out


def collate(batch, pad_id):
    T = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), T), pad_id)
    labels = torch.full((len(batch), T), -100)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, labels, mask


def eval_loss(model, examples, pad_id, batch=50):
    """Mean loss per target token over the eval set."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(examples), batch):
            ids, labels, mask = collate(examples[b:b + batch], pad_id)
            n = (labels[:, 1:] != -100).sum().item()
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * n
            count += n
    return total / count


def exact_match(model, tok, path, batch=50):
    tok.padding_side = "left"
    rows = [json.loads(line) for line in open(path)]
    right, samples = 0, []
    for b in range(0, len(rows), batch):
        part = rows[b:b + batch]
        prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                   for r in part]
        enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for r, g in zip(part, gen[:, enc["input_ids"].shape[1]:].tolist()):
            new = g[:g.index(tok.eos_token_id) + 1] if tok.eos_token_id in g else g
            ok = new and new[-1] == tok.eos_token_id and \
                tok.decode(new, skip_special_tokens=True) == r["messages"][-1]["content"]
            right += bool(ok)
            if len(samples) < 3:
                samples.append((r["messages"][0]["content"], tok.decode(new)))
    return right / len(rows), samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(DEMO, "model"))
    ap.add_argument("--train", default=os.path.join(DEMO, "train.jsonl"))
    ap.add_argument("--eval", default=os.path.join(DEMO, "eval.jsonl"))
    ap.add_argument("--adapter", choices=["qlora", "lora"], default="qlora")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=0, help="also measure exact match every N steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from peft import LoraConfig, get_peft_model
    tok = AutoTokenizer.from_pretrained(args.model)
    kw = {"dtype": torch.float32}
    if args.adapter == "qlora":
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, **kw)
    train = load_examples(tok, args.train, args.seq_len)
    evals = load_examples(tok, args.eval, args.seq_len)

    model.eval()
    acc0, samples0 = exact_match(model, tok, args.eval)
    loss0 = eval_loss(model, evals, tok.pad_token_id)
    print(f"before: exact match {acc0:.3f}  eval loss {loss0:.4f}  e.g. {samples0[0]}", flush=True)

    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable {sum(p.numel() for p in params)} of {sum(p.numel() for p in model.parameters())}")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    rng = random.Random(args.seed)
    order, pos = [], 0
    wall0, cpu0 = time.time(), time.process_time()
    for step in range(args.steps):
        model.train()
        if pos + args.batch > len(order):
            order, pos = list(range(len(train))), 0
            rng.shuffle(order)
        ids, labels, mask = collate([train[i] for i in order[pos:pos + args.batch]], tok.pad_token_id)
        pos += args.batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if (step + 1) % 10 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} lr {lr_at(step):.2e} "
                  f"wall {time.time() - wall0:.0f}s cpu {time.process_time() - cpu0:.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            print(f"  step {step + 1}: exact match {exact_match(model, tok, args.eval)[0]:.3f}", flush=True)
    wall, cpu = time.time() - wall0, time.process_time() - cpu0

    model.eval()
    acc1, samples1 = exact_match(model, tok, args.eval)
    loss1 = eval_loss(model, evals, tok.pad_token_id)
    print(f"after {args.steps} steps (batch {args.batch}, lr {args.lr}, r {args.r}, {args.adapter}): "
          f"exact match {acc1:.3f}  eval loss {loss1:.4f}  train wall {wall:.0f}s cpu {cpu:.0f}s")
    for s in samples1:
        print("  ", s)


if __name__ == "__main__":
    main()
