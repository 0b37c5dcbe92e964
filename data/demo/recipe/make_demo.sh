#!/usr/bin/env bash
# Remakes the embedded demo (data/demo/) from nothing but this repository:
#   1. make_data.py      generated text: pretraining corpus, train.jsonl, eval.jsonl
#   2. spm_train         SentencePiece BPE tokenizer (Llama-2 style options) on the corpus
#   3. demo_pretrain     our LibTorch program pretrains the Llama base model on the corpus
#   4. install           model dir (config.json, model.safetensors bf16, tokenizer) + datasets
#
#   data/demo/recipe/make_demo.sh [WORK_DIR]      (default: build/demo-recipe)
#
# Environment: DEMO_THREADS (default 1: the committed model was made so), DEMO_NICE (default
# 19: the pretraining is CPU-heavy), BUILD_DIR (default build). Takes about half an hour on a
# busy 2-core machine. Steps 1-2 are byte-reproducible; step 3 is deterministic for a given
# machine and thread count (float reductions may differ elsewhere, so a remade model can differ
# in its last bits).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
demo="$root/data/demo"
work="${1:-$root/build/demo-recipe}"
threads="${DEMO_THREADS:-1}"
build="${BUILD_DIR:-$root/build}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

echo "== 1/4 text ($work)"
python3 "$here/make_data.py" --out "$work"

echo "== 2/4 tokenizer"
# Run inside $work with relative names: tokenizer.model records its trainer options (input,
# model_prefix, threads), so the same command gives the same bytes.
# Options as Llama 2's tokenizer: BPE, digits split, byte fallback, no normalization, spaces kept;
# ids 0-3 = <unk> <s> </s> <pad>.
(cd "$work" && spm_train --input=corpus.txt --model_prefix=tokenizer --model_type=bpe \
  --vocab_size=1024 --character_coverage=1.0 --byte_fallback=true --split_digits=true \
  --normalization_rule_name=identity --remove_extra_whitespaces=false --add_dummy_prefix=true \
  --allow_whitespace_only_pieces=true --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 \
  --num_threads=1 --random_seed=42 --minloglevel=1)

echo "== 3/4 pretrain"
BUILD_DIR="$build" "$root/scripts/build.sh" demo_pretrain
rm -rf "$work/model"
nice -n "${DEMO_NICE:-19}" "$build/data/demo/recipe/demo_pretrain" --config "$here/pretrain.json" \
  --corpus "$work/corpus.txt" --tokenizer "$work/tokenizer.model" --out "$work/model" \
  --threads "$threads" | tee "$work/pretrain.log"

echo "== 4/4 install into $demo"
mkdir -p "$demo/model"
cp "$work/model/config.json" "$work/model/generation_config.json" "$work/model/model.safetensors" \
   "$work/tokenizer.model" "$here/tokenizer_config.json" "$demo/model/"
cp "$work/train.jsonl" "$work/eval.jsonl" "$demo/"
du -ch "$demo/model"/* "$demo"/*.jsonl | tail -1
echo "done: check with  cd $build && ctest -R demo --output-on-failure"
