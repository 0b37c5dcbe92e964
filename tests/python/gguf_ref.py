"""Reference side of the GGUF-base tests: the gguf package writes the files, the gguf package and
transformers are the judges.

  quants DIR            DIR/quants.gguf: one tensor per ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1
                        quantized by gguf.quants; Q4_K, Q5_K, Q6_K as random valid blocks written raw)
                        and DIR/quants_ref.safetensors: gguf.quants.dequantize of each, fp32
  model DIR ARCH QTYPE  a tiny random transformers model of ARCH (llama, mistral, qwen2, qwen3)
                        converted to DIR/model.gguf (2-D weights in QTYPE: F32, F16, BF16, Q8_0,
                        Q4_0, Q4_1, or Q4_K/Q5_K/Q6_K as random valid blocks, rows of 256; llama's q/k rows permuted as llama.cpp's converter does; an SPM
                        vocabulary), then loaded back by AutoModelForCausalLM.from_pretrained(DIR,
                        gguf_file=...): DIR/ref.safetensors holds its state dict (fp32) and
                        DIR/ref_config.json the config fields transformers derived
  tokenizer DIR KIND    KIND spm: a SentencePiece BPE model (byte fallback, a user-defined symbol)
                        stored as tokenizer.ggml.model "llama" (pieces, scores, types); KIND bpe: a
                        byte-level BPE with Qwen2's split, specials and an added token, stored as
                        "gpt2" (tokens, merges, types, pre "qwen2"); both with a chat template, in
                        DIR/model.gguf. DIR/ref.json: AutoTokenizer.from_pretrained(DIR, gguf_file=...)
                        ids of a corpus (with and without special tokens), its special tokens, and
                        the backend's tokenizer.json (for reading failures)
  from-hf SRC OUT QTYPE a Llama directory saved by transformers with a byte-level BPE tokenizer.json
                        (train_fixture.py's) converted to the GGUF file OUT (2-D weights in QTYPE)
  check-merged DIR GGUF PEFT MERGED
                        a merged export from a GGUF base against transformers + PEFT: the base from
                        from_pretrained(DIR, gguf_file=GGUF), the PEFT adapter merged in by
                        merge_and_unload(); MERGED loaded by from_pretrained must hold the same tensors
                        (fp32, 1e-5) and its tokenizer give the ids of the GGUF's
"""
import json, os, sys

import numpy as np
import torch
from safetensors.torch import save_file
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize


def random_kquant_blocks(rng, qtype, n_blocks):
    """Random bytes with finite, moderate f16 scales in the places the layout keeps them."""
    _, size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)

    def f16(n):
        return (rng.uniform(0.001, 0.05, size=n).astype(np.float16)).view(np.uint8).reshape(n, 2)

    if qtype in (T.Q4_K, T.Q5_K):
        b[:, 0:2] = f16(n_blocks)  # d
        b[:, 2:4] = f16(n_blocks)  # dmin
    elif qtype == T.Q6_K:
        b[:, 208:210] = f16(n_blocks)
    return b


def cmd_quants(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(out, "quants.gguf"), "llama")
    ref = {}
    rows, cols = 3, 512
    for qt in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1):
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if qt == T.F32:
            q = x
        elif qt == T.F16:
            q = x.astype(np.float16)
        else:
            q = quantize(x, qt)
        w.add_tensor(qt.name, q, raw_dtype=qt if qt not in (T.F32, T.F16) else None)
        ref[qt.name] = torch.from_numpy(dequantize(q, qt).astype(np.float32).reshape(rows, cols).copy())
    for qt in (T.Q4_K, T.Q5_K, T.Q6_K):
        blocks = random_kquant_blocks(rng, qt, rows * cols // 256)
        q = blocks.reshape(rows, -1)
        w.add_tensor(qt.name, q, raw_dtype=qt)
        ref[qt.name] = torch.from_numpy(dequantize(q, qt).astype(np.float32).reshape(rows, cols).copy())
    # a 1-D and a 3-D tensor keep their shapes
    v = rng.standard_normal(7).astype(np.float32)
    w.add_tensor("vec", v)
    ref["vec"] = torch.from_numpy(v.copy())
    c = rng.standard_normal((2, 3, 64)).astype(np.float32)
    q = quantize(c, T.Q8_0)
    w.add_tensor("cube", q, raw_dtype=T.Q8_0)
    ref["cube"] = torch.from_numpy(dequantize(q, T.Q8_0).astype(np.float32).copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(ref, os.path.join(out, "quants_ref.safetensors"))
    print("ok", len(ref))


KQUANTS = ("Q4_K", "Q5_K", "Q6_K")


def tiny_model(arch, wide=False):
    """wide: rows of 256 elements, a whole K-quant block (hidden 256, intermediate 512)."""
    import transformers as tf
    torch.manual_seed(11)
    common = dict(vocab_size=96, hidden_size=256 if wide else 64, intermediate_size=512 if wide else 96,
                  num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=128, rope_theta=10000.0,
                  bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False))
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False))
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=True))
    if arch == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, tie_word_embeddings=True))
    raise SystemExit(f"unknown arch {arch}")


HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    p = hf.split(".")
    assert p[0] == "model" and p[1] == "layers", hf
    mod = ".".join(p[3:-1])
    return f"blk.{p[2]}.{HF_TO_GGUF[mod]}.{p[-1]}"


def permute(w, n_head, n_head_kv):
    # llama.cpp's converter: HF half-rotation rows -> interleaved pairs
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_spm_tokenizer(w, toks, scores, types):
    """A SentencePiece ("llama") tokenizer in the GGUF metadata: pieces, scores, types, ids 0/1/2."""
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def spm_vocab(n):
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(16)]
    words = ["▁the", "▁a", "▁of", "▁to", "▁and", "in", "er", "on", "▁t", "re", "at", "en", "▁w", "is", "or", "an"]
    toks += words
    i = 0
    while len(toks) < n:
        toks.append("▁w" + str(i))
        i += 1
    scores = [0.0, 0.0, 0.0] + [0.0] * 16 + [-float(i) for i in range(n - 19)]
    types = [2, 3, 3] + [6] * 16 + [1] * (n - 19)
    return toks[:n], scores[:n], types[:n]


def write_model_gguf(m, arch, path, qt, tokenizer_keys):
    c = m.config
    gguf_arch = "llama" if arch in ("llama", "mistral") else arch
    w = gguf.GGUFWriter(path, gguf_arch)
    w.add_name(f"{arch}-tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    else:
        w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(c.rope_theta if hasattr(c, "rope_theta") else 10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_file_type(0)
    tokenizer_keys(w)
    sd = m.state_dict()
    for k, v in sd.items():
        if k == "lm_head.weight" and c.tie_word_embeddings:
            continue
        x = v.float().numpy()
        name = gguf_name(k)
        if gguf_arch == "llama" and ".attn_q." in name:
            x = permute(x, c.num_attention_heads, c.num_attention_heads)
        if gguf_arch == "llama" and ".attn_k." in name:
            x = permute(x, c.num_attention_heads, c.num_key_value_heads)
        if x.ndim == 1 or qt == T.F32:
            w.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))
        elif qt == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            if qt.name in KQUANTS:  # gguf-py cannot quantize to K-quants: random valid blocks instead
                blocks = random_kquant_blocks(np.random.default_rng(len(name)), qt, x.size // 256)
                w.add_tensor(name, blocks.reshape(x.shape[0], -1), raw_dtype=qt)
            else:
                w.add_tensor(name, quantize(np.ascontiguousarray(x), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def cmd_model(out, arch, qtype_name):
    import transformers as tf
    os.makedirs(out, exist_ok=True)
    m = tiny_model(arch, wide=qtype_name in KQUANTS)

    def spm_keys(w):
        add_spm_tokenizer(w, *spm_vocab(m.config.vocab_size))

    write_model_gguf(m, arch, os.path.join(out, "model.gguf"), T[qtype_name], spm_keys)
    back = tf.AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", torch_dtype=torch.float32)
    ref = {k: v.detach().float().contiguous().clone() for k, v in back.state_dict().items()}
    save_file(ref, os.path.join(out, "ref.safetensors"))
    bc = back.config
    fields = {k: getattr(bc, k, None) for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                                                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                 "head_dim", "max_position_embeddings", "rms_norm_eps",
                                                 "tie_word_embeddings", "bos_token_id", "eos_token_id")}
    rp = getattr(bc, "rope_parameters", None) or {}
    fields["rope_theta"] = rp.get("rope_theta", getattr(bc, "rope_theta", None))
    with open(os.path.join(out, "ref_config.json"), "w") as f:
        json.dump(fields, f)
    print("ok", len(ref))


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def minimal_model_keys(w, n_vocab):
    w.add_context_length(64)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)


def cmd_tokenizer(out, kind):
    import transformers as tf
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tokcorpus, tokenizer_fixtures as fx
    os.makedirs(out, exist_ok=True)
    train = tokcorpus.lines(4242, 400)
    path = os.path.join(out, "model.gguf")
    if kind == "spm":
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
        dirs = fx.make_sentencepiece(out, train)
        sp_file = os.path.join(out, "_sp", "sp.model")
        proto = pb.ModelProto()
        proto.ParseFromString(open(sp_file, "rb").read())
        toks = [p.piece for p in proto.pieces]
        scores = [p.score for p in proto.pieces]
        types = [int(p.type) for p in proto.pieces]
        w = gguf.GGUFWriter(path, "llama")
        minimal_model_keys(w, len(toks))
        add_spm_tokenizer(w, toks, scores, types)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    else:
        dirs = fx.make_qwen2(out, train)
        tj = json.load(open(os.path.join(dirs["qwen2"], "tokenizer.json"), encoding="utf-8"))
        vocab = dict(tj["model"]["vocab"])
        kinds = {}
        for a in tj["added_tokens"]:
            vocab[a["content"]] = a["id"]
            kinds[a["id"]] = 3 if a["special"] else 4
        toks = [None] * len(vocab)
        for t, i in vocab.items():
            toks[i] = t
        merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
        w = gguf.GGUFWriter(path, "qwen2")
        minimal_model_keys(w, len(toks))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(toks)
        w.add_token_types([kinds.get(i, 1) for i in range(len(toks))])
        w.add_token_merges(merges)
        w.add_eos_token_id(vocab["<|im_end|>"])
        w.add_pad_token_id(vocab["<|endoftext|>"])
        w.add_bos_token_id(vocab["<|endoftext|>"])
        w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_tensor("token_embd.weight", np.zeros((len(toks), 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    t = tf.AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
    texts = fx.hard_corpus()
    ref = {
        "texts": texts,
        "ids_special": [t(x, add_special_tokens=True)["input_ids"] for x in texts],
        "ids_plain": [t(x, add_special_tokens=False)["input_ids"] for x in texts],
        "bos_id": t.bos_token_id, "eos_id": t.eos_token_id, "unk_id": t.unk_token_id, "pad_id": t.pad_token_id,
        "vocab_size": len(t),
        "chat_template": t.chat_template,
        "backend": json.loads(t.backend_tokenizer.to_str()),
    }
    ref["backend"]["model"].pop("vocab", None)
    with open(os.path.join(out, "ref.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    print("ok", len(texts))


def cmd_from_hf(src, out, qtype_name):
    import transformers as tf
    m = tf.AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    tj = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
    tc = json.load(open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8"))
    vocab = dict(tj["model"]["vocab"])
    specials = {a["id"] for a in tj["added_tokens"] if a["special"]}
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
    toks = [None] * len(vocab)
    for t, i in vocab.items():
        toks[i] = t

    def bpe_keys(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(toks)
        w.add_token_types([3 if i in specials else 1 for i in range(len(toks))])
        w.add_token_merges([" ".join(x) if isinstance(x, list) else x for x in tj["model"]["merges"]])
        for key, fn in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                        ("pad_token", w.add_pad_token_id)):
            if tc.get(key):
                fn(vocab[tc[key]])
        w.add_add_bos_token(True)
        w.add_chat_template(CHAT_TEMPLATE)

    write_model_gguf(m, "llama", out, T[qtype_name], bpe_keys)
    print("ok", len(toks))


def cmd_check_merged(d, gguf_name, peft_dir, merged):
    import transformers as tf
    from peft import PeftModel
    base = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf_name, torch_dtype=torch.float32)
    ref = PeftModel.from_pretrained(base, peft_dir).merge_and_unload().state_dict()
    got = tf.AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).state_dict()
    assert set(ref) == set(got), (sorted(set(ref) ^ set(got)))
    worst = 0.0
    for k in ref:
        a, b = ref[k].float(), got[k].float()
        assert a.shape == b.shape, (k, a.shape, b.shape)
        diff = (a - b).abs().max().item()
        worst = max(worst, diff)
        assert diff <= 1e-5 * max(1.0, a.abs().max().item()), (k, diff)
    t_ref = tf.AutoTokenizer.from_pretrained(d, gguf_file=gguf_name)
    t_got = tf.AutoTokenizer.from_pretrained(merged)
    for text in ["Reverse the word.", " abc def", "### Instruction:\nhello"]:
        assert t_ref(text)["input_ids"] == t_got(text)["input_ids"], text
    assert t_got.chat_template == t_ref.chat_template
    print("ok", len(ref), "max diff", worst)


if __name__ == "__main__":
    if sys.argv[1] == "quants":
        cmd_quants(sys.argv[2])
    elif sys.argv[1] == "from-hf":
        cmd_from_hf(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "check-merged":
        cmd_check_merged(*sys.argv[2:6])
    elif sys.argv[1] == "tokenizer":
        cmd_tokenizer(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "model":
        cmd_model(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
