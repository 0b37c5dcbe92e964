// Autoregressive generation with a Model: greedy or sampled (temperature, top-k, top-p), stopping
// at any of the stop ids. Tokens are streamed to `on_token` as they are chosen.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/model/model.h"

namespace qlora::model {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;       // 0: greedy (argmax)
  int64_t top_k = 0;              // 0: off
  double top_p = 1.0;             // 1: off
  std::vector<int32_t> stop_ids;  // e.g. EOS; the stop token is returned but ends generation
  uint64_t seed = 0;
};

// The new tokens (without the prompt). The model is used in eval mode (no dropout, no grad).
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace qlora::model
