// qlora inspect MODEL_DIR [--json]: architecture, layer shapes, parameter counts and the memory the
// weights take in NF4 (with double-quantization statistics) vs 16-bit. Reads config.json and the
// safetensors headers only.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>

#include "trainer/cli/commands.h"
#include "trainer/common/fs.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/model/model_config.h"
#include "trainer/model/summary.h"
#include "trainer/quant/bnb_nf4.h"

namespace qlora::cli {

namespace {

using json = nlohmann::json;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// 1234567 -> "1,234,567"
std::string grouped(int64_t v) {
  std::string d = std::to_string(v), o;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) o += ',';
    o += d[i];
  }
  return o;
}

std::string pct(int64_t a, int64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", b ? 100.0 * static_cast<double>(a) / static_cast<double>(b) : 0.0);
  return buf;
}

// Checks the checkpoint holds every tensor the config implies; returns problems (empty = fine).
std::vector<std::string> check_checkpoint(const io::HfCheckpoint& ck, const model::ModelConfig& c,
                                          const model::ModelSummary& s) {
  std::vector<std::string> problems;
  auto check = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && quant::is_bnb_4bit(ck, prefix)) return;
    if (!ck.contains(name)) {
      problems.push_back(name + ": missing");
    } else if (ck.info(name).shape != shape) {
      problems.push_back(name + ": shape " + shape_str(ck.info(name).shape) + ", expected " + shape_str(shape));
    }
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (const auto& t : s.layer_tensors) check("model.layers." + std::to_string(l) + "." + t.name, t.shape);
  for (const auto& t : s.other_tensors) check(t.name, t.shape);
  return problems;
}

// The exit status: 2 with the usual one error line when the checkpoint has problems.
int report_problems(const std::string& model, const std::vector<std::string>& problems) {
  if (problems.empty()) return 0;
  std::cout.flush();
  std::fprintf(stderr, "qlora: error: %s: %zu checkpoint problem%s, the first: %s\n", model.c_str(), problems.size(),
               problems.size() == 1 ? "" : "s", problems[0].c_str());
  return 2;
}

}  // namespace

