"""Judges a merged model that `qlora export --format gguf` wrote, with the gguf package and
transformers, against the merged safetensors export (fp32) of the same checkpoint:

  - GGUFReader reads the file: general.architecture / file_type, the hyperparameters, and every
    tensor under llama.cpp's name with the shape of the merged tensor. 1-D tensors are F32 and
    equal; 2-D ones are F16 / BF16 bitwise equal to the fp32 merged tensor rounded (torch, and
    gguf.quants.quantize), Q8_0 bytes equal to gguf.quants.quantize of the fp32 tensor; llama's
    q/k rows permuted as llama.cpp's converter permutes them; no output.weight when tied.
  - transformers' from_pretrained(dir, gguf_file=...) gives back those weights (the state dict
    equals the merged one rounded through the file's type) and logits close to the merged
    model's; AutoTokenizer(dir, gguf_file=...) gives the ids of the run's tokenizer on a corpus,
    and the same special tokens and chat template.

usage: gguf_model_check.py FILE.gguf MERGED_DIR OUTTYPE TOKENIZER_DIR
prints "ok ..." and "RESULT {json}" (logit differences) on success.

       gguf_model_check.py q8 FILE.gguf   every tensor NAME.q8 (Q8_0) holds the bytes
                                          gguf.quants.quantize gives for NAME.f32 (F32)
       gguf_model_check.py make-peft DIR  DIR/peft: a LoRA adapter (r 4, every linear, random
                                          lora_B) made by PEFT for the model transformers loads
                                          from DIR/model.gguf
       gguf_model_check.py make-tokenizers DIR   the tokenizer fixtures of tokenizer_fixtures.py
       gguf_model_check.py tokenizer FILE.gguf TOKENIZER_DIR [nfc]   only the tokenizer comparison
TOKENIZER_DIR may be a .gguf file (a GGUF base: its tokenizer as transformers loads it).
"""
import json, os, sys

import numpy as np
import torch
import transformers as tf
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import quantize, dequantize
from safetensors.torch import load_file

def compare_tokenizers(path, tok_dir, nfc=False):
    """AutoTokenizer of the GGUF file against the run's tokenizer: ids with and without special
    tokens on a corpus, every token under its id, special tokens, chat template (the default one
    of named templates). nfc: the corpus in NFC only (GGUF has no normalizer for Qwen2's NFC)."""
    import unicodedata
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tokenizer_fixtures as fx
    d, name = os.path.split(os.path.abspath(path))
    tg = tf.AutoTokenizer.from_pretrained(d, gguf_file=name)
    if tok_dir.endswith(".gguf"):
        tr = tf.AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(tok_dir)),
                                              gguf_file=os.path.basename(tok_dir))
    else:
        tr = tf.AutoTokenizer.from_pretrained(tok_dir)
    texts = fx.hard_corpus() + ["Below is an instruction that describes a task.\n\n### Instruction:\nReverse the word.",
                                " abc def", "### Response:\ncba"]
    texts += ["".join(x) for x in zip(texts[::7], [t + " x" for t in tr.all_special_tokens] * 40)]
    if nfc:
        texts = [unicodedata.normalize("NFC", x) for x in texts]
    bad = [x for x in texts if tg(x)["input_ids"] != tr(x)["input_ids"] or
           tg(x, add_special_tokens=False)["input_ids"] != tr(x, add_special_tokens=False)["input_ids"]]
    assert not bad, ("tokenizer ids differ", len(bad), bad[:3], [tg(x)["input_ids"] for x in bad[:1]],
                     [tr(x)["input_ids"] for x in bad[:1]])
    for a in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tg, a) == getattr(tr, a), (a, getattr(tg, a), getattr(tr, a))
    want = tr.chat_template["default"] if isinstance(tr.chat_template, dict) else tr.chat_template
    assert tg.chat_template == want, (tg.chat_template, tr.chat_template)
    # every token of the run's tokenizer under its id (transformers' GGUF loader appends GPT-2's
    # default "<|endoftext|>" unknown token to a byte-level vocabulary without one; it is not in the file)
    assert len(tg) >= len(tr), (len(tg), len(tr))
    n = len(tr)
    # (an added token outside the byte alphabet, like GPT-2's " <sep>", comes back respelled in it
    # as "Ġ<sep>": then the text it decodes to is compared)
    a, b = tg.convert_ids_to_tokens(list(range(n))), tr.convert_ids_to_tokens(list(range(n)))
    diff = [(i, a[i], b[i]) for i in range(n) if a[i] != b[i] and tg.decode([i]) != tr.decode([i])]
    assert not diff, diff[:5]
    print("ok tokenizer", len(texts), "texts")


if sys.argv[1] == "tokenizer":
    compare_tokenizers(sys.argv[2], sys.argv[3], nfc=len(sys.argv) > 4 and sys.argv[4] == "nfc")
    sys.exit(0)

if sys.argv[1] == "make-tokenizers":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tokcorpus, tokenizer_fixtures as fx
    lines = tokcorpus.lines(42, 3000)
    dirs = {}
    for make in (fx.make_sentencepiece, fx.make_llama3, fx.make_qwen2, fx.make_gpt2):
        dirs.update(make(sys.argv[2], lines))
    print("DIRS " + json.dumps(dirs))
    sys.exit(0)

