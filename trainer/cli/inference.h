// What `qlora generate` and `qlora eval` share: the model (base, optionally with a trained
// adapter) and its tokenizer, loaded from the command line's --model / --adapter / --device.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "trainer/config/config.h"
#include "trainer/model/model.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::cli {

struct InferenceModel {
  model::Model model;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  std::filesystem::path model_dir;           // the base model directory
  std::optional<config::TrainConfig> train;  // the adapter's training config, when it has one
  std::string description;                   // one line: what was loaded, how, where, how long
};

// --model DIR (may be empty when the adapter names its base), --adapter PATH (checkpoint, run
// directory or PEFT directory; empty: none). Without an adapter the base is held 16-bit unless
// load_in_4bit; with one, as it was trained (NF4 for a plain PEFT directory). Prints nothing.
InferenceModel load_inference_model(const std::string& model_dir, const std::string& adapter, const std::string& device,
                                    bool load_in_4bit);

}  // namespace qlora::cli
