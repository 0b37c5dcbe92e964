"""Reference side of the generate/eval tests: transformers (+ PEFT, bitsandbytes) is the judge.

  make DIR   tiny random llama / mistral (sliding window 4) / qwen3 (qk-norm) / gemma2 (soft-caps, sliding
             layers) / gemma3 (local and global RoPE) models with the demo's
             SentencePiece tokenizer under DIR/<name>/, a random PEFT LoRA adapter for llama
             (DIR/llama_lora), a bitsandbytes NF4 checkpoint of llama (DIR/llama_bnb, no double
             quant), a text dataset (DIR/text.jsonl), and DIR/ref.json with what transformers says:
             greedy generate(do_sample=False) ids and text for each case, and the eval loss.
"""
import json, os, shutil, sys

import torch

import model_ref  # tests/python, next to this script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "data", "demo", "model")
PROMPTS = ["Convert the date 2042-06-07 to words.", "Write 5 January 2030 as an ISO date."]
TEXTS = ["Convert the date 2042-06-07 to words. 7 June 2042",
         "Give the ISO form of 2 April 1913.",
         "Write 5 January 2030 as an ISO date: 2030-01-05, a Saturday, they say.",
         "x",
         "The 12th of May 1999 was a Wednesday; 1999-05-12 in ISO form, or twelve May."]
MAX_NEW = 24


def build(kind):
    import transformers as tf
    common = dict(vocab_size=1024, num_hidden_layers=2, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                  tie_word_embeddings=False)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                                  num_key_value_heads=2, rope_theta=10000.0, **common))
    if kind == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                                                      num_key_value_heads=1, sliding_window=4, **common))
    if kind == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                                  num_key_value_heads=2, head_dim=16, **common))
    if kind == "phi3":
        # longrope with a pretraining length of 16: short prompts pass it while generating, and
        # transformers then recomputes the whole sequence with the long factors
        return tf.Phi3ForCausalLM(tf.Phi3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                                num_key_value_heads=2, max_position_embeddings=64,
                                                original_max_position_embeddings=16,
                                                rope_scaling={"rope_type": "longrope",
                                                              "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
                                                              "long_factor": [1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0]},
                                                **common))
    if kind == "gemma2":  # sliding window 4 on layers 0 and 2, both soft-caps biting
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                                                    num_key_value_heads=2, head_dim=16, num_hidden_layers=3,
                                                    sliding_window=4, query_pre_attn_scalar=24,
                                                    attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                                                    **{k: v for k, v in common.items() if k != "num_hidden_layers"}))
    if kind == "gemma3":  # window 3, local RoPE on sliding layers, scaled global RoPE, q/k norms
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            sliding_window=3, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}},
            **common))
    if kind == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(hidden_size=48, intermediate_size=64, num_attention_heads=4,
                                                      num_key_value_heads=2, num_local_experts=4,
                                                      num_experts_per_tok=2, **common))
    raise SystemExit(kind)


def randomize(model, seed):
    model_ref.randomize(model, seed, norm_spread=0.2, bias_scale=0.1, gain=1.0)


def copy_tokenizer(d):
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEMO, f), os.path.join(d, f))


def greedy(model, tok, prompt):
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW)
    new = out[0, ids.shape[1]:].tolist()
    return {"prompt": prompt, "prompt_ids": ids[0].tolist(), "ids": new,
            "text": tok.decode(new, skip_special_tokens=True)}


def main(out):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from peft import LoraConfig, PeftModel, get_peft_model
    os.makedirs(out, exist_ok=True)
    ref = {"generate": {}, "eval": {}}
    tok = None
    for i, kind in enumerate(["llama", "mistral", "qwen3", "phi3", "gemma2", "gemma3", "mixtral"]):
        torch.manual_seed(10 + i)
        m = build(kind)
        randomize(m, 20 + i)
        d = os.path.join(out, kind)
        m.save_pretrained(d)
        copy_tokenizer(d)
        tok = AutoTokenizer.from_pretrained(d)
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        ref["generate"][kind] = [greedy(m, tok, p) for p in PROMPTS]

    llama = os.path.join(out, "llama")
    base = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32, attn_implementation="eager").eval()
    # Eval reference: text samples as qlora's text format builds them (tokenizer(text) with BOS, then EOS);
    # transformers' loss with labels = input_ids, as a mean over all predicted tokens.
    data = os.path.join(out, "text.jsonl")
    with open(data, "w") as f:
        for t in TEXTS:
            f.write(json.dumps({"text": t}) + "\n")
    total, count, all_ids = 0.0, 0, []
    with torch.no_grad():
        for t in TEXTS:
            ids = tok(t).input_ids + [tok.eos_token_id]
            all_ids.append(ids)
            x = torch.tensor([ids])
            loss = base(input_ids=x, labels=x).loss  # mean over len(ids) - 1 predictions
            total += loss.item() * (len(ids) - 1)
            count += len(ids) - 1
    ref["eval"] = {"loss": total / count, "count": count, "ids": all_ids}

    # A PEFT LoRA adapter with random A and B (B is zero at init), on the 16-bit base.
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(77)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    lora = os.path.join(out, "llama_lora")
    pm.save_pretrained(lora)
    pm.eval()
    ref["generate"]["llama_lora"] = [greedy(pm, tok, p) for p in PROMPTS]

    # bitsandbytes NF4 (no double quant) checkpoint of llama, with and without the adapter. Only a
    # missing bitsandbytes skips these cases: an error of the judge itself must fail the fixture (on
    # AVX512-BF16 CPUs bitsandbytes' bf16 path raised here for down_proj [64, 96], and the test was
    # skipped instead of run).
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        ref["bnb_error"] = repr(e)
    else:
        from bnb_fp32 import fp32_linear4bit_on_cpu
        fp32_linear4bit_on_cpu()
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                               bnb_4bit_compute_dtype=torch.float32)
        qm = AutoModelForCausalLM.from_pretrained(llama, quantization_config=q, device_map="cpu",
                                                  dtype=torch.float32, attn_implementation="eager").eval()
        bnb = os.path.join(out, "llama_bnb")
        qm.save_pretrained(bnb)
        copy_tokenizer(bnb)
        ref["generate"]["llama_bnb"] = [greedy(qm, tok, p) for p in PROMPTS]
        qp = PeftModel.from_pretrained(qm, lora).eval()
        ref["generate"]["llama_bnb_lora"] = [greedy(qp, tok, p) for p in PROMPTS]
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "make":
        raise SystemExit(__doc__)
    main(sys.argv[2])
