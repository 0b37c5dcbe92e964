#include "trainer/train/preflight.h"

#ifdef QLORA_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cstdio>
#include <limits>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/common/memory.h"
#include "trainer/model/cross_entropy.h"
#include "trainer/model/lora.h"

namespace qlora::train {

namespace {

// Bytes as a double (no overflow for absurd configs), clamped when stored.
uint64_t to_bytes(double b) {
  if (!(b >= 0)) return 0;
  if (b >= 1.8e19) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(b);
}

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

double compute_bytes(const config::TrainConfig& cfg, at::Device device) {
  const std::string& d = cfg.quantization.compute_dtype;
  if (d == "fp32") return 4;
  if (d == "bf16" || d == "fp16") return 2;
  return device.is_cuda() ? 2 : 4;  // auto
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

std::string MemoryEstimate::describe() const {
  return "about " + fs::format_bytes(total()) + " (weights " + fs::format_bytes(weights + transient) +
         ", LoRA+optimizer " + fs::format_bytes(lora) + ", activations " + fs::format_bytes(activations + logits) + ")";
}

MemoryEstimate estimate_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device) {
  const double cb = compute_bytes(cfg, device);
  const double H = static_cast<double>(mc.hidden_size), I = static_cast<double>(mc.intermediate_size);
  const double V = static_cast<double>(mc.vocab_size), L = static_cast<double>(mc.num_hidden_layers);
  const double Qo = static_cast<double>(mc.q_out()), KVo = static_cast<double>(mc.kv_out());
  const double r = static_cast<double>(cfg.lora.r);
  const double B = static_cast<double>(cfg.micro_batch_size), S = static_cast<double>(cfg.data.sequence_len);
  const double T = B * S;  // tokens of a full micro-batch
  const bool nf4 = cfg.lora.adapter == "qlora";
  const double per_weight = nf4 ? 0.5 + 4.0 / static_cast<double>(cfg.quantization.blocksize) : cb;

  MemoryEstimate e;
  double weights = V * H * cb * (mc.tie_word_embeddings ? 1 : 2) + (2 * L + 1) * H * cb;
  if (mc.qk_norm) weights += 2 * L * static_cast<double>(mc.head_dim) * cb;
  if (mc.is_moe())  // routers (and qwen2_moe's shared-expert gates) stay 16-bit
    weights += L * (static_cast<double>(mc.num_experts) + (mc.shared_expert_intermediate_size > 0 ? 1 : 0)) * H * cb;
  if (mc.gemma) weights += 2 * L * H * cb;               // pre- and post-feedforward norms
  double lora_params = 0, largest = 0, adapted_act = 0;  // adapted_act: per token, all layers
  for (const Proj& p : projections(cfg, mc)) {
    weights += L * (p.in * p.out * per_weight + p.out * cb);  // + a bias, whether or not there is one
    lora_params += static_cast<double>(p.adapted_layers) * r * (p.in + p.out);
    adapted_act += static_cast<double>(p.adapted_layers) * (p.in + r) * cb;
    if (cfg.lora.use_dora) {  // the magnitude, and the layer's unscaled output kept for its gradient
      lora_params += static_cast<double>(p.adapted_layers) * p.out;
      adapted_act += static_cast<double>(p.adapted_layers) * p.out * cb;
    }
    largest = std::max(largest, p.in * p.out);
  }
  if (!cfg.lora.target_parameters.empty()) {  // the stacked expert adapters: r per expert
    const model::ExpertTargets t = model::resolve_expert_targets(cfg.lora, mc);
    const double rE = r * static_cast<double>(mc.num_experts), Im = static_cast<double>(mc.moe_intermediate_size);
    lora_params += L * rE * ((t.gate_up ? H + 2 * Im : 0) + (t.down ? Im + H : 0));
  }
  e.weights = to_bytes(weights);
  e.transient = to_bytes(2 * 4 * std::max(largest, nf4 ? 0.0 : V * H));
  // A and B and their gradients in the compute dtype; fp32 master, two moments, clipped gradient
  e.lora = to_bytes(lora_params * (2 * cb + 16));

  // The MLP's intermediates per token: gate, up, activation and product; a mixture of experts has
  // them for each of its k experts (and the shared expert), plus the token's copy sent to each
  // expert and each expert's weighted output.
  double mlp_tok = 4 * I;
  if (mc.is_moe()) {
    const double k = static_cast<double>(mc.num_experts_per_tok);
    mlp_tok = 4 * (k * static_cast<double>(mc.moe_intermediate_size) +
                   static_cast<double>(mc.shared_expert_intermediate_size)) +
              2 * k * H + static_cast<double>(mc.num_experts);
  }
  const double layer_tok = (6 * H + 3 * Qo + 2 * KVo + mlp_tok) * cb;  // one layer, one token
  const double adapted_layer_tok = L > 0 ? adapted_act / L : 0;
  // Offloaded checkpoints keep the block inputs in host memory, not on the GPU.
  const double inputs = cfg.activation_offload && device.is_cuda() ? 0 : T * L * H * cb;
  const double saved =
      cfg.gradient_checkpointing ? inputs + T * (layer_tok + adapted_layer_tok) : T * (L * layer_tok + adapted_act);
  // The CPU's attention may hold fp32 scores [B, heads, S, S]; CUDA's flash and memory-efficient
  // kernels keep none, only a boolean mask [B, 1, S, S] where a sliding window is shorter than S.
  const bool window_bites = mc.sliding_window && static_cast<double>(*mc.sliding_window) < S;
  double scores = device.is_cuda() ? (window_bites ? B * S * S : 0.0)
                                   : 2 * 4 * B * static_cast<double>(mc.num_attention_heads) * S * S;
  // Soft-capped attention scores (Gemma 2) are written out on every device: one layer's scores in
  // the compute dtype after the product, the cap and the mask, the fp32 softmax, and the boolean
  // mask, held for the backward of the block being recomputed.
  if (mc.attn_logit_softcapping)
    scores = (3 * cb + 4) * B * static_cast<double>(mc.num_attention_heads) * S * S + B * S * S;
  e.activations = to_bytes(saved + scores + 2 * T * (layer_tok + adapted_layer_tok));
  const double chunk = std::min(T, static_cast<double>(model::default_ce_chunk_tokens(mc.vocab_size)));
  e.logits = to_bytes(3 * 4 * chunk * V + T * H * 4);
  return e;
}

void check_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device, int processes) {
  const MemoryEstimate e = estimate_memory(cfg, mc, device);
  const uint64_t sharing = device.is_cuda() ? 1 : static_cast<uint64_t>(std::max(1, processes));
  const std::string per = sharing > 1 ? " per process, " + fs::format_bytes(e.total() * sharing) + " for the " +
                                            std::to_string(sharing) + " processes on this machine"
                                      : "";
  uint64_t avail = 0;
  std::string source;
  if (device.is_cuda()) {
#ifdef QLORA_WITH_CUDA
    int prev = 0;
    C10_CUDA_CHECK(cudaGetDevice(&prev));
    C10_CUDA_CHECK(cudaSetDevice(device.has_index() ? device.index() : prev));
    size_t free_b = 0, total_b = 0;
    C10_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    C10_CUDA_CHECK(cudaSetDevice(prev));
    avail = free_b;
    source = "free on " + device.str();
#else
    return;
#endif
  } else {
    const std::optional<HostMemory> h = host_memory_available();
    if (!h) return;
    avail = h->available;
    source = h->source;
  }
  if (e.total() * sharing <= avail) {
    std::printf("memory: the run needs %s%s; %s available (%s)\n", e.describe().c_str(), per.c_str(),
                fs::format_bytes(avail).c_str(), source.c_str());
    return;
  }

  const uint64_t act = e.activations + e.logits, w = e.weights + e.transient;
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
  const std::string msg = cfg.where(key) + ": " + key + ": this run needs " + e.describe() + per + " but " +
                          fs::format_bytes(avail) + " is available (" + source + "); " + advice;
  if (cfg.memory_check) user_error(msg, ", or set memory_check: false to try anyway");
  std::fprintf(stderr, "qlora: warning: %s (memory_check: false: trying anyway)\n", msg.c_str());
}

}  // namespace qlora::train
