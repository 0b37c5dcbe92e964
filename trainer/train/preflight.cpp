#include "trainer/train/preflight.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/data/prepared.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/model/lora.h"
#include "trainer/model/saved_modules.h"

namespace qlora::train {

namespace {

// A targeted projection: its shape and whether LoRA adapts it, per layer.
struct Proj {
  std::string name;
  double out = 0, in = 0;
  int64_t adapted_layers = 0;
};

std::vector<Proj> projections(const config::TrainConfig& cfg, const model::ModelConfig& mc) {
  std::vector<Proj> out;
  for (const model::LinearSpec& s : model::layer_linears(mc)) {
    Proj p{s.name, static_cast<double>(s.out), static_cast<double>(s.in), 0};
    for (int64_t l = 0; l < mc.num_hidden_layers; ++l)
      p.adapted_layers += model::lora_targets(cfg.lora, model::layer_prefix(l) + s.path);
    out.push_back(p);
  }
  return out;
}

}  // namespace

void check_shapes(const config::TrainConfig& cfg, const model::ModelConfig& mc) {
  const config::ModelConfigOverrides& mo = cfg.model_overrides;
  for (const auto& [key, set] :
       {std::pair<const char*, bool>{"output_router_logits", mo.output_router_logits.has_value()},
        {"router_aux_loss_coef", mo.router_aux_loss_coef.has_value()}})
    if (set && !mc.is_moe())
      user_error(cfg.where(std::string("overrides_of_model_config.") + key), ": overrides_of_model_config.", key, ": ",
                 mc.model_type, " is not a mixture of experts (it has no router)");
  const int64_t r = cfg.lora.r;
  for (const Proj& p : projections(cfg, mc)) {
    if (p.adapted_layers == 0) continue;
    const auto dim = static_cast<int64_t>(std::min(p.in, p.out));
    if (r > dim)
      user_error(cfg.where("lora_r"), ": lora_r: ", r, " is above the smallest dimension of ", p.name, " (",
                 static_cast<int64_t>(p.out), " x ", static_cast<int64_t>(p.in), ") in ", mc.path.string(),
                 "; a LoRA rank is at most min(in, out) of the layers it adapts");
  }
  const int64_t S = cfg.data.sequence_len;
  constexpr int64_t kMaxPos = std::numeric_limits<int32_t>::max();
  if (S > kMaxPos)
    user_error(cfg.where("sequence_len"), ": sequence_len: ", S, " is beyond what 32-bit token positions hold (",
               kMaxPos, ")");
  const int64_t mpe = mc.max_position_embeddings;
  if (mpe > 0 && S > 8 * mpe)
    user_error(cfg.where("sequence_len"), ": sequence_len: ", S, " is more than 8 times the model's ",
               "max_position_embeddings (", mpe, " in ", mc.path.string(), ")");
  if (mpe > 0 && S > mpe)
    std::fprintf(stderr,
                 "qlora: warning: %s: sequence_len: %lld is beyond the model's max_position_embeddings (%lld)\n",
                 cfg.where("sequence_len").c_str(), static_cast<long long>(S), static_cast<long long>(mpe));
  // the largest tensors of a micro-batch: logits [B, S, V] and attention scores [B, heads, S, S]
  const double tokens = static_cast<double>(cfg.micro_batch_size) * static_cast<double>(S);
  const double widest = std::max({static_cast<double>(mc.vocab_size), static_cast<double>(mc.intermediate_size),
                                  static_cast<double>(mc.num_attention_heads) * static_cast<double>(S)});
  if (tokens * widest > 4.6e18)
    user_error(cfg.where("micro_batch_size"), ": micro_batch_size: ", cfg.micro_batch_size, " rows of sequence_len ", S,
               " make tensors with more elements than 64-bit sizes count");
}

void check_config_against_model(const config::TrainConfig& cfg, const model::ModelConfig& mc) {
  located(cfg, [&] {
    model::resolve_lora_targets(cfg.lora, mc);
    model::resolve_modules_to_save(cfg.lora.modules_to_save, mc, cfg.lora.ensure_weight_tying);
    return 0;
  });
  check_shapes(cfg, mc);
}

data::Datasets prepare_run_data(const config::TrainConfig& cfg, const tok::Tokenizer& tk, const std::string& tok_path,
                                const std::function<void(const std::string&)>& log) {
  return located(cfg, [&] {
    if (cfg.dataset_prepared_path.empty()) return data::build_datasets(cfg.data, tk, log);
    return data::prepare_datasets(
        cfg.data, tk, model::base_tokenizer_digest(tok_path), cfg.dataset_prepared_path, log,
        [](const std::string& w) { std::fprintf(stderr, "qlora: warning: %s\n", w.c_str()); });
  });
}

std::string MemoryEstimate::describe() const {
  return "about " + fs::format_bytes(total()) + " (weights " + fs::format_bytes(weights) + ", LoRA+optimizer " +
         fs::format_bytes(lora) + ", activations " + fs::format_bytes(activations + working) + ")";
}

namespace {

// The plan's parts summed into the estimate's groups.
MemoryEstimate grouped(const MemoryPlan& p) {
  MemoryEstimate e;
  for (const MemoryPart& m : p.parts) {
    if (m.name.find("base weights") != std::string::npos || m.name.starts_with("embeddings"))
      e.weights += m.bytes;
    else if (m.name.starts_with("LoRA") || m.name.starts_with("optimizer"))
      e.lora += m.bytes;
    else if (m.name == "activations")
      e.activations += m.bytes;
    else if (m.name.starts_with("step working set"))
      e.working += m.bytes;
    else
      e.transient += m.bytes;
  }
  e.peak = p.peak();
  return e;
}

}  // namespace

MemoryEstimate estimate_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device) {
  return grouped(plan_memory(cfg, mc, device, full_rows(cfg)));
}

