"""Renders chat-template test cases with transformers' own Jinja environment (the judge).

    chat_template_ref.py CASES.json OUT.json

CASES is a list of {"template", "vars", "messages"?, "add_generation_prompt"?}.
- With "messages": the case goes through what apply_chat_template(tokenize=False) runs
  (_normalize_chat_messages, then render_jinja_template with the special tokens and "vars" as
  template kwargs). The {% generation %} spans are reported as UTF-8 byte offsets.
- Without: the template is compiled by transformers (same environment) and rendered with "vars".
OUT is a list of {"text", "spans"} or {"error"}, in order.
"""
import json
import sys

from transformers.utils import logging
from transformers.utils.chat_template_utils import (
    _compile_jinja_template,
    _normalize_chat_messages,
    render_jinja_template,
)

logging.set_verbosity_error()


def byte_offset(text, i):
    return len(text[:i].encode("utf-8"))


def run(case):
    template = case["template"]
    variables = dict(case.get("vars", {}))
    if "messages" not in case:
        return {"text": _compile_jinja_template(template).render(**variables), "spans": []}
    tools = variables.pop("tools", None)
    documents = variables.pop("documents", None)
    messages = _normalize_chat_messages(case["messages"])
    rendered, indices = render_jinja_template(
        conversations=[messages],
        tools=tools,
        documents=documents,
        chat_template=template,
        return_assistant_tokens_mask=True,
        add_generation_prompt=case.get("add_generation_prompt", False),
        **variables,
    )
    text = rendered[0]
    spans = [[byte_offset(text, b), byte_offset(text, e)] for b, e in indices[0]]
    return {"text": text, "spans": spans}


def main():
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    out = []
    for case in cases:
        try:
            out.append(run(case))
        except Exception as e:  # the C++ side expects an error too
            out.append({"error": f"{type(e).__name__}: {e}"})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"rendered {len(out)} cases")


if __name__ == "__main__":
    main()
