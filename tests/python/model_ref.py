"""Reference side of the model tests: transformers, PEFT and bitsandbytes are the judges.

  make DIR                 tiny random models of each family (awkward shapes) under DIR/<name>/,
                           plus DIR/<name>/expect.json (what transformers derives from the config)
  bnb SRC DST              quantize SRC with transformers + bitsandbytes (CPU, nf4, double quant) and
                           save_pretrained to DST (a bnb-4bit checkpoint); DST/dequant.safetensors holds
                           bitsandbytes' own dequantization of every 4-bit weight
  logits MODEL IN OUT [--weights W]
                           fp32 logits of transformers for IN (input_ids, position_ids, segment_ids,
                           labels); each packed segment runs as its own sequence. --weights loads a
                           state dict (our dequantized weights) into the model first. OUT: logits,
                           loss_sum, count
  grads MODEL IN OUT --lora L --r R --alpha A --targets t1,t2 [--rslora] [--weights W] [--target-parameters p1,p2]
                           PEFT LoRA (dropout 0) with the adapter values from L; the summed CE loss over
                           IN, backward; OUT: the gradient of every lora_A/lora_B under PEFT's saved
                           key names, and loss_sum
  aux MODEL IN OUT --lora L --r R --alpha A --targets t1,t2 --coef C [--weights W]
                           a mixture of experts with output_router_logits on and router_aux_loss_coef C:
                           one forward of the whole batch (input_ids, attention_mask, labels) through
                           transformers + PEFT, backward of the model's loss (mean CE + C * aux);
                           OUT: loss, aux_loss and the gradient of every lora_A/lora_B
  init MODEL OUT --r R --targets t1,t2
                           PEFT's own initialization: OUT is JSON {key: [max |A|, fan_in, max |B|]}
  lora_init MODEL OUT --init METHOD ...
                           PEFT's init_lora_weights METHOD on every LoRA layer (lora_init_ref.py)
  serve                    run the commands above from stdin lines, replies on fd 3 (one import)
"""
import argparse, json, math, os, sys

import torch
from safetensors.torch import load_file, save_file


