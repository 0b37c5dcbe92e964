"""A tiny training setup made by the reference libraries at test time:

  DIR/model/      a random LlamaForCausalLM (GQA, hidden 64, 2 layers) saved by transformers,
                  with a byte-level BPE tokenizer trained by `tokenizers` (BOS added by the
                  post-processor, pad token, EOS)
  DIR/train.jsonl alpaca records of a toy task (reverse a short word), DIR/eval.jsonl held out

usage: train_fixture.py DIR [ARCH]   ARCH: llama (default), llama_tied (tied embeddings), phi3
                                    (Phi3ForCausalLM: fused qkv_proj and gate_up_proj, partial rotary,
                                    longrope) or mixtral (4 experts, 2 per token), same sizes and tokenizer
"""
import json, os, random, sys

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

out = sys.argv[1]
mdir = os.path.join(out, "model")
os.makedirs(mdir, exist_ok=True)
rng = random.Random(0)
letters = "abcdefghij"


def word():
    return "".join(rng.choice(letters) for _ in range(rng.randint(2, 5)))


records = []
for _ in range(120):
    w = word()
    records.append({"instruction": "Reverse the word.", "input": w, "output": w[::-1]})
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for r in records[:96]:
        f.write(json.dumps(r) + "\n")
with open(os.path.join(out, "eval.jsonl"), "w") as f:
    for r in records[96:]:
        f.write(json.dumps(r) + "\n")

corpus = [json.dumps(r) for r in records] + ["Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:"] * 20
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                   special_tokens=[("<s>", tok.token_to_id("<s>"))])
fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
fast.save_pretrained(mdir)

torch.manual_seed(0)
arch = sys.argv[2] if len(sys.argv) > 2 else "llama"
common = dict(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
              pad_token_id=tok.token_to_id("<pad>"), tie_word_embeddings=False)
if arch == "llama":
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
elif arch == "llama_tied":
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**dict(common, tie_word_embeddings=True)))
elif arch == "phi3":
    model = tf.Phi3ForCausalLM(tf.Phi3Config(**common, original_max_position_embeddings=32, partial_rotary_factor=0.5,
                                             rope_scaling={"rope_type": "longrope",
                                                           "short_factor": [1.0, 1.1, 1.2, 1.4],
                                                           "long_factor": [1.0, 3.0, 6.0, 9.0]}))
elif arch == "mixtral":
    model = tf.MixtralForCausalLM(tf.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2))
else:
    raise SystemExit(f"unknown arch {arch}")
model.save_pretrained(mdir, safe_serialization=True)
print("ok", tok.get_vocab_size())