uint64_t check_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                      const DataShape& data, int processes, uint64_t budget_bytes) {
  const MemoryPlan p = plan_memory(cfg, mc, device, data);
  const MemoryEstimate e = grouped(p);
  const std::optional<Budget> budget = budget_bytes > 0 ? std::optional<Budget>(Budget{budget_bytes, "given"})
                                                        : memory_budget(device, device.is_cuda() ? 1 : processes);
  if (!budget) return p.peak();
  const std::string per = !device.is_cuda() && processes > 1 ? " per process" : "";
  if (p.peak() <= budget->bytes) {
    std::printf("memory: the run needs %s%s; %s available (%s)\n", e.describe().c_str(), per.c_str(),
                fs::format_bytes(budget->bytes).c_str(), budget->source.c_str());
    return p.peak();
  }
  // The key named is the one behind the heaviest part; the advice, the changes that fit.
  const uint64_t act = e.activations + e.working, w = p.load_peak;
  std::string key, advice;
  if (act >= w && act >= e.lora) {
    key = cfg.micro_batch_size > 1 ? "micro_batch_size" : "sequence_len";
    advice = "lower micro_batch_size or sequence_len";
    if (!cfg.gradient_checkpointing) advice += ", or set gradient_checkpointing: true";
  } else if (e.lora >= w) {
    key = "lora_r";
    advice = "lower lora_r or adapt fewer modules";
  } else {
    key = "base_model";
    advice = cfg.lora.adapter == "qlora" ? "choose a smaller model" : "use adapter: qlora or a smaller model";
  }
  const std::vector<Fix> fixes = fixes_for(cfg, mc, device, data, budget->bytes);
  if (!fixes.empty()) {
    advice = "it fits with ";
    for (size_t i = 0; i < fixes.size() && i < 3; ++i) advice += (i ? "; or " : "") + fixes[i].change;
  }
  const std::string msg = cfg.where(key) + ": " + key + ": this run needs " + e.describe() + per + " but " +
                          fs::format_bytes(budget->bytes) + " is available (" + budget->source + "); " + advice +
                          " (qlora plan shows the parts)";
  if (cfg.memory_check) user_error(msg, "; or set memory_check: false to try anyway");
  std::fprintf(stderr, "qlora: warning: %s (memory_check: false: trying anyway)\n", msg.c_str());
  return p.peak();
}

}  // namespace qlora::train