def build(kind):
    import transformers as tf
    if kind == "llama":
        # multi-query attention, explicit head_dim (heads*head_dim != hidden), biases everywhere, tied embeddings,
        # llama3 rope scaling, weights that are not a whole number of 64-blocks (q_proj 50x35) and
        # an odd number of elements (gate_proj 37x35: the last byte holds one code).
        c = tf.LlamaConfig(vocab_size=61, hidden_size=35, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=5, num_key_value_heads=1, head_dim=10, attention_bias=True,
                           mlp_bias=True, tie_word_embeddings=True, rms_norm_eps=1e-5,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                           rope_theta=10000.0, bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0)
        return tf.LlamaForCausalLM(c), torch.float32
    if kind == "mistral":
        # GQA, a sliding window shorter than the test sequence, bf16 file
        c = tf.MistralConfig(vocab_size=50, hidden_size=64, intermediate_size=100, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, sliding_window=5,
                             tie_word_embeddings=False, rope_theta=1000.0)
        return tf.MistralForCausalLM(c), torch.bfloat16
    if kind == "qwen2":
        # GQA 6:2, q,k,v biases, linear rope scaling, fp16 file
        c = tf.Qwen2Config(vocab_size=70, hidden_size=48, intermediate_size=70, num_hidden_layers=2,
                           num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
                           rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=10000.0)
        return tf.Qwen2ForCausalLM(c), torch.float16
    if kind == "qwen3":
        # qk-norm, explicit head_dim, biases on q,k,v,o, tied embeddings, saved in shards
        c = tf.Qwen3Config(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=24, attention_bias=True,
                           tie_word_embeddings=True, rope_theta=1000000.0)
        return tf.Qwen3ForCausalLM(c), torch.float32
    if kind == "phi3":
        # fused qkv_proj / gate_up_proj, GQA 6:2, partial rotary (0.75 of head_dim 8), longrope with a
        # pretraining length (4) the test sequences pass, a sliding window shorter than them, bf16 file
        c = tf.Phi3Config(vocab_size=64, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32,
                          original_max_position_embeddings=4, partial_rotary_factor=0.75, sliding_window=7,
                          rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.25, 1.5],
                                        "long_factor": [1.0, 2.0, 4.5]},
                          tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        return tf.Phi3ForCausalLM(c), torch.bfloat16
    if kind == "gemma2":
        # GQA 4:2, head_dim 20 (heads*head_dim != hidden), sliding window 4 on layers 0 and 2 (shorter than
        # the test sequence), query_pre_attn_scalar != head_dim, attention and final softcaps small enough
        # to bite on the randomized weights, tied embeddings, bf16 file
        c = tf.Gemma2Config(vocab_size=67, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=20, sliding_window=4,
                            query_pre_attn_scalar=32, attn_logit_softcapping=4.0, final_logit_softcapping=20.0,
                            rms_norm_eps=1e-6, rope_theta=1000.0, tie_word_embeddings=True,
                            bos_token_id=2, eos_token_id=1, pad_token_id=0)
        return tf.Gemma2ForCausalLM(c), torch.bfloat16
    if kind == "gemma3":
        # multi-query attention, q/k norms, head_dim 16, layer types sliding/sliding/full/sliding with a window
        # of 5, local RoPE base 100 on sliding layers and linear scaling (factor 4) on the global one, a final
        # softcap, untied lm_head, fp32 file
        c = tf.Gemma3TextConfig(vocab_size=71, hidden_size=40, intermediate_size=56, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=5,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                             "sliding_attention"],
                                query_pre_attn_scalar=24, final_logit_softcapping=4.0, tie_word_embeddings=False,
                                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                    "rope_theta": 20000.0},
                                                 "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                                bos_token_id=2, eos_token_id=[1, 3], pad_token_id=0)
        return tf.Gemma3ForCausalLM(c), torch.float32
    if kind == "mixtral":
        # 4 experts, 2 per token, GQA, bf16 file (per-expert w1/w3/w2 tensors on disk)
        c = tf.MixtralConfig(vocab_size=60, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                             tie_word_embeddings=False, rope_theta=1e6)
        return tf.MixtralForCausalLM(c), torch.bfloat16
    if kind == "qwen2_moe":
        # 6 experts, 2 per token without renormalization, a shared expert and its sigmoid gate, q,k,v biases
        c = tf.Qwen2MoeConfig(vocab_size=70, hidden_size=48, intermediate_size=64, moe_intermediate_size=20,
                              shared_expert_intermediate_size=36, num_experts=6, num_experts_per_tok=2,
                              norm_topk_prob=False, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, tie_word_embeddings=False)
        return tf.Qwen2MoeForCausalLM(c), torch.float32
    if kind == "qwen3_moe":
        # 8 experts, 3 per token renormalized, q/k norms, explicit head_dim, tied embeddings
        c = tf.Qwen3MoeConfig(vocab_size=50, hidden_size=32, intermediate_size=40, moe_intermediate_size=16,
                              num_experts=8, num_experts_per_tok=3, norm_topk_prob=True, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=12, tie_word_embeddings=True)
        return tf.Qwen3MoeForCausalLM(c), torch.float32
    raise SystemExit(f"unknown kind {kind}")


