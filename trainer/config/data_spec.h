// Plain descriptions of datasets, filled from the YAML config (trainer/config/load.h) and
// consumed by trainer/data. Key names follow Axolotl where it has one.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qlora::config {

// One dataset file. `type` picks the format:
//   text              {"text": "..."}                       (alias: completion)
//   alpaca            {"instruction", "input", "output"}
//   chat              {"messages": [{"role", "content"}]}   (alias: chat_template)
//   prompt_completion {"prompt", "completion"}               (alias: input_output)
struct DatasetSpec {
  // A data file (.jsonl, .json, .jsonl.gz, .json.gz, .parquet, .arrow, .csv, .tsv) or a directory
  // of them, as the datasets library lays them out (trainer/data/data_files.h).
  std::string path;
  std::string split = "train";  // for a directory: which split's files are read
  std::string ds_type;          // "" (from the extension) or json, parquet, arrow, csv
  std::string type = "alpaca";
  std::string field = "text";  // text: the field holding the text
  std::string field_instruction = "instruction";
  std::string field_input = "input";
  std::string field_output = "output";
  std::string field_messages = "messages";
  std::string message_field_role = "role";
  std::string message_field_content = "content";
  std::string field_prompt = "prompt";
  std::string field_completion = "completion";
  // chat: a record's "tools" array, when present, is passed to the template as `tools`.
};

// How samples become training sequences.
struct DataSpec {
  std::vector<DatasetSpec> datasets;       // training data
  std::vector<DatasetSpec> test_datasets;  // validation by file (the config allows this or val_set_size)
  double val_set_size = 0.0;               // fraction of the training samples held out, [0, 1)
  int64_t sequence_len = 2048;             // tokens per sequence; longer samples are truncated
  bool sample_packing = false;             // several samples per sequence, attention kept inside each
  bool train_on_inputs = false;            // false: prompt tokens are masked out of the loss
  bool skip_invalid = false;               // skip (and count) malformed lines instead of failing
  bool pad_to_sequence_len = false;        // pad every batch to sequence_len (fixed shapes)
  std::string chat_template;               // "" = the tokenizer's own; else a built-in name
                                           // (chatml, llama3, mistral, qwen2_5, gemma, ...),
                                           // one of the tokenizer's named templates, or Jinja text
  // Extra template variables, e.g. {date_string: "26 Jul 2024", enable_thinking: "false"}. Each
  // value is read as JSON when it parses (false, 3, [..]) and as a plain string otherwise. Setting
  // date_string keeps templates that print today's date (Llama 3.2) reproducible across days.
  std::map<std::string, std::string> chat_template_kwargs;
  uint64_t seed = 42;  // shuffling and the validation split
  // Tokenize through scratch files on disk instead of memory (data larger than memory); unset =
  // automatic (on when the data files exceed 1 GiB).
  std::optional<bool> streaming;
  std::string scratch_dir;  // where streaming's scratch files go ("" = $TMPDIR or /tmp); not a config key
};

}  // namespace qlora::config
