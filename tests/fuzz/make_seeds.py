"""Writes the seed corpora under tests/fuzz/corpus/ (committed; rerun only to refresh them).

usage: ~/.cache/qlora/venv/bin/python tests/fuzz/make_seeds.py
Seeds are small valid files made by the real libraries where one exists (safetensors, tokenizers,
peft), the repository's own configs, datasets and tokenizer files, the published chat templates
of tests/tokenizer/published_templates.h, and a few interesting near-misses.
"""
import hashlib
import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


# ---- safetensors ------------------------------------------------------------------------------
def safetensors_seeds():
    import numpy as np
    import torch
    from safetensors.numpy import save as np_save
    from safetensors.torch import save as torch_save

    put("safetensors", "f32.safetensors", np_save({"w": np.arange(4, dtype=np.float32).reshape(2, 2)}))
    put("safetensors", "meta.safetensors",
        torch_save({"a.weight": torch.ones(3, dtype=torch.bfloat16), "b": torch.zeros(2, 1, dtype=torch.float16)},
                   metadata={"format": "pt", "note": "x"}))
    put("safetensors", "mixed.safetensors",
        torch_save({"u8": torch.arange(5, dtype=torch.uint8), "i64": torch.arange(2, dtype=torch.int64),
                    "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 3), "bool": torch.tensor([True, False])}))
    # Near-misses: a hole, an overlap, a lying length, a huge shape.
    def raw(header, data=b""):
        h = json.dumps(header).encode()
        return struct.pack("<Q", len(h)) + h + data
    put("safetensors", "hole.safetensors", raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8))
    put("safetensors", "overlap.safetensors", raw({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                                   "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4))
    put("safetensors", "bigshape.safetensors",
        raw({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}}))
    put("safetensors", "short.safetensors", struct.pack("<Q", 1000) + b'{"a"')


# ---- configs ------------------------------------------------------------------------------------
def config_seeds():
    for f in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if f.endswith(".yaml"):
            put("config", f, read(os.path.join("configs", f)))
    put("config", "minimal.yaml", "base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n")
    put("config", "flow.yaml", "{base_model: m, datasets: [{path: d.jsonl, type: chat}], lora_r: 8, "
        "lora_target_modules: [q_proj, v_proj], optimizer_device_budget: 2GiB, chat_template_kwargs: "
        "{enable_thinking: false}}\n")
    put("config", "anchors.yaml", "base_model: &m model\ntokenizer: *m\ndatasets: [{path: a.json, type: text, "
        "field: body}]\ntest_datasets: [{path: b.jsonl, type: prompt_completion}]\nmax_steps: 3\nwarmup_ratio: 0.1\n")


# ---- datasets -----------------------------------------------------------------------------------
def dataset_seeds():
    lines = read("data/demo/train.jsonl").decode().splitlines()
    put("dataset", "demo.jsonl", "\n".join(lines[:3]) + "\n")
    put("dataset", "alpaca_array.json", json.dumps([{"instruction": "Add", "input": "2 2", "output": "4"},
                                                    {"instruction": "Hi", "output": "Hello"}], indent=1))
    put("dataset", "chat.jsonl", json.dumps({"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]}) + "\n")
    put("dataset", "text_pc.jsonl", '{"text": "plain \\u00e9 text"}\n\n{"prompt": "P", "completion": "C"}\r\n')
    put("dataset", "bom_bad.jsonl", b'\xef\xbb\xbf{"text": "a"}\n{"text": "\xff"}\n[1]\n{"text": \n')


# ---- tokenizers ---------------------------------------------------------------------------------
def tokenizer_seeds():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    corpus = ["Hello world, this is a tiny corpus.", "Numbers 12345 and ünïcödé text!", "def f(x): return x * 2",
              "The quick brown fox jumps over the lazy dog."] * 4

    def train(tk, trainer):
        tk.train_from_iterator(corpus, trainer)
        return tk

    bl = Tokenizer(models.BPE())
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    train(bl, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bl.post_processor = processors.ByteLevel(trim_offsets=False)
    put("tokenizer_json", "byte_level_bpe.json", bl.to_str())

    l3 = Tokenizer(models.BPE(ignore_merges=True))
    l3.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    l3.decoder = decoders.ByteLevel()
    train(l3, trainers.BpeTrainer(vocab_size=280, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    l3.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
                                                      special_tokens=[("<|begin_of_text|>", 0)])
    put("tokenizer_json", "llama3_style.json", l3.to_str())

    sp = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    train(sp, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"] +
                                  [f"<0x{i:02X}>" for i in range(256)]))
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    sp.add_tokens([AddedToken("<tool>", special=True, lstrip=True), AddedToken("word", single_word=True)])
    put("tokenizer_json", "sentencepiece_bpe.json", sp.to_str())

    q = Tokenizer(models.BPE())
    q.normalizer = normalizers.NFC()
    q.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=True)])
    q.decoder = decoders.ByteLevel()
    train(q, trainers.BpeTrainer(vocab_size=270, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    put("tokenizer_json", "qwen_style.json", q.to_str())

    wl = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.StripAccents()])
    put("tokenizer_json", "wordlevel.json", wl.to_str())
    ug = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁a", -1.0), ("b", -2.0)], unk_id=0))
    ug.pre_tokenizer = pre_tokenizers.Metaspace()
    ug.decoder = decoders.Metaspace()
    put("tokenizer_json", "unigram.json", ug.to_str())

    put("tokenizer_config", "demo.json", read("data/demo/model/tokenizer_config.json"))
    put("tokenizer_config", "recipe.json", read("data/demo/recipe/tokenizer_config.json"))
    put("tokenizer_config", "added_tokens.json", json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "legacy": True, "add_bos_token": True, "add_eos_token": True,
        "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": "</s>", "pad_token": None, "unk_token": "<unk>",
        "added_tokens_decoder": {"0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
                                 "2": {"content": "</s>", "special": True},
                                 "512": {"content": "<|im_start|>", "special": True, "lstrip": True}},
        "additional_special_tokens": ["<|im_start|>"],
        "chat_template": [{"name": "default", "template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
                          {"name": "tool_use", "template": "{{ tools | tojson }}"}]}, indent=2))


# ---- Jinja ------------------------------------------------------------------------------------
def jinja_seeds():
    src = read("tests/tokenizer/published_templates.h").decode()
    messages = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                           {"role": "assistant", "content": "Bye!"}])
    seen = set()
    for i, (name, body) in enumerate(re.findall(r'inline const char\* (k\w+) =\s*R"JINJA\((.*?)\)JINJA"', src, re.S)):
        if body in seen:
            continue
        seen.add(body)
        put("jinja", f"{i:02d}_{name[1:].lower()}.jinja", body + "\0" + messages)
    put("jinja", "syntax.jinja", "{% set ns = namespace(x=0) %}{% for i in range(3) if i is odd %}{{ loop.index }}"
        "{% set ns.x = ns.x + i %}{% else %}none{% endfor %}{{ ns.x }}{% macro m(a, b=2) %}{{ a ~ b }}{% endmacro %}"
        "{{ m(1) | upper }}{{ [1, 2, 3] | map('string') | join(',') }}{{ {'a': 1} | tojson }}{{ 'x' * 3 }}"
        "{{ messages[-1]['content'][1:] | replace('y', 'z') | trim }}{% if messages | length > 1 %}{{ 7 // 2 }}"
        "{% endif %}{{ '%s-%d' % ('a', 3) }}{{ strftime_now('%Y') }}{%- generation -%}x{%- endgeneration -%}")
    put("jinja", "tool_calls.jinja", "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
        "{{ c.function.name }}{{ c.function.arguments | tojson(indent=2) }}{% endfor %}{% endif %}"
        "{{ m['content'] }}{% endfor %}\0" + json.dumps(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5, None]}}}]}]))