def randomize(model, seed, norm_spread=0.3, bias_scale=0.2, gain=1.2):
    """Weights large enough that every part of the network matters (HF's init is near zero):
    norms 1 + norm_spread * N(0,1), other vectors bias_scale * N(0,1), embeddings N(0,1),
    matrices gain * N(0,1) / sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + norm_spread * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(bias_scale * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(gain * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))


def expect_of(model):
    c = model.config
    layer = model.model.layers[0]
    att = layer.self_attn
    q = getattr(att, "q_proj", None) or att.qkv_proj
    gate = getattr(layer.mlp, "gate_proj", None) or getattr(layer.mlp, "gate_up_proj", None)
    rope = {}
    if c.rope_parameters.get("rope_type") == "longrope":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        orig = c.rope_parameters["original_max_position_embeddings"]
        long_inv, factor = ROPE_INIT_FUNCTIONS["longrope"](c, None, seq_len=orig + 1)
        rope = {"long_inv_freq": long_inv.tolist(), "attention_factor": factor}
    return rope | {
        "model_type": c.model_type,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": att.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": bool(c.tie_word_embeddings),
        "qkv_bias": q.bias is not None, "o_bias": att.o_proj.bias is not None,
        "mlp_bias": gate is not None and gate.bias is not None, "qk_norm": hasattr(att, "q_norm"),
        # Mistral and Phi3 attention apply config.sliding_window in every layer; Qwen layers keep their own.
        "layer_window": [c.sliding_window if c.model_type in ("mistral", "phi3")
                         else getattr(l.self_attn, "sliding_window", None)
                         for l in model.model.layers],
        "inv_freq": (model.model.rotary_emb.full_attention_inv_freq if c.model_type == "gemma3_text"
                     else model.model.rotary_emb.inv_freq).tolist(),
        "num_parameters": model.num_parameters(),
        # the projections qlora quantizes: every matrix of the layers but the MoE routers and gates
        "linear_parameters": sum(p.numel() for n, p in model.model.layers.named_parameters()
                                 if p.dim() >= 2 and not n.endswith(("mlp.gate.weight", "shared_expert_gate.weight"))),
        "num_experts": getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 0,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
        **gemma_expect(model),
    }


def gemma_expect(model):
    c = model.config
    if not c.model_type.startswith("gemma"):
        return {}
    e = {"attention_scale": model.model.layers[0].self_attn.scaling,
         "final_logit_softcapping": c.final_logit_softcapping,
         # Gemma3Attention does not pass its attn_logit_softcapping on to attention
         "attn_logit_softcapping": c.attn_logit_softcapping if c.model_type == "gemma2" else None}
    if c.model_type == "gemma3_text":
        e["inv_freq_local"] = model.model.rotary_emb.sliding_attention_inv_freq.tolist()
    return e


def cmd_make(out):
    for i, kind in enumerate(["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "mixtral", "qwen2_moe",
                              "qwen3_moe"]):
        torch.manual_seed(100 + i)
        model, dtype = build(kind)
        randomize(model, 200 + i)
        d = os.path.join(out, kind)
        expect = expect_of(model)  # before the cast: inv_freq is a float32 buffer at load time
        shard = "20KB" if kind == "qwen3" else "5GB"
        model.to(dtype).save_pretrained(d, max_shard_size=shard)
        json.dump(expect, open(os.path.join(d, "expect.json"), "w"))


def cmd_bnb(src, dst):
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from bnb_fp32 import fp32_linear4bit_on_cpu
    fp32_linear4bit_on_cpu()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map="cpu", dtype=torch.float32)
    m.save_pretrained(dst)
    deq = {}
    for name, mod in m.named_modules():
        w = getattr(mod, "weight", None)
        if w is not None and hasattr(w, "quant_state") and w.quant_state is not None:
            deq[name + ".weight"] = F.dequantize_4bit(w.data, w.quant_state).float().contiguous()
    save_file(deq, os.path.join(dst, "dequant.safetensors"))


def load_model(path, weights):
    from transformers import AutoModelForCausalLM
    if weights and "experts" in " ".join(load_file(weights).keys()):
        # Mixtures of experts: the file has the per-expert names of a saved checkpoint, which
        # from_pretrained (not load_state_dict) converts to transformers' fused expert tensors.
        import shutil, tempfile
        d = tempfile.mkdtemp(prefix="weights_")
        shutil.copy(os.path.join(path, "config.json"), d)
        sd = load_file(weights)
        if json.load(open(os.path.join(path, "config.json"))).get("tie_word_embeddings"):
            sd.pop("lm_head.weight", None)
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        shutil.rmtree(d)
        return m
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    if weights:
        sd = load_file(weights)
        missing, unexpected = m.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and m.config.tie_word_embeddings)]
        if missing or unexpected:
            raise SystemExit(f"state dict mismatch: missing {missing} unexpected {unexpected}")
    return m


def packed_forward(m, inp):
    """Logits [B, T, V]: each run of equal segment ids is its own sequence with its own positions."""
    ids, pos = inp["input_ids"].long(), inp["position_ids"].long()
    seg = inp.get("segment_ids")
    seg = torch.zeros_like(ids) if seg is None else seg.long()
    rows = []
    for b in range(ids.shape[0]):
        pieces, t = [], 0
        T = ids.shape[1]
        while t < T:
            e = t
            while e < T and seg[b, e] == seg[b, t]:
                e += 1
            out = m(input_ids=ids[b:b + 1, t:e], position_ids=pos[b:b + 1, t:e], use_cache=False)
            pieces.append(out.logits[0])
            t = e
        rows.append(torch.cat(pieces, 0))
    return torch.stack(rows, 0)


def loss_sum(logits, labels):
    V = logits.shape[-1]
    lg = logits[:, :-1].reshape(-1, V).float()
    y = labels[:, 1:].reshape(-1).long()
    s = torch.nn.functional.cross_entropy(lg, y, ignore_index=-100, reduction="sum")
    return s, int((y != -100).sum())


def cmd_logits(model, inp, out, weights):
    m = load_model(model, weights).eval()
    x = load_file(inp)
    with torch.no_grad():
        lg = packed_forward(m, x)
        s, n = loss_sum(lg, x["labels"])
    save_file({"logits": lg.contiguous(), "loss_sum": s.reshape(1), "count": torch.tensor([n])}, out)


def peft_model(model, r, alpha, targets, rslora, weights, target_parameters=None, dora=False, init=True):
    from peft import LoraConfig, get_peft_model
    m = load_model(model, weights)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, use_rslora=rslora,
                     bias="none", task_type="CAUSAL_LM", target_parameters=target_parameters or None,
                     use_dora=dora, init_lora_weights=init)
    return get_peft_model(m, cfg)


def our_key(name):
    """PEFT's parameter name as its saved adapter names it (the adapter name dropped; DoRA's
    magnitude saved without ".weight")."""
    key = name.replace(".default", "")
    return key[:-len(".weight")] if key.endswith("lora_magnitude_vector.weight") else key


def params_of(a):
    return a.target_parameters.split(",") if a.target_parameters else None


def targets_of(s):
    return "all-linear" if s == "all-linear" else s.split(",")


def cmd_grads(a):
    from peft import set_peft_model_state_dict, get_peft_model_state_dict
    pm = peft_model(a.model, a.r, a.alpha, targets_of(a.targets), a.rslora, a.weights, params_of(a), a.dora)
    lora = load_file(a.lora)
    res = set_peft_model_state_dict(pm, lora)
    if res.unexpected_keys:
        raise SystemExit(f"unexpected adapter keys {res.unexpected_keys}")
    saved_keys = set(get_peft_model_state_dict(pm).keys())
    if saved_keys != set(lora.keys()):
        raise SystemExit(f"adapter keys differ from PEFT's: ours-only {sorted(set(lora) - saved_keys)[:4]} "
                         f"peft-only {sorted(saved_keys - set(lora))[:4]}")
    pm.train()
    x = load_file(a.inp)
    lg = packed_forward(pm, x)
    s, n = loss_sum(lg, x["labels"])
    s.backward()
    out = {"loss_sum": s.detach().reshape(1)}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            out[our_key(name)] = p.grad.detach().contiguous()
    save_file(out, a.out)


def cmd_dora_init(a):
    """PEFT's DoRA adapter as get_peft_model initializes it on the given weights: A, B and the
    magnitude (the row norms of W + scaling B A), under the saved adapter's keys."""
    pm = peft_model(a.model, a.r, a.alpha, targets_of(a.targets), a.rslora, a.weights, dora=True,
                    init=a.init != "false")
    save_file({our_key(n): p.detach().contiguous() for n, p in pm.named_parameters() if p.requires_grad}, a.out)


