// Dataset formats: one record → one tokenized sample with labels.
//   text               {"text"}: every token trained
//   alpaca             {"instruction", "input"?, "output"}: the standard Alpaca prompt, output trained
//   chat               {"messages": [{"role", "content"}, ...]}: rendered with the chat template,
//                      assistant turns trained
//   prompt_completion  {"prompt", "completion"}: completion trained
// With train_on_inputs every token is trained. The tokenizer's BOS is added once when it adds
// one and the text does not start with it (never a second BOS after a template's own), and EOS
// ends every sample, trained, even when the tokenizer pads with EOS.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/data_spec.h"
#include "trainer/data/records.h"
#include "trainer/tokenizer/chat_template.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::data {

constexpr int32_t kIgnoreIndex = -100;  // label of a token the loss skips

struct Sample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;  // input_ids where trained, kIgnoreIndex elsewhere
};

// "text", "alpaca", "chat" or "prompt_completion" for a DatasetSpec::type (aliases: completion,
// chat_template, input_output); UserError naming `where` for an unknown type.
std::string canonical_type(const std::string& type, const std::string& where);

// The standard Alpaca prompt (with or without the input section) that precedes the output.
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

// Builds the samples of one dataset. Thread-safe (records may be built in parallel).
class SampleBuilder {
 public:
  // `chat` is required for the chat format (see ChatTemplate::resolve).
  SampleBuilder(const config::DatasetSpec& dataset, const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                const tok::ChatTemplate* chat);
  // UserError "<record.where>: ..." for a record that does not fit the format.
  Sample build(const Record& record) const;

 private:
  struct Text {
    std::string text;
    std::vector<std::pair<size_t, size_t>> trained;  // byte spans
    bool ends_trained = true;                        // is an appended EOS trained?
  };
  Text prepare(const Record& record) const;
  Text prepare_chat(const Record& record) const;

  config::DatasetSpec ds_;
  std::string type_;
  tok::ChatTemplate::Vars template_vars_;  // DataSpec::chat_template_kwargs
  bool train_on_inputs_;
  const tok::Tokenizer& tk_;
  const tok::ChatTemplate* chat_;
};

}  // namespace qlora::data
