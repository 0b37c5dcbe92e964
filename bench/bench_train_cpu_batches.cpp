// The micro-batches `qlora train` feeds its first steps, written out for the reference side of
// bench/bench_train_cpu.py (transformers + peft + bitsandbytes trains on exactly these tensors).
//
//   build/bench/bench_train_cpu_batches CONFIG STEPS OUT.safetensors [key=value ...]
//
// Builds the datasets and the loader as run_training does (same config, seed, tokenizer) and
// writes input_ids_<k>, labels_<k> (the HF label convention) and attention_mask_<k> (1 on tokens,
// 0 on padding), int64 [B, T], k = 0 .. STEPS-1, for gradient_accumulation_steps 1.
// Not a benchmark itself.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/io/safetensors.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace qlora;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s CONFIG STEPS OUT.safetensors [key=value ...]\n", argv[0]);
    return 2;
  }
  try {
    const std::vector<std::string> overrides(argv + 4, argv + argc);
    const config::TrainConfig cfg = config::load_config(argv[1], overrides);
    if (cfg.gradient_accumulation_steps != 1) user_error(argv[1], ": gradient_accumulation_steps must be 1 here");
    const int64_t steps = std::atoll(argv[2]);
    const std::string tok_path = cfg.tokenizer.empty() ? cfg.base_model : cfg.tokenizer;
    std::unique_ptr<tok::Tokenizer> tk = tok::load_tokenizer(tok_path);
    data::Datasets ds = data::build_datasets(cfg.data, *tk);
    data::DataLoader loader(ds.train, cfg.micro_batch_size, cfg.seed, /*shuffle=*/true, cfg.data.pad_to_sequence_len);
    io::SafetensorsWriter w;
    for (int64_t k = 0; k < steps; ++k) {
      data::Batch b = loader.next();
      w.add("input_ids_" + std::to_string(k), b.input_ids);
      w.add("labels_" + std::to_string(k), b.labels);
      w.add("attention_mask_" + std::to_string(k), b.segment_ids.ne(0).to(at::kLong));
    }
    w.set_metadata("pad_id", std::to_string(ds.train->pad_id));
    w.write(argv[3]);
  } catch (const UserError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