int run_inspect(const InspectArgs& a) {
  const model::ModelConfig c = model::read_model_config(a.model);
  const model::ModelSummary s = model::summarize(c, 64);
  io::HfCheckpoint ck(a.model);
  std::map<std::string, int64_t> dtype_bytes;
  int64_t bnb_linears = 0;
  for (const auto& n : ck.names()) dtype_bytes[ck.info(n).dtype] += static_cast<int64_t>(ck.info(n).nbytes());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (const model::LinearSpec& m : model::layer_linears(c))
      if (quant::is_bnb_4bit(ck, model::layer_prefix(l) + m.path)) ++bnb_linears;
  const std::vector<std::string> problems = check_checkpoint(ck, c, s);

  std::string rope = c.rope.type;
  std::ostringstream rope_detail;
  rope_detail << "theta " << c.rope.theta;
  if (c.rope.type != "default") rope_detail << ", factor " << c.rope.factor;
  if (c.rope.type == "llama3")
    rope_detail << ", low_freq_factor " << c.rope.low_freq_factor << ", high_freq_factor " << c.rope.high_freq_factor
                << ", original_max_position_embeddings " << c.rope.original_max_position_embeddings;

  if (a.json) {
    json j;
    j["model"] = a.model;
    j["model_type"] = c.model_type;
    j["architecture"] = c.architecture;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["head_dim"] = c.head_dim;
    j["vocab_size"] = c.vocab_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["rope"] = {{"type", c.rope.type}, {"theta", c.rope.theta}, {"factor", c.rope.factor}};
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["bias"] = {{"qkv", c.qkv_bias}, {"o", c.o_bias}, {"mlp", c.mlp_bias}};
    j["qk_norm"] = c.qk_norm;
    j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
    j["torch_dtype"] = c.torch_dtype;
    j["bnb_4bit"] = c.quantization.has_value();
    if (c.gemma) {
      auto opt = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
      j["gemma"] = {{"query_pre_attn_scalar", c.query_pre_attn_scalar},
                    {"attn_logit_softcapping", opt(c.attn_logit_softcapping)},
                    {"final_logit_softcapping", opt(c.final_logit_softcapping)},
                    {"sliding_layers", std::count(c.layer_sliding.begin(), c.layer_sliding.end(), true)}};
      if (c.rope_local) j["gemma"]["rope_local"] = {{"type", c.rope_local->type}, {"theta", c.rope_local->theta}};
    }
    json lt = json::array();
    for (const auto& t : s.layer_tensors) lt.push_back({{"name", t.name}, {"shape", t.shape}});
    j["layer_tensors"] = lt;
    json ot = json::array();
    for (const auto& t : s.other_tensors) ot.push_back({{"name", t.name}, {"shape", t.shape}});
    j["other_tensors"] = ot;
    j["parameters"] = {{"total", s.total_parameters},         {"linear", s.linear_parameters},
                       {"embedding", s.embedding_parameters}, {"norm", s.norm_parameters},
                       {"bias", s.bias_parameters},           {"router", s.router_parameters}};
    auto mem = [](const model::NF4Memory& m) {
      return json{{"codes_bytes", m.codes_bytes},
                  {"stats_bytes", m.stats_bytes},
                  {"rest_16bit_bytes", m.rest_bytes},
                  {"total_bytes", m.total()},
                  {"bits_per_linear_weight", m.bits_per_linear_weight}};
    };
    j["memory"] = {{"bytes_16bit", s.bytes_16bit},
                   {"nf4_blocksize", s.blocksize},
                   {"nf4_double_quant", mem(s.nf4_dq)},
                   {"nf4", mem(s.nf4)}};
    j["checkpoint"] = {{"files", ck.files().size()},
                       {"bytes", ck.total_bytes()},
                       {"bytes_by_dtype", dtype_bytes},
                       {"bnb_4bit_linears", bnb_linears},
                       {"problems", problems}};
    std::cout << j.dump(2) << "\n";
    return report_problems(a.model, problems);
  }

  auto& o = std::cout;
  o << "model: " << a.model << "\n";
  o << "architecture: " << (c.architecture.empty() ? "?" : c.architecture) << " (model_type " << c.model_type << ")\n";
  o << "layers " << c.num_hidden_layers << ", hidden " << c.hidden_size << ", intermediate " << c.intermediate_size
    << ", heads " << c.num_attention_heads << " (kv " << c.num_key_value_heads << ", head_dim " << c.head_dim
    << "), vocab " << c.vocab_size << "\n";
  o << "rope: " << rope << " (" << rope_detail.str() << "), max_position_embeddings " << c.max_position_embeddings
    << ", rms_norm_eps " << c.rms_norm_eps << "\n";
  std::string bias;
  if (c.qkv_bias) bias += "q,k,v";
  if (c.o_bias) bias += bias.empty() ? "o" : ",o";
  if (c.mlp_bias) bias += bias.empty() ? "gate,up,down" : ",gate,up,down";
  o << "tied embeddings: " << (c.tie_word_embeddings ? "yes" : "no") << ", biases: " << (bias.empty() ? "none" : bias)
    << ", qk-norm: " << (c.qk_norm ? "yes" : "no")
    << ", sliding window: " << (c.sliding_window ? std::to_string(*c.sliding_window) : std::string("none")) << "\n";
  if (c.gemma) {
    auto cap = [](const std::optional<double>& v) {
      std::ostringstream s;
      if (v) s << *v;
      return v ? s.str() : std::string("none");
    };
    o << "gemma: sliding layers " << std::count(c.layer_sliding.begin(), c.layer_sliding.end(), true) << " of "
      << c.num_hidden_layers << ", query_pre_attn_scalar " << c.query_pre_attn_scalar << ", soft-caps: attention "
      << cap(c.attn_logit_softcapping) << ", logits " << cap(c.final_logit_softcapping);
    if (c.rope_local) o << ", local rope theta " << c.rope_local->theta;
    o << "\n";
  }
  o << "weights: " << c.torch_dtype;
  if (c.quantization)
    o << ", bitsandbytes 4-bit " << c.quantization->quant_type
      << (c.quantization->double_quant ? " (double quant)" : "") << ", " << bnb_linears
      << " linear layers stored in NF4";
  o << "; " << ck.files().size() << " safetensors file" << (ck.files().size() == 1 ? "" : "s") << ", "
    << fs::format_bytes(ck.total_bytes()) << "\n\n";

  o << "each of the " << c.num_hidden_layers << " decoder layers (model.layers.N.):\n";
  for (const auto& t : s.layer_tensors) {
    std::string n = t.name;
    n.resize(std::max<size_t>(n.size(), 34), ' ');
    o << "  " << n << shape_str(t.shape) << "\n";
  }
  for (const auto& t : s.other_tensors) {
    std::string n = t.name;
    n.resize(std::max<size_t>(n.size(), 36), ' ');
    o << n << shape_str(t.shape) << "\n";
  }
  if (c.tie_word_embeddings) o << "lm_head.weight                      tied to model.embed_tokens.weight\n";

  o << "\nparameters:\n";
  o << "  total                " << grouped(s.total_parameters) << "\n";
  o << "  linear (quantizable) " << grouped(s.linear_parameters) << " (" << pct(s.linear_parameters, s.total_parameters)
    << ")\n";
  o << "  embeddings           " << grouped(s.embedding_parameters) << " ("
    << (c.tie_word_embeddings ? "embed_tokens, tied lm_head" : "embed_tokens + lm_head") << ")\n";
  o << "  norms                " << grouped(s.norm_parameters) << "\n";
  if (s.bias_parameters) o << "  biases               " << grouped(s.bias_parameters) << "\n";
  if (s.router_parameters) o << "  routers (16-bit)     " << grouped(s.router_parameters) << "\n";
  if (c.is_moe())
    o << "  experts              " << c.num_experts << " per layer, " << c.num_experts_per_tok << " active per token\n";

  char buf[256];
  o << "\nmemory of the weights:\n";
  o << "  16-bit (bf16)                   " << fs::format_bytes(s.bytes_16bit) << "\n";
  auto line = [&](const char* what, const model::NF4Memory& m) {
    std::snprintf(buf, sizeof buf, "%.3f", m.bits_per_linear_weight);
    o << "  " << what << fs::format_bytes(m.total()) << "  (linear: codes " << fs::format_bytes(m.codes_bytes)
      << " + statistics " << fs::format_bytes(m.stats_bytes) << " = " << buf << " bits/weight; 16-bit rest "
      << fs::format_bytes(m.rest_bytes) << "; " << pct(m.total(), s.bytes_16bit) << " of 16-bit)\n";
  };
  line("NF4, double quant (default)     ", s.nf4_dq);
  line("NF4, float32 absmax             ", s.nf4);
  o << "  (blocksize " << s.blocksize
    << "; double quantization stores absmax as uint8 + a float32 scale per 256 blocks)\n";

  if (!problems.empty()) {
    o << "\ncheckpoint problems (" << problems.size() << "):\n";
    for (size_t i = 0; i < problems.size() && i < 10; ++i) o << "  " << problems[i] << "\n";
    if (problems.size() > 10) o << "  ... and " << problems.size() - 10 << " more\n";
  }
  return report_problems(a.model, problems);
}

}  // namespace qlora::cli