def cmd_aux(a):
    from peft import set_peft_model_state_dict
    pm = peft_model(a.model, a.r, a.alpha, targets_of(a.targets), False, a.weights)
    res = set_peft_model_state_dict(pm, load_file(a.lora))
    if res.unexpected_keys:
        raise SystemExit(f"unexpected adapter keys {res.unexpected_keys}")
    base = pm.get_base_model()
    base.config.output_router_logits = True
    base.config.router_aux_loss_coef = a.coef
    base.router_aux_loss_coef = a.coef
    pm.train()
    x = load_file(a.inp)
    out = pm(input_ids=x["input_ids"].long(), attention_mask=x["attention_mask"].long(),
             labels=x["labels"].long(), use_cache=False)
    out.loss.backward()
    res = {"loss": out.loss.detach().reshape(1), "aux_loss": out.aux_loss.detach().reshape(1)}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            res[name.replace(".default", "")] = p.grad.detach().contiguous()
    save_file(res, a.out)


def cmd_init(a):
    pm = peft_model(a.model, a.r, 16, targets_of(a.targets), False, None)
    res = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            A = mod.lora_A["default"].weight
            B = mod.lora_B["default"].weight
            key = name.replace("base_model.model.", "")
            res[key] = [A.abs().max().item(), A.shape[1], B.abs().max().item()]
    json.dump(res, open(a.out, "w"))


