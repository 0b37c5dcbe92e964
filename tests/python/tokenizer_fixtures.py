"""Trains small tokenizers of each style with the real libraries, saves them as model
directories, and writes what transformers' AutoTokenizer answers for a hard corpus.

usage: tokenizer_fixtures.py OUT_DIR
writes OUT_DIR/<name>/ (a tokenizer directory) and OUT_DIR/goldens.json:
  {"fixtures": [{"name", "dir", "special": {...}, "vocab_size", "chat_template",
                 "cases": [{"text", "ids", "ids_special", "decode", "decode_skip", "roundtrip"}],
                 "decode_cases": [{"ids", "text", "text_skip"}]}]}
Styles: SentencePiece BPE with byte fallback as an HF Llama dir (tokenizer.model only, legacy and
not; and converted to tokenizer.json, also in the classic Llama-2 layout and in Gemma's), GPT-2 byte-level BPE,
Llama 3 (Split regex + ByteLevel, TemplateProcessing BOS, ignore_merges), Qwen2 (NFC, single
digits).
"""
import json
import os
import random
import shutil
import sys
import unicodedata

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokcorpus  # noqa: E402

import sentencepiece as spm  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def added_token_json(t):
    return {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized,
            "single_word": t.single_word, "special": t.special}


def patch_config(d, **kv):
    p = os.path.join(d, "tokenizer_config.json")
    cfg = json.load(open(p, encoding="utf-8"))
    for k, v in kv.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w", encoding="utf-8"), ensure_ascii=False, indent=1)


