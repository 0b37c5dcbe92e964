// Autoregressive generation with a Model and a KV cache: the prompt is run once (prefill), then
// one token per step attends to the cached keys/values. Greedy or sampled (temperature, top-k,
// top-p, in transformers' warper order), stopping at any of the stop ids. Tokens are streamed to
// `on_token` as they are chosen.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "trainer/model/model.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::model {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;       // 0: greedy (argmax)
  int64_t top_k = 0;              // 0: off
  double top_p = 1.0;             // 1: off
  std::vector<int32_t> stop_ids;  // e.g. EOS; the stop token is returned but ends generation
  uint64_t seed = 0;
  bool use_cache = true;  // false: re-run the whole sequence every step (for comparison)
};

// The new tokens (without the prompt). The model is used in eval mode (no dropout, no grad).
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token = nullptr);

// Picks the next token from float32 logits [vocab] (greedy when temperature <= 0).
int32_t choose_token(const at::Tensor& logits, const GenerateOptions& opt, at::Generator& gen);

// Every end-of-sequence id of a model directory, as transformers stops on them: eos_token_id of
// generation_config.json and config.json (one id or a list) and the tokenizer's EOS. Sorted,
// without duplicates.
std::vector<int32_t> stop_ids_of(const std::filesystem::path& model_dir, const ModelConfig& config,
                                 const tok::Tokenizer* tokenizer);

// Incremental detokenization for streaming: push() one id at a time and get the text that became
// final (decode(all ids) minus what was already returned). Text is held back while it ends in an
// incomplete UTF-8 sequence (decoded as U+FFFD) or in a run of byte-fallback pieces (<0xNN>,
// which decode as one group: an invalid run becomes U+FFFD per byte); the concatenation of
// everything returned plus flush() equals decode(ids, skip_special_tokens).
class TextStream {
 public:
  TextStream(const tok::Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tok_(tokenizer), skip_special_(skip_special_tokens) {}
  std::string push(int32_t id);
  std::string flush();
  const std::string& text() const { return printed_; }

 private:
  const tok::Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  std::string printed_;
};

}  // namespace qlora::model
