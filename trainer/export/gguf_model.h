// The metadata of a merged model written as one llama.cpp GGUF file (qlora export --format gguf,
// docs/formats.md §6.6): the architecture's hyperparameters as llama.cpp's convert_hf_to_gguf.py
// names them, and the tokenizer of the run as tokenizer.ggml.* keys.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "trainer/io/gguf.h"
#include "trainer/model/model_config.h"

namespace qlora::exporter {

// llama.cpp's architecture name for a model: llama (Llama and Mistral, as llama.cpp runs them),
// qwen2, qwen3. UserError naming the model_type for anything else.
std::string gguf_architecture(const model::ModelConfig& mc);

// "f16" | "bf16" | "q8_0" | "f32" (llama.cpp's --outtype names) -> tensor type of the 2-D
// weights; UserError naming `what` otherwise.
io::GgufOutType parse_gguf_outtype(const std::string& s, const std::string& what);

// general.*, {arch}.* hyperparameters. `file_type` is llama.cpp's LLAMA_FTYPE for the outtype.
// UserError for a RoPE scaling llama.cpp's metadata cannot express.
void add_gguf_model_metadata(io::GgufMetadata& m, const model::ModelConfig& mc, const std::string& arch,
                             const std::string& name, io::GgufOutType outtype);

// tokenizer.ggml.* and tokenizer.chat_template of the tokenizer at `tokenizer` (a model directory
// with tokenizer.json or tokenizer.model, or a GGUF file, whose keys are copied), padded with
// [PADn] tokens to `vocab_size` rows. UserError naming the file and key for a tokenizer GGUF
// cannot describe (a pre-tokenizer llama.cpp has no name for, a Unigram model...).
void add_gguf_tokenizer_metadata(io::GgufMetadata& m, const std::filesystem::path& tokenizer, int64_t vocab_size);

}  // namespace qlora::exporter
