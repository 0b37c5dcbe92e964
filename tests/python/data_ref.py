"""What transformers tokenizes and trains for data test cases (the judge of trainer/data).

    data_ref.py OUT_DIR CASES.json

Trains small tokenizers of the Llama 3, Qwen2, SentencePiece (Llama 2 / Mistral) and GPT-2
styles (tokenizer_fixtures.py) into OUT_DIR/<name>/, then answers each case of CASES.json:
- {"tokenizer", "template", "tagged", "messages"}: the rendered texts of the untagged (published)
  template and of its {% generation %}-tagged twin, and apply_chat_template(tagged,
  tokenize=True, return_assistant_tokens_mask=True): "ids" and "mask".
- {"tokenizer", "prompt", "completion"}: tokenizer(prompt + completion) ids with special tokens,
  and "mask": the tokens whose offsets overlap the completion.
Writes OUT_DIR/data_ref.json: {"tokenizers": {name: dir}, "results": [...]}.
"""
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokcorpus  # noqa: E402
import tokenizer_fixtures  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging  # noqa: E402

logging.set_verbosity_error()


def chat_case(tok, case):
    messages = case["messages"]
    untagged = tok.apply_chat_template(messages, tokenize=False, chat_template=case["template"])
    tagged = tok.apply_chat_template(messages, tokenize=False, chat_template=case["tagged"])
    out = tok.apply_chat_template(messages, tokenize=True, chat_template=case["tagged"], return_dict=True,
                                  return_assistant_tokens_mask=True)
    return {"text": untagged, "text_tagged": tagged, "ids": list(out["input_ids"]),
            "mask": list(out["assistant_masks"])}


def completion_case(tok, case):
    prompt, completion = case["prompt"], case["completion"]
    enc = tok(prompt + completion, add_special_tokens=True, return_offsets_mapping=True)
    begin, end = len(prompt), len(prompt) + len(completion)
    # transformers' rule for assistant masks: a token is in when it overlaps the span.
    mask = [int(e > begin and s < end and e > s) for s, e in enc["offset_mapping"]]
    return {"ids": list(enc["input_ids"]), "mask": mask}


def main():
    out = os.path.abspath(sys.argv[1])
    cases = json.load(open(sys.argv[2], encoding="utf-8"))
    os.makedirs(out, exist_ok=True)
    lines = tokcorpus.lines(42, 3000)
    dirs = {}
    dirs.update(tokenizer_fixtures.make_llama3(out, lines))
    dirs.update(tokenizer_fixtures.make_qwen2(out, lines))
    dirs.update(tokenizer_fixtures.make_sentencepiece(out, lines))
    dirs.update(tokenizer_fixtures.make_gpt2(out, lines))
    toks = {}
    results = []
    for case in cases:
        name = case["tokenizer"]
        if name not in toks:
            toks[name] = AutoTokenizer.from_pretrained(dirs[name])
        try:
            results.append(chat_case(toks[name], case) if "messages" in case else completion_case(toks[name], case))
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    with open(os.path.join(out, "data_ref.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizers": dirs, "results": results}, f, ensure_ascii=False)
    print(f"answered {len(results)} cases")


if __name__ == "__main__":
    main()
