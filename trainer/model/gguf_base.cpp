#include "trainer/model/gguf_base.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <map>
#include <regex>
#include <set>

#include "trainer/common/error.h"
#include "trainer/io/dtype.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/safetensors.h"
#include "trainer/quant/ggml_dequant.h"

namespace qlora::model {

namespace {
// GGUF general.architecture -> HF model_type (gemma3 GGUF files hold the text model only).
std::string model_type_of(const std::string& arch) {
  if (arch == "gemma3") return "gemma3_text";
  return arch;
}

bool norm_plus_one(const std::string& arch) { return arch == "gemma2" || arch == "gemma3"; }
}  // namespace

std::optional<std::string> gguf_name_of(const std::string& hf, const std::string& arch) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static const std::regex re(R"(^model\.layers\.(\d+)\.(.+)\.(weight|bias)$)");
  std::smatch m;
  if (!std::regex_match(hf, m, re)) return std::nullopt;
  const std::string mod = m[2].str();
  const bool gemma2 = arch == "gemma2" || arch == "gemma3";
  static const std::map<std::string, std::string> names = {
      {"input_layernorm", "attn_norm"},
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.qkv_proj", "attn_qkv"},
      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      {"mlp.gate_up_proj", "ffn_up"},
      {"pre_feedforward_layernorm", "ffn_norm"},
      {"post_feedforward_layernorm", "post_ffw_norm"},
  };
  std::string g;
  if (mod == "post_attention_layernorm") {
    g = gemma2 ? "post_attention_norm" : "ffn_norm";
  } else {
    auto it = names.find(mod);
    if (it == names.end()) return std::nullopt;
    g = it->second;
  }
  return "blk." + m[1].str() + "." + g + "." + m[3].str();
}