# ---- SentencePiece (Llama 2 / Mistral / TinyLlama style) --------------------------------------
def make_sentencepiece(out, train_lines):
    work = os.path.join(out, "_sp")
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(train_lines))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(work, "sp"), vocab_size=1500, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.995,
        user_defined_symbols=["<tool>"], unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, num_threads=2)
    special = {str(i): {"content": c, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False, "special": True}
               for i, c in enumerate(["<unk>", "<s>", "</s>"])}
    dirs = {}
    for name, legacy in (("sp_model", False), ("sp_model_legacy", True)):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(work, "sp.model"), os.path.join(d, "tokenizer.model"))
        cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": legacy,
               "legacy": legacy, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "pad_token": None, "clean_up_tokenization_spaces": False, "added_tokens_decoder": special,
               "chat_template": [{"name": "default", "template": CHAT_TEMPLATE},
                                 {"name": "tool_use", "template": "{{ messages }}"}]}
        json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=1)
        dirs[name] = d
    # What transformers converts tokenizer.model to (tokenizer.json + config, LlamaTokenizer).
    d = os.path.join(out, "sp_json")
    AutoTokenizer.from_pretrained(dirs["sp_model"]).save_pretrained(d)
    dirs["sp_json"] = d
    # The classic Llama-2 tokenizer.json layout (Prepend/Replace normalizer, no pre-tokenizer)
    # run as written (PreTrainedTokenizerFast), with unk and an eos appended.
    d = os.path.join(out, "sp_json_classic")
    shutil.copytree(dirs["sp_json"], d)
    tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
    tj["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    tj["pre_tokenizer"] = None
    tj["model"]["unk_token"] = "<unk>"
    tj["model"]["fuse_unk"] = True
    tj["model"]["byte_fallback"] = True
    tj["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
    patch_config(d, tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=True)
    dirs["sp_json_classic"] = d
    # The Gemma layout: a Replace-only normalizer (no prefix space), byte fallback, no Strip in
    # the decoder, BOS added by a TemplateProcessing post-processor, turn markers as specials.
    d = os.path.join(out, "gemma_json")
    shutil.copytree(dirs["sp_json"], d)
    tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
    tj["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    tj["pre_tokenizer"] = None
    tj["model"]["unk_token"] = "<unk>"
    tj["model"]["fuse_unk"] = True
    tj["model"]["byte_fallback"] = True
    tj["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}
    tj["post_processor"] = {"type": "TemplateProcessing",
                            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    n = len(tj["model"]["vocab"])
    for i, t in enumerate(["<start_of_turn>", "<end_of_turn>"]):
        tj["added_tokens"].append({"id": n + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                   "normalized": False, "special": True})
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
    patch_config(d, tokenizer_class="PreTrainedTokenizerFast", add_bos_token=None, add_eos_token=None, legacy=None)
    dirs["gemma_json"] = d
    return dirs


# ---- byte-level BPE styles --------------------------------------------------------------------
def train_byte_level(train_lines, normalizer, pre, vocab_size, specials_in_vocab=(), ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials_in_vocab), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train_lines, trainer)
    return tok


def make_gpt2(out, train_lines):
    tok = train_byte_level(train_lines, None, pre_tokenizers.ByteLevel(add_prefix_space=False), 3000,
                           specials_in_vocab=["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # A non-special added token that strips the spaces around it, and one single-word token.
    tok.add_tokens([AddedToken(" <sep>", lstrip=True, rstrip=True, normalized=False),
                    AddedToken("qlora", single_word=True)])
    d = os.path.join(out, "gpt2")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(d)
    patch_config(d, tokenizer_class="GPT2Tokenizer", add_prefix_space=False)
    # Merges in the older "a b" string form.
    p = os.path.join(d, "tokenizer.json")
    tj = json.load(open(p, encoding="utf-8"))
    tj["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    json.dump(tj, open(p, "w", encoding="utf-8"), ensure_ascii=False)
    return {"gpt2": d}


def make_llama3(out, train_lines):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = train_byte_level(train_lines, None, pre, 4000, ignore_merges=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    specials += [f"<|reserved_special_token_{i}|>" for i in range(8)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    d = os.path.join(out, "llama3")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>").save_pretrained(d)
    patch_config(d, tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    return {"llama3": d}


def make_qwen2(out, train_lines):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = train_byte_level(train_lines, normalizers.NFC(), pre, 4000)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    d = os.path.join(out, "qwen2")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(d)
    patch_config(d, tokenizer_class="Qwen2Tokenizer", bos_token=None, unk_token=None, add_prefix_space=False,
                 errors="replace")
    with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(CHAT_TEMPLATE)
    patch_config(d, chat_template="{{ 'the jinja file must win' }}")
    # The same files run as written (tokenizer.json's own NFC normalizer and Split).
    d2 = os.path.join(out, "qwen2_json")
    shutil.copytree(d, d2)
    patch_config(d2, tokenizer_class="PreTrainedTokenizerFast")
    return {"qwen2": d, "qwen2_json": d2}


# ---- the hard corpus --------------------------------------------------------------------------
def hard_corpus():
    latin = "Café naïve résumé Ångström façade jalapeño Øresund Straße"
    fixed = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n\n", " \t \n ", "\r\n", "a", " a", "  a", "a ", "a  ",
        "Hello world", " Hello world", "Hello  world", "Hello\tworld", "Hello\n\nworld\n",
        latin, unicodedata.normalize("NFD", latin), "e\u0301", "\u0041\u030A", "ﬁ ① ㍿ Ⅻ",
        "Привет, мир! Съешь же ещё этих мягких французских булок.",
        "Γειά σου Κόσμε· ΆΈΉ", "مرحبا بالعالم، كيف حالك؟", "שָׁלוֹם עוֹלָם", "नमस्ते दुनिया क्षत्रिय",
        "สวัสดีชาวโลก ภาษาไทย", "你好，世界！今天天气很好。", "こんにちは、世界。カタカナ", "안녕하세요 세계",
        unicodedata.normalize("NFD", "안녕하세요 한국어"), "龘靐齉 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀",
        "👍 👍🏽 👩🏿‍💻 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ 1️⃣ 🧑‍🚀", "🙂🙂🙂🙂",
        "1234567890123456789012345", "3.14159 1,000,000 2024-01-31 +44 (0)20 7946 0958", "٠١٢٣ ४५६ ①②",
        "it's we'll I'VE They'RE don't 's 'll O'Neil rock'n'roll", "IT'S 'S' ''", "a'b'c'd",
        "def f(x):\n    return x**2  # square\n", "{\"a\": [1, 2, {\"b\": null}]}", "<div class='x'>&amp;</div>",
        "tab\tsep\tvalues\n1\t2\t3", "end with spaces   ", "   start with spaces", "many          spaces",
        "\u00a0nbsp\u00a0and\u2009thin\u3000ideographic\u2028line", "zero\u200bwidth\u200djoiner", "\x00\x01\x7f",
        "odd spaces:\u0085next\u180emongolian\u2007figure\ufeffbom \u000b\u000c\u001c\u001f|", "a \u180e b \u0085 c",
        "mixed English и русский и 中文 and عربى", "x" * 300, "ab" * 200 + "!", "🎉" * 40,
    ]
    rng = random.Random(1234)
    randoms = tokcorpus.lines(98765, 120)
    # Random splices: concatenate pieces of different lines without spaces.
    for _ in range(40):
        a, b = rng.choice(randoms), rng.choice(randoms)
        randoms.append(a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)):])
    return fixed + randoms


def specials_in_text(names):
    """Texts with the fixture's special tokens inside, partially, adjacent, around spaces."""
    out = []
    for s in names:
        out += [s, f"{s}hello", f"hello{s}", f" {s} ", f"a {s} b", f"{s}{s}", f"x{s[:-1]}", f"{s[:3]} {s}\n{s}  x",
                f"  {s}  spaced  {s}"]
    if len(names) >= 2:
        out.append(f"{names[0]}Hi there{names[1]}\n{names[0]} again{names[1]}")
    return out


def goldens_for(name, d, extra_texts):
    tok = AutoTokenizer.from_pretrained(d)
    texts = hard_corpus() + specials_in_text(extra_texts)
    cases = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        ids_sp = tok(t, add_special_tokens=True)["input_ids"]
        dec = tok.decode(ids, skip_special_tokens=False)
        cases.append({"text": t, "ids": ids, "ids_special": ids_sp, "decode": dec,
                      "decode_skip": tok.decode(ids_sp, skip_special_tokens=True), "roundtrip": dec == t})
    rng = random.Random(hash(name) & 0xFFFF)
    n = len(tok)
    decode_cases = []
    for k in range(150):  # random ids: split multi-byte characters, stray byte tokens, specials
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
        decode_cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                             "text_skip": tok.decode(ids, skip_special_tokens=True)})
    # Invalid UTF-8 reaches us as bytes; Python would see it decoded with errors="replace".
    invalid = [b"abc\xff def", b"\xe2\x82", b"ok\xc3(", b"\xf0\x9f\x98 end", b"\xed\xa0\x80x", b"\xc0\xaf\x80\x80"]
    invalid_cases = [{"hex": b.hex(), "ids": tok(b.decode("utf-8", "replace"), add_special_tokens=False)["input_ids"]}
                     for b in invalid]
    special = {}
    for k in ("bos", "eos", "unk", "pad"):
        t = getattr(tok, f"{k}_token")
        special[k] = {"token": str(t) if t is not None else None, "id": getattr(tok, f"{k}_token_id")}
    with_bos = tok("x", add_special_tokens=True)["input_ids"]
    without = tok("x", add_special_tokens=False)["input_ids"]
    special["adds_bos"] = tok.bos_token_id is not None and with_bos[:1] == [tok.bos_token_id] and without[:1] != [tok.bos_token_id]
    special["adds_eos"] = tok.eos_token_id is not None and with_bos[-1:] == [tok.eos_token_id] and without[-1:] != [tok.eos_token_id]
    ct = tok.chat_template
    named = {}
    if isinstance(ct, dict):
        named, ct = ct, ct.get("default")
    return {"name": name, "dir": d, "class": type(tok).__name__, "vocab_size": len(tok), "special": special,
            "chat_template": ct or "", "named_chat_templates": named, "cases": cases, "decode_cases": decode_cases, "invalid_utf8_cases": invalid_cases,
            "token_probe": [[t, tok.convert_tokens_to_ids(t)] for t in extra_texts]}


def main():
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    train_lines = tokcorpus.lines(42, 12000)
    dirs = {}
    dirs.update(make_sentencepiece(out, train_lines))
    dirs.update(make_gpt2(out, train_lines))
    dirs.update(make_llama3(out, train_lines))
    dirs.update(make_qwen2(out, train_lines))
    specials = {
        "sp_model": ["<s>", "</s>", "<unk>", "<tool>"], "sp_model_legacy": ["<s>", "</s>", "<unk>", "<tool>"],
        "sp_json": ["<s>", "</s>", "<unk>", "<tool>"], "sp_json_classic": ["<s>", "</s>", "<unk>"],
        "gemma_json": ["<s>", "</s>", "<start_of_turn>", "<end_of_turn>"],
        "gpt2": ["<|endoftext|>", " <sep>", "qlora"],
        "llama3": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
        "qwen2": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>"],
        "qwen2_json": ["<|im_start|>", "<|im_end|>", "<think>"],
    }
    fixtures = [goldens_for(n, d, specials[n]) for n, d in dirs.items()]
    with open(os.path.join(out, "goldens.json"), "w", encoding="utf-8") as f:
        json.dump({"fixtures": fixtures}, f, ensure_ascii=False)
    print("ok", " ".join(f"{x['name']}({x['class']},{x['vocab_size']})" for x in fixtures))


if __name__ == "__main__":
    main()