# ---- PEFT adapter_config.json ------------------------------------------------------------------
def peft_seeds():
    import tempfile

    from peft import LoraConfig

    for name, kw in {"peft_lora.json": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
                     "peft_all_linear.json": dict(r=4, lora_alpha=8, lora_dropout=0.05, use_rslora=True,
                                                  target_modules="all-linear")}.items():
        with tempfile.TemporaryDirectory() as d:
            LoraConfig(task_type="CAUSAL_LM", base_model_name_or_path="base", **kw).save_pretrained(d)
            put("peft", name, read(os.path.join(d, "adapter_config.json")))
    put("peft", "dora.json", json.dumps({"peft_type": "LORA", "use_dora": True, "r": 8, "target_modules": ["q_proj"]}))
    put("peft", "patterns.json", json.dumps({"r": 1e300, "rank_pattern": {"q": 2}, "modules_to_save": ["lm_head"],
                                             "target_modules": ".*proj"}))


# ---- checkpoint manifest ------------------------------------------------------------------------
def manifest_seeds():
    # The files fuzz_manifest.cpp puts next to the manifest.
    files = {"trainer_state.json": b'{"step": 2}\n', "rng.bin": b"\x01\x02\x03\x04"}
    entry = {k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)} for k, v in files.items()}
    put("manifest", "valid.json", json.dumps({"format": "qlora-checkpoint-v1", "step": 2, "files": entry}, indent=2))
    put("manifest", "wrong_size.json", json.dumps({"step": 2, "files": {"rng.bin": {"sha256": "0" * 64, "bytes": 9}}}))
    put("manifest", "no_files.json", json.dumps({"step": "2"}))
    put("manifest", "missing.json", json.dumps({"step": 1, "files": {"model.safetensors": {"sha256": "", "bytes": 0}}}))


