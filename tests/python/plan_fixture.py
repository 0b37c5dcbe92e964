"""A model and data for `qlora plan` against `qlora train`, made by transformers at test time:

  DIR/model/       a random LlamaForCausalLM (vocab 8192, hidden 256, intermediate 768, 4 layers,
                   GQA 4/2 heads, bf16 safetensors) with the demo's SentencePiece tokenizer
  DIR/train.jsonl  48 text records of 3000 words each (every row filled to sequence_len)

usage: plan_fixture.py SOURCE_DIR DIR
"""
import json, os, random, shutil, sys

import torch
import transformers as tf

src, out = sys.argv[1], sys.argv[2]
mdir = os.path.join(out, "model")
os.makedirs(mdir, exist_ok=True)
torch.manual_seed(0)
cfg = tf.LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                     bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
tf.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(mdir, safe_serialization=True)
for f in ("tokenizer.model", "tokenizer_config.json"):
    shutil.copy(os.path.join(src, "data/demo/model", f), mdir)
rng = random.Random(0)
words = ["the", "date", "of", "April", "March", "2023", "was", "a", "Monday", "and", "then", "came",
         "15", "October", "in", "year", "1999", "June", "7", "Sunday", "converted", "to", "words"]
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for _ in range(48):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(3000))}) + "\n")