def run(argv):
    if argv[:1] == ["lora_init"]:  # PEFT's other initialisations: tests/python/lora_init_ref.py
        import lora_init_ref
        return lora_init_ref.main(argv[1:])
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("args", nargs="*")
    p.add_argument("--weights")
    p.add_argument("--lora")
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8)
    p.add_argument("--targets", default="all-linear")
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--coef", type=float, default=0.001)
    p.add_argument("--target-parameters", default="")
    p.add_argument("--dora", action="store_true")
    p.add_argument("--init", default="true")
    a = p.parse_args(argv)
    if a.mode == "make":
        cmd_make(a.args[0])
    elif a.mode == "bnb":
        cmd_bnb(a.args[0], a.args[1])
    elif a.mode == "logits":
        cmd_logits(a.args[0], a.args[1], a.args[2], a.weights)
    elif a.mode == "grads":
        a.model, a.inp, a.out = a.args
        cmd_grads(a)
    elif a.mode == "aux":
        a.model, a.inp, a.out = a.args
        cmd_aux(a)
    elif a.mode == "init":
        a.model, a.out = a.args
        cmd_init(a)
    elif a.mode == "dora_init":
        a.model, a.out = a.args
        cmd_dora_init(a)
    else:
        raise SystemExit(f"unknown mode {a.mode}")


def serve():
    """One request per stdin line (a JSON list of arguments); one JSON reply per line on fd 3:
    {"code": 0 | 1, "output": "..."}. Saves the ~10 s import of torch + transformers per call."""
    import contextlib, io, traceback
    replies = os.fdopen(3, "w")
    for line in sys.stdin:
        if not line.strip():
            continue
        buf = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                torch.manual_seed(0)
                run(json.loads(line))
            except SystemExit as e:
                code = 0 if e.code in (None, 0) else 1
                buf.write(f"exit: {e.code}\n")
            except BaseException:
                code = 1
                buf.write(traceback.format_exc())
        replies.write(json.dumps({"code": code, "output": buf.getvalue()[-20000:]}) + "\n")
        replies.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        run(sys.argv[1:])
