// The training suites' config for the fixture of tests/python/train_fixture.py (a tiny Llama, alpaca
// train/eval records): QLoRA r 8 on every linear, 8 steps of 2 x 2 rows, an eval every 3 steps.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>

namespace qlora::test {

// Writes DIR/cfg.yaml for the fixture in `fix`, with `extra` lines appended, and returns its path.
inline std::filesystem::path write_fixture_config(const std::filesystem::path& fix, const std::filesystem::path& dir,
                                                  const std::string& extra = "") {
  std::ofstream o(dir / "cfg.yaml");
  o << "base_model: " << (fix / "model").string() << "\n"
    << "adapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.1\nlora_target_linear: true\n"
    << "sequence_len: 256\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\nmax_steps: 8\n"
    << "learning_rate: 0.002\nlr_scheduler: cosine\nwarmup_steps: 2\n"
    << "datasets:\n  - path: " << (fix / "train.jsonl").string() << "\n    type: alpaca\n"
    << "test_datasets:\n  - path: " << (fix / "eval.jsonl").string() << "\n    type: alpaca\n"
    << "eval_steps: 3\noutput_dir: " << (dir / "run").string() << "\n"
    << extra;
  return dir / "cfg.yaml";
}

}  // namespace qlora::test