namespace {
nlohmann::json hf_config_of(const io::GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  static const std::set<std::string> known = {"llama", "mistral", "qwen2",  "qwen3",
                                              "gemma", "gemma2",  "gemma3", "phi3"};
  if (!known.count(arch))
    user_error(f.path().string(), ": general.architecture: \"", shorten(arch),
               "\" is not supported (expected llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3 or phi3)");
  const std::string k = arch + ".";
  // llama.cpp stores Phi-3's longrope factors as tensors; reading them is not implemented, and
  // without them the model would compute with plain RoPE.
  if (arch == "phi3" && (f.contains("rope_factors_long.weight") || f.contains("rope_factors_short.weight")))
    user_error(f.path().string(), ": rope_factors_long.weight: a Phi-3 GGUF with longrope factors is not supported as ",
               "a base model; use the Hugging Face checkpoint of this model");
  auto positive = [&](const std::string& key) {
    const int64_t v = f.get_int(key);
    if (v <= 0) user_error(f.path().string(), ": ", key, ": expected a positive integer, got ", v);
    return v;
  };
  nlohmann::json j;
  j["model_type"] = model_type_of(arch);
  j["num_hidden_layers"] = positive(k + "block_count");
  j["hidden_size"] = positive(k + "embedding_length");
  j["intermediate_size"] = positive(k + "feed_forward_length");
  const int64_t heads = positive(k + "attention.head_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = f.has(k + "attention.head_count_kv") ? positive(k + "attention.head_count_kv") : heads;
  if (f.has(k + "attention.key_length"))
    j["head_dim"] = positive(k + "attention.key_length");
  else if ((arch == "llama" || arch == "mistral") && f.has(k + "rope.dimension_count"))
    j["head_dim"] = positive(k + "rope.dimension_count");
  if (f.has(k + "context_length")) j["max_position_embeddings"] = positive(k + "context_length");
  if (const auto e = f.find_float(k + "attention.layer_norm_rms_epsilon")) j["rms_norm_eps"] = *e;
  if (const auto t = f.find_float(k + "rope.freq_base")) j["rope_theta"] = *t;
  if (const auto s = f.find_string(k + "rope.scaling.type"); s && *s != "none") {
    if (*s != "linear")
      user_error(f.path().string(), ": ", k, "rope.scaling.type: \"", shorten(*s),
                 "\" is not supported (expected linear or none)");
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", f.get_float(k + "rope.scaling.factor")}};
  }
  if (const auto w = f.find_int(k + "attention.sliding_window")) j["sliding_window"] = *w;

  // vocab_size: the key, else the token list, else the embedding's rows
  if (f.has(k + "vocab_size")) {
    j["vocab_size"] = positive(k + "vocab_size");
  } else if (f.has("tokenizer.ggml.tokens")) {
    const auto& toks = f.value("tokenizer.ggml.tokens");
    if (!toks.is_array()) user_error(f.path().string(), ": tokenizer.ggml.tokens: expected an array of strings");
    j["vocab_size"] = toks.size();
  } else if (const io::GgufTensorInfo* e = f.find("token_embd.weight")) {
    j["vocab_size"] = e->shape()[0];
  } else {
    user_error(f.path().string(), ": ", k, "vocab_size: missing (and no tokenizer.ggml.tokens or token_embd.weight)");
  }
  j["tie_word_embeddings"] = !f.contains("output.weight");
  if (f.contains("blk.0.attn_q.bias") && arch != "qwen2") j["attention_bias"] = true;
  if (f.contains("blk.0.ffn_gate.bias") || f.contains("blk.0.ffn_up.bias")) j["mlp_bias"] = true;
  for (const char* id : {"bos", "eos", "pad"})
    if (const auto v = f.find_int(std::string("tokenizer.ggml.") + id + "_token_id"))
      j[std::string(id) + "_token_id"] = *v;
  // The dtype a merged export writes: the embedding's, when it is a float type.
  std::string dtype = "bfloat16";
  if (const io::GgufTensorInfo* e = f.find("token_embd.weight")) {
    if (e->type == static_cast<uint32_t>(io::GgmlType::F32)) dtype = "float32";
    if (e->type == static_cast<uint32_t>(io::GgmlType::F16)) dtype = "float16";
  }
  j["torch_dtype"] = dtype;
  return j;
}
}  // namespace

ModelConfig gguf_model_config(const io::GgufFile& f) { return parse_model_config(hf_config_of(f).dump(), f.path()); }

std::string gguf_hf_config_json(const io::GgufFile& f) {
  nlohmann::json j = hf_config_of(f);
  static const std::map<std::string, std::string> cls = {
      {"llama", "LlamaForCausalLM"},        {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"},        {"gemma", "GemmaForCausalLM"},     {"gemma2", "Gemma2ForCausalLM"},
      {"gemma3_text", "Gemma3ForCausalLM"}, {"phi3", "Phi3ForCausalLM"}};
  j["architectures"] = {cls.at(j["model_type"].get<std::string>())};
  return j.dump(2);
}

namespace {

class HfSource final : public TensorSource {
 public:
  explicit HfSource(const std::filesystem::path& dir) : ck_(dir) {}
  bool contains(const std::string& n) const override { return ck_.contains(n); }
  std::vector<int64_t> shape(const std::string& n) const override { return info(n).shape; }
  bool is_float(const std::string& n) const override { return io::is_float_weight_dtype(info(n).dtype); }
  std::string dtype_name(const std::string& n) const override { return info(n).dtype; }
  at::Tensor tensor(const std::string& n) override {
    info(n);
    return ck_.tensor(n);
  }
  void release(const std::string& n) override { io::release_mapped_pages(ck_.file_of(n).bytes(n)); }
  std::string where(const std::string& n) const override {
    return ck_.contains(n) ? ck_.file_of(n).path().string() + ": " + n : ck_.dir().string() + ": " + n;
  }
  std::string location() const override { return ck_.dir().string(); }
  const io::HfCheckpoint* hf() const override { return &ck_; }

 private:
  const io::TensorInfo& info(const std::string& n) const {
    if (!ck_.contains(n)) user_error(ck_.dir().string(), ": ", n, ": missing from the checkpoint");
    return ck_.info(n);
  }
  io::HfCheckpoint ck_;
};

class GgufSource final : public TensorSource {
 public:
  explicit GgufSource(const std::filesystem::path& p) : f_(p), config_(gguf_model_config(f_)) {
    arch_ = f_.get_string("general.architecture");
  }
  bool contains(const std::string& n) const override { return find(n) != nullptr; }
  std::vector<int64_t> shape(const std::string& n) const override { return info(n).shape(); }
  bool is_float(const std::string& n) const override { return quant::ggml_can_dequantize(info(n).type); }
  std::string dtype_name(const std::string& n) const override { return io::ggml_type_name(info(n).type); }
  at::Tensor tensor(const std::string& n) override {
    const io::GgufTensorInfo& t = info(n);
    at::Tensor x = quant::gguf_tensor_f32(f_, t.name).reshape(shape(n));
    io::release_mapped_pages(f_.bytes(t.name));  // the stored bytes are consumed: only the fp32 copy stays
    check_finite(x, n);
    if (arch_ == "llama" && x.dim() >= 1) {
      // llama.cpp's converter interleaves the RoPE pairs of q and k rows; back to HF's halves
      if (t.name.find(".attn_q.") != std::string::npos) x = unpermute(x, config_.num_attention_heads, n);
      if (t.name.find(".attn_k.") != std::string::npos) x = unpermute(x, config_.num_key_value_heads, n);
    }
    if (norm_plus_one(arch_) && t.name.find("norm.weight") != std::string::npos) x.sub_(1.0f);
    return x;
  }
  void release(const std::string& n) override { io::release_mapped_pages(f_.bytes(info(n).name)); }
  std::string where(const std::string& n) const override {
    const io::GgufTensorInfo* t = find(n);
    return f_.path().string() + ": " + (t ? t->name : n);
  }
  std::string location() const override { return f_.path().string(); }

 private:
  const io::GgufTensorInfo* find(const std::string& n) const {
    const auto g = gguf_name_of(n, arch_);
    return g ? f_.find(*g) : nullptr;
  }
  const io::GgufTensorInfo& info(const std::string& n) const {
    const io::GgufTensorInfo* t = find(n);
    if (!t) {
      const auto g = gguf_name_of(n, arch_);
      user_error(f_.path().string(), ": ", g ? *g : n, ": missing from the GGUF file (needed for ", n, ")");
    }
    return *t;
  }
  at::Tensor unpermute(const at::Tensor& w, int64_t n_head, const std::string& n) const {
    const int64_t rows = w.size(0);
    if (n_head <= 0 || rows % (2 * n_head))
      user_error(where(n), ": ", rows, " rows cannot be split into ", n_head, " heads of RoPE pairs");
    std::vector<int64_t> s = {n_head, rows / n_head / 2, 2};
    for (int64_t d = 1; d < w.dim(); ++d) s.push_back(w.size(d));
    return w.reshape(s).transpose(1, 2).reshape(w.sizes()).contiguous();
  }
  // One pass over the values, no temporaries (the tensor may be the largest of the model).
  void check_finite(const at::Tensor& x, const std::string& n) const {
    const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(x.const_data_ptr()), x.nbytes());
    if (const auto bad = io::find_nonfinite("F32", bytes))
      user_error(where(n), ": non-finite values after dequantization (", *bad, ")");
  }
  io::GgufFile f_;
  ModelConfig config_;
  std::string arch_;
};

}  // namespace

std::unique_ptr<TensorSource> open_tensor_source(const std::filesystem::path& base) {
  if (io::is_gguf_file(base)) return std::make_unique<GgufSource>(base);
  return std::make_unique<HfSource>(base);
}

}  // namespace qlora::model
