#!/usr/bin/env bash
# The README's first command: set up (idempotent), build, and run the main job: QLoRA
# fine-tuning of the embedded demo model (configs/demo.yaml), evaluated before and after, then
# exported as a PEFT adapter and as a merged Hugging Face model.
#   scripts/demo.sh [--set key=value ...]      (extra arguments go to `qlora train`)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "$root"
run=runs/demo
if [ -e "$run" ]; then
  # A fresh run never overwrites an earlier one: keep it under a dated name.
  old="$run.$(date +%Y%m%d-%H%M%S)"
  mv "$run" "$old"
  echo "demo: the previous run was moved to $old"
fi
./build/qlora train configs/demo.yaml --set output_dir="$run" "$@"
./build/qlora export "$run" --format peft --out "$run/export/adapter"
./build/qlora export "$run" --format merged --out "$run/export/merged"
cat <<MSG

demo: done. Everything is under $root/$run:
  metrics.jsonl, loss.svg        training / eval curves (open loss.svg in a browser)
  checkpoints/latest             the final checkpoint (resume with: qlora train configs/demo.yaml --resume)
  export/adapter                 PEFT LoRA adapter (PeftModel.from_pretrained(base, this))
  export/merged                  merged Hugging Face model (AutoModelForCausalLM.from_pretrained(this))
Try it:  ./build/qlora generate --model $run/export/merged --prompt "Convert the date 2031-07-04 to words." --chat
MSG