# ---- GGUF -----------------------------------------------------------------------------------------
def gguf_seeds():
    # Small files the gguf package writes: metadata of every value type, tensors of each type we read.
    import tempfile
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    def make(name, fill):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x.gguf")
            w = gguf.GGUFWriter(p, "llama")
            fill(w)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            put("gguf", name, read(p))

    rng = np.random.default_rng(0)

    def meta(w):
        w.add_block_count(2)
        w.add_embedding_length(64)
        w.add_uint8("u8", 1); w.add_int8("i8", -1); w.add_uint16("u16", 2); w.add_int16("i16", -2)
        w.add_int32("i32", -3); w.add_uint64("u64", 4); w.add_int64("i64", -4); w.add_float64("f64", 0.5)
        w.add_bool("b", True); w.add_string("s", "h\u00e9"); w.add_array("a", [1, 2, 3]); w.add_array("as", ["x", "y"])
        w.add_tensor("v", np.arange(4, dtype=np.float32))

    def quants(w):
        x = rng.standard_normal((1, 32)).astype(np.float32)
        w.add_tensor("f16", x.astype(np.float16))
        for qt in (T.Q8_0, T.Q4_0, T.Q4_1, T.BF16):
            w.add_tensor(qt.name, quantize(x, qt), raw_dtype=qt)

    def kquants(w):
        for qt in (T.Q4_K, T.Q5_K, T.Q6_K):
            _, size = gguf.GGML_QUANT_SIZES[qt]
            w.add_tensor(qt.name, np.zeros((1, size), dtype=np.uint8), raw_dtype=qt)

    make("meta.gguf", meta)
    make("quants.gguf", quants)
    make("kquants.gguf", kquants)


if __name__ == "__main__":
    for fn in (safetensors_seeds, config_seeds, dataset_seeds, tokenizer_seeds, jinja_seeds, peft_seeds, manifest_seeds,
               gguf_seeds):
        fn()
    print("seeds written under", OUT)