if sys.argv[1] == "q8":
    r = GGUFReader(sys.argv[2])
    ts = {t.name: t for t in r.tensors}
    n = 0
    for name, t in ts.items():
        if not name.endswith(".q8"):
            continue
        f = ts[name[:-3] + ".f32"]
        assert t.tensor_type == T.Q8_0 and f.tensor_type == T.F32, name
        x = np.asarray(f.data, dtype=np.float32).reshape(list(reversed(f.shape.tolist())))
        assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), quantize(x, T.Q8_0).reshape(-1).view(np.uint8)), name
        n += 1
    assert n > 0
    print("ok q8", n)
    sys.exit(0)

if sys.argv[1] == "make-peft":
    from peft import LoraConfig, get_peft_model
    d = sys.argv[2]
    base = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file="model.gguf", torch_dtype=torch.float32)
    torch.manual_seed(5)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    pm.save_pretrained(os.path.join(d, "peft"))
    print("ok peft")
    sys.exit(0)

path, merged_dir, outtype, tok_dir = sys.argv[1:5]
r = GGUFReader(path)
fields = {f.name: f for f in r.fields.values()}


def scalar(name):
    f = fields[name]
    v = f.parts[f.data[0]]
    if f.types[0].name == "STRING":
        return bytes(v).decode()
    return v.tolist()[0]


cfg = json.load(open(os.path.join(merged_dir, "config.json")))
arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[cfg["model_type"]]
assert scalar("general.architecture") == arch, scalar("general.architecture")
assert scalar("general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[outtype]
heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
for key, want in (("block_count", cfg["num_hidden_layers"]), ("embedding_length", cfg["hidden_size"]),
                  ("feed_forward_length", cfg["intermediate_size"]), ("attention.head_count", heads),
                  ("attention.head_count_kv", kv), ("context_length", cfg["max_position_embeddings"])):
    assert scalar(f"{arch}.{key}") == want, (key, scalar(f"{arch}.{key}"), want)
assert abs(scalar(f"{arch}.attention.layer_norm_rms_epsilon") - cfg["rms_norm_eps"]) < 1e-12

# llama.cpp's names (convert_hf_to_gguf.py / gguf.constants) for the HF tensors.
LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    p = hf.split(".")  # model.layers.N.<module...>.weight|bias
    return f"blk.{p[2]}.{LAYER['.'.join(p[3:-1])]}.{p[-1]}"


def permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


merged = {}
for f in sorted(os.listdir(merged_dir)):
    if f.endswith(".safetensors"):
        merged.update(load_file(os.path.join(merged_dir, f)))
assert all(v.dtype == torch.float32 for v in merged.values()), "the merged export must be fp32"
expected = {}
for k, v in merged.items():
    if arch == "llama" and (".q_proj." in k or ".k_proj." in k):
        v = permute(v, heads if ".q_proj." in k else kv)
    expected[gguf_name(k)] = (k, v.contiguous())
tied = cfg.get("tie_word_embeddings", False)
assert ("output.weight" in expected) == (not tied)

qtype = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[outtype]
seen = set()
kinds = {}
for t in r.tensors:
    assert t.name in expected, t.name
    hf, exp = expected[t.name]
    assert list(t.shape) == list(reversed(exp.shape)), (t.name, t.shape, exp.shape)
    x = exp.numpy()
    want = T.F32 if exp.dim() == 1 else (T.F16 if qtype == T.Q8_0 and exp.shape[-1] % 32 else qtype)
    assert t.tensor_type == want, (t.name, t.tensor_type.name, want.name)
    got = np.asarray(t.data).reshape(-1).view(np.uint8)
    if want == T.BF16:
        ref_t = exp.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(-1)
        assert np.array_equal(got, ref_t), t.name
    ref = quantize(x, want).reshape(-1).view(np.uint8)
    assert np.array_equal(got, ref), (t.name, "differs from gguf.quants.quantize")
    if want == T.F16:
        assert np.array_equal(got, exp.to(torch.float16).numpy().view(np.uint8).reshape(-1)), t.name
    kinds[want.name] = kinds.get(want.name, 0) + 1
    seen.add(t.name)
assert seen == set(expected), set(expected) ^ seen
print("ok gguf", len(seen), "tensors", kinds)

# transformers reads the file back: the same weights and logits close to the merged model's
d, name = os.path.split(os.path.abspath(path))
g = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32).eval()
m = tf.AutoModelForCausalLM.from_pretrained(merged_dir, torch_dtype=torch.float32).eval()
gsd = g.state_dict()
for k, v in merged.items():
    if v.dim() == 1:
        rounded = v
    elif qtype == T.Q8_0 and v.shape[-1] % 32 == 0:
        rounded = torch.from_numpy(dequantize(quantize(v.numpy(), T.Q8_0), T.Q8_0)).reshape(v.shape)
    elif qtype == T.F32:
        rounded = v
    else:
        rounded = v.to(torch.float16 if qtype in (T.F16, T.Q8_0) else torch.bfloat16).float()
    assert torch.equal(gsd[k].float(), rounded), (k, (gsd[k].float() - rounded).abs().max().item())
torch.manual_seed(0)
ids = torch.randint(0, cfg["vocab_size"], (2, 16))
with torch.no_grad():
    lg, lm = g(ids).logits, m(ids).logits
rel = ((lg - lm).abs().max() / lm.abs().max()).item()
# the weights are equal above; this bounds what their rounding does to the logits
limit = {"f32": 1e-5, "f16": 1e-2, "bf16": 5e-2, "q8_0": 0.15}[outtype]
assert rel < limit, ("logits", rel, limit)
print("ok transformers weights equal; logits max rel diff", rel)

compare_tokenizers(path, tok_dir)
print("RESULT " + json.dumps({"rel": rel, "tensors": len(seen)}))
