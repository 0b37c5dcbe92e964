#include "trainer/train/plan.h"

#ifdef QLORA_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>
#endif
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/ops.h"
#include "trainer/common/bytes.h"
#include "trainer/common/fs.h"
#include "trainer/common/memory.h"
#include "trainer/data/dataset.h"
#include "trainer/model/cross_entropy.h"
#include "trainer/model/lora.h"
#include "trainer/model/saved_modules.h"
#include "trainer/optim/adamw.h"
#include "trainer/train/from_config.h"

namespace qlora::train {

namespace {

uint64_t to_bytes(double b) {
  if (!(b >= 0)) return 0;
  if (b >= 1.8e19) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(b);
}

double compute_bytes(const config::TrainConfig& cfg, at::Device device) {
  const std::string& d = cfg.quantization.compute_dtype;
  if (d == "fp32") return 4;
  if (d == "bf16" || d == "fp16") return 2;
  return device.is_cuda() ? 2 : 4;  // auto
}

// A projection of every layer: its shape, and how many layers adapt it.
struct Proj {
  std::string name;
  double out = 0, in = 0;
  bool bias = false;
  int64_t adapted_layers = 0;
};

std::vector<Proj> projections(const config::TrainConfig& cfg, const model::ModelConfig& mc) {
  std::vector<Proj> out;
  for (const model::LinearSpec& s : model::layer_linears(mc)) {
    Proj p{s.name, static_cast<double>(s.out), static_cast<double>(s.in), s.bias, 0};
    for (int64_t l = 0; l < mc.num_hidden_layers; ++l)
      p.adapted_layers += model::lora_targets(cfg.lora, model::layer_prefix(l) + s.path);
    out.push_back(p);
  }
  return out;
}

// What the runtime takes beyond the tensors once training starts (thread pools, BLAS packing
// buffers, autograd's engine, small blocks the heap keeps), measured on the CPU
// (bench/bench_plan.py); on a GPU an allowance not yet measured.
constexpr double kRuntimeCpu = 28.0 * (1 << 20);
constexpr double kRuntimeCuda = 96.0 * (1 << 20);  // cuBLAS workspaces and the caching allocator's rounding
// LoRA dropout keeps each adapted layer's dropped-out input for backward (dA needs it), but only
// about half of those copies show in the measured peak (bench/bench_plan.py: with lora_dropout
// 0.05 against 0 the peak rose by 0.3-0.5 of their bytes); counted at half.
constexpr double kDropoutShare = 0.5;
// The chunked loss holds a chunk's logits and one more [chunk, vocab] temporary (logsumexp's in
// forward, the softmax in backward) at once.
constexpr double kLogitCopies = 2;

}  // namespace

int64_t row_shards(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                   const DataShape& data) {
  if (device.is_cuda() || (mc.is_moe() && mc.output_router_logits) ||
      (mc.is_moe() && cfg.model_overrides.output_router_logits.value_or(false)))
    return 1;
  return std::clamp<int64_t>(at::get_num_threads(), 1, std::max<int64_t>(data.batch_rows, 1));
}

DataShape full_rows(const config::TrainConfig& cfg) {
  DataShape d;
  const int64_t S = cfg.data.sequence_len, B = cfg.micro_batch_size;
  d.batch_tokens = d.batch_padded = d.batch_targets = B * S;
  d.batch_rows = B;
  d.avg_batch_tokens = d.avg_batch_targets = B * S;
  d.longest_row = S;
  d.resident_tokens = 0;
  d.rows = 0;
  return d;
}

DataShape data_shape(const data::PackedData& train, const data::PackedData* val, int64_t micro_batch_size,
                     bool pad_to_sequence_len) {
  DataShape d;
  d.known = true;
  const int64_t n = train.num_rows();
  std::vector<int64_t> len(n), tgt(n);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t b = train.row_begin[r], e = train.row_begin[r + 1];
    len[r] = e - b;
    // position t predicts labels[t + 1] within the row
    int64_t t = 0;
    for (int64_t i = b + 1; i < e; ++i) t += train.labels[i] != -100;
    tgt[r] = t;
  }
  const int64_t B = std::min<int64_t>(micro_batch_size, n);
  auto top_sum = [B](std::vector<int64_t> v) {
    std::partial_sort(v.begin(), v.begin() + B, v.end(), std::greater<>());
    int64_t s = 0;
    for (int64_t i = 0; i < B; ++i) s += v[i];
    return s;
  };
  d.batch_rows = B;
  d.longest_row = n ? *std::max_element(len.begin(), len.end()) : 0;
  if (pad_to_sequence_len) d.longest_row = train.sequence_len;
  d.batch_tokens = B ? top_sum(len) : 0;
  d.batch_targets = B ? top_sum(tgt) : 0;
  d.batch_padded = B * d.longest_row;
  // Streamed rows are a mapping of files (page cache), not the process's own memory.
  auto resident = [](const data::PackedData* p) {
    return p && !p->input_ids.mapped() ? static_cast<int64_t>(p->input_ids.size()) : int64_t{0};
  };
  d.resident_tokens = resident(&train) + resident(val);
  if (n > 0) {
    int64_t all_t = 0;
    for (int64_t t : tgt) all_t += t;
    d.avg_batch_tokens = static_cast<int64_t>(train.input_ids.size()) * B / n;
    d.avg_batch_targets = all_t * B / n;
  }
  d.rows = n;
  return d;
}

MemoryPlan plan_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                       const DataShape& data) {
  MemoryPlan p;
  p.device = device;
  const bool cuda = device.is_cuda();
  const double cb = compute_bytes(cfg, device);
  const double H = static_cast<double>(mc.hidden_size), V = static_cast<double>(mc.vocab_size);
  const double L = static_cast<double>(mc.num_hidden_layers), I = static_cast<double>(mc.intermediate_size);
  const double Qo = static_cast<double>(mc.q_out()), KVo = static_cast<double>(mc.kv_out());
  const double r = static_cast<double>(cfg.lora.r);
  const bool nf4 = cfg.lora.adapter == "qlora";
  const double bs = static_cast<double>(cfg.quantization.blocksize);
  // NF4: half a byte per weight; absmax per block: one byte and an fp32 per 256 blocks with
  // double quantization, else an fp32.
  const double per_weight = nf4 ? 0.5 + (cfg.quantization.double_quant ? 1.0 / bs + 4.0 / (256 * bs) : 4.0 / bs) : cb;
  const double T = static_cast<double>(data.batch_tokens), Tp = static_cast<double>(data.batch_padded);
  const double Nt = static_cast<double>(data.batch_targets);
  const bool dropout = cfg.lora.dropout > 0;
  // The norms compute in fp32: with a 16-bit compute dtype each keeps an fp32 copy of its input.
  const double norm_copy = cb < 4 ? 4 : 0;

  // On the CPU a micro-batch runs as row shards, one per thread, side by side
  // (trainer/train/step.h), each with its own gradients and loss chunk.
  const double shards = static_cast<double>(row_shards(cfg, mc, device, data));

  // ---- weights
  double base = 0, dense = 0, largest = 0;
  for (const Proj& pr : projections(cfg, mc)) {
    base += L * pr.in * pr.out * per_weight;
    if (pr.bias) dense += L * pr.out * cb;
    largest = std::max(largest, pr.in * pr.out);
  }
  dense += V * H * cb * (mc.tie_word_embeddings ? 1 : 2) + (2 * L + 1) * H * cb;
  if (mc.qk_norm) dense += 2 * L * static_cast<double>(mc.head_dim) * cb;
  if (mc.gemma) dense += 2 * L * H * cb;
  if (mc.is_moe())
    dense += L * (static_cast<double>(mc.num_experts) + (mc.shared_expert_intermediate_size > 0 ? 1 : 0)) * H * cb;
  // RoPE tables for the longest row: cos and sin [T, head_dim] in fp32 and the compute dtype
  dense += 2 * static_cast<double>(data.longest_row) * static_cast<double>(mc.head_dim) * (4 + cb);

  // ---- LoRA and the optimizer
  double lora_params = 0, per_layer_lora_act = 0;  // per token, summed over the adapted layers
  for (const Proj& pr : projections(cfg, mc)) {
    const double n = static_cast<double>(pr.adapted_layers);
    lora_params += n * r * (pr.in + pr.out);
    per_layer_lora_act += n * (r + (dropout ? kDropoutShare * pr.in : 0)) * cb;  // h = dropout(x) A^T, dropout(x)
    if (cfg.lora.use_dora) {
      lora_params += n * pr.out;
      per_layer_lora_act += n * pr.out * cb;  // u, kept for the magnitude's gradient
    }
  }
  if (!cfg.lora.target_parameters.empty()) {
    const model::ExpertTargets t = model::resolve_expert_targets(cfg.lora, mc);
    const double rE = r * static_cast<double>(mc.num_experts), Im = static_cast<double>(mc.moe_intermediate_size);
    lora_params += L * rE * ((t.gate_up ? H + 2 * Im : 0) + (t.down ? Im + H : 0));
  }
  double saved_module_params = 0;
  {
    const model::SavedModules sm =
        model::resolve_modules_to_save(cfg.lora.modules_to_save, mc, cfg.lora.ensure_weight_tying);
    saved_module_params = V * H * ((sm.embed ? 1 : 0) + (sm.lm_head ? 1 : 0));
  }
  const double trainable = lora_params + saved_module_params;
  // State per element: fp32 master, and m and v in fp32, or as 8-bit codes with an fp32 absmax
  // per 256 (bitsandbytes; saved-module tensors and the LoRA tensors alike are above its
  // 4096-element minimum).
  const double state = cfg.optim.optimizer == "adamw_8bit" ? 2 + 8.0 / 256 : 8;
  const double optim_bytes = trainable * (4 + state);
  double resident_optim = optim_bytes, paged_host = 0;
  if (cuda && cfg.optim.paged) {
    if (cfg.optim.device_budget != "auto") {
      const std::optional<uint64_t> budget = parse_byte_size(cfg.optim.device_budget);
      if (budget && static_cast<double>(*budget) < optim_bytes) {
        resident_optim = static_cast<double>(*budget);
        paged_host = optim_bytes;
      }
    }
  }

  // ---- activations, per token of one layer, in bytes
  double mlp_tok = 4 * I;  // gate, up, act(gate), act(gate) * up
  if (mc.is_moe()) {
    const double k = static_cast<double>(mc.num_experts_per_tok);
    mlp_tok = 4 * (k * static_cast<double>(mc.moe_intermediate_size) +
                   static_cast<double>(mc.shared_expert_intermediate_size)) +
              2 * k * H + static_cast<double>(mc.num_experts);
  }
  // On the real tokens: the block input, the two norms' outputs (and fp32 copies), the residual,
  // the attention output fed to o_proj, the MLP's intermediates; on the padded batch: q and k
  // after RoPE, v and the attention output the kernel keeps.
  double real_tok = (4 * H + Qo + mlp_tok) * cb + 2 * H * norm_copy;
  if (mc.gemma) real_tok += 2 * H * (cb + norm_copy);
  double padded_tok = (2 * Qo + 2 * KVo) * cb;
  if (mc.qk_norm) padded_tok += (Qo + KVo) * (cb + norm_copy);
  const double layer_full = T * (real_tok + per_layer_lora_act / std::max(L, 1.0)) + Tp * padded_tok;
  const double all_layers = T * (L * real_tok + per_layer_lora_act) + L * Tp * padded_tok;
  // Masks: a sliding window shorter than the row, or rows of several samples on the padded path.
  const bool window_bites = mc.sliding_window && static_cast<double>(*mc.sliding_window) < Tp;
  double mask = window_bites ? Tp * static_cast<double>(data.longest_row) * (cuda ? 1 : 5) : 0;
  if (mc.attn_logit_softcapping) {  // written-out scores of one layer (Gemma 2)
    const double heads = static_cast<double>(mc.num_attention_heads);
    mask += (3 * cb + 4) * heads * Tp * static_cast<double>(data.longest_row);
  }
  const bool offload = cfg.activation_offload && cuda;
  const double inputs = offload ? 0 : T * L * H * cb;  // checkpointed: each block's input
  const double saved = cfg.gradient_checkpointing ? inputs : all_layers + L * mask;

  // The step's working set on top of what is saved; its two moments do not overlap:
  //  - the loss (end of forward, start of backward): one chunk of fp32 logits and the softmax's
  //    temporary, the final hidden states of the targets and their fp32 gradient;
  //  - a block's backward: the gradients of its activations alive at once (the residual's, the
  //    MLP's three, two of the hidden size), and, with checkpointing, the block recomputed.
  // On the CPU the micro-batch runs as row shards (see shards above): each has its own loss chunk;
  // one shard (a single row) runs the loss's chunks side by side instead, one per thread.
  const int64_t lanes = !cuda && shards == 1 ? at::get_num_threads() : 1;
  const model::CeChunks ce = model::ce_chunks(static_cast<int64_t>(std::max(Nt / shards, 1.0)),
                                              model::default_ce_chunk_tokens(mc.vocab_size), lanes);
  const double chunk = std::min(std::max(Nt / shards, 1.0), static_cast<double>(ce.tokens));
  double loss = shards * static_cast<double>(ce.lanes) * kLogitCopies * 4 * chunk * V + Nt * H * (cb + 4);
  if (saved_module_params > 0) loss += V * H * 4;  // a trained lm_head's fp32 gradient
  const double block_grads = T * (2 * H + 3 * (mc.is_moe() ? mlp_tok / 4 : I)) * cb + Nt * H * 4;
  const double block = block_grads + (cfg.gradient_checkpointing ? layer_full + mask : 0);
  const double working = std::max(loss, block);

  const double runtime = cuda ? kRuntimeCuda : kRuntimeCpu;
  const double data_bytes = static_cast<double>(data.resident_tokens) * 8;

  auto add = [&p](std::string name, double bytes, std::string note) {
    p.parts.push_back({std::move(name), to_bytes(bytes), std::move(note)});
  };
  add(nf4 ? "NF4 base weights" : "16-bit base weights", base,
      nf4 ? (cfg.quantization.double_quant ? "codes + double-quantized absmax" : "codes + fp32 absmax")
          : "the projections in the compute dtype");
  add("embeddings, norms, lm_head", dense,
      std::string("in the compute dtype") + (mc.tie_word_embeddings ? ", lm_head tied" : ""));
  // The weights and their gradients (the row shards' gradients come when their activations are
  // gone); with gradient accumulation, the sum of the micro-batches' gradients (float64 on the
  // CPU, fp32 on a GPU: trainer.cpp), alive during the later micro-batches.
  const double accumulating = cfg.gradient_accumulation_steps > 1 ? (cuda ? 4 : 8) : 0;
  add("LoRA weights and gradients", trainable * (2 * cb + accumulating),
      std::to_string(static_cast<int64_t>(trainable)) + " trainable parameters");
  add(cuda && paged_host > 0 ? "optimizer state (resident part)" : "optimizer state", resident_optim,
      std::string("fp32 masters + ") + (cfg.optim.optimizer == "adamw_8bit" ? "8-bit" : "fp32") + " moments");
  add("activations", saved,
      cfg.gradient_checkpointing
          ? (offload ? "checkpointed: block inputs offloaded to the host" : "checkpointed: block inputs")
          : "every block's, kept for backward");
  add("step working set", working,
      loss >= block ? "the loss: " + std::to_string(static_cast<int64_t>(chunk)) + "-token chunks of fp32 logits"
                    : std::string("a block's backward") + (cfg.gradient_checkpointing ? ", the block recomputed" : ""));
  if (!cuda) add("tokenized data", data_bytes, std::to_string(data.resident_tokens) + " tokens");
  add(cuda ? "CUDA runtime and allocator" : "runtime and allocator", runtime,
      cuda ? "an allowance, not yet measured" : "measured allowance");
  for (const MemoryPart& m : p.parts) p.train_peak += m.bytes;
  const double transient = 2 * 4 * std::max(largest, nf4 ? 0.0 : V * H);
  p.load_peak = to_bytes(base + dense + transient + runtime + (cuda ? 0 : data_bytes));

  if (cuda) {
    auto host = [&p](std::string name, double bytes, std::string note) {
      p.host_parts.push_back({std::move(name), to_bytes(bytes), std::move(note)});
    };
    host("tokenized data", data_bytes, std::to_string(data.resident_tokens) + " tokens");
    if (paged_host > 0) host("optimizer state (paged pool)", paged_host, "the whole state, pages streamed");
    if (offload) host("offloaded block inputs", T * L * H * cb, "pinned host memory");
    host("largest weight while loading", 2 * 4 * largest, "fp32 copies");
    for (const MemoryPart& m : p.host_parts) p.host_peak += m.bytes;
  }
  return p;
}

// ---- time ------------------------------------------------------------------------------------

namespace {

void sync(at::Device d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

// Mean seconds of f over `reps` calls after one warm-up call.
double time_it(at::Device d, int reps, const std::function<void()>& f) {
  f();
  sync(d);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  sync(d);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

TimePlan plan_time(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                   const DataShape& data) {
  const auto t_start = std::chrono::steady_clock::now();
  const bool cuda = device.is_cuda();
  const at::ScalarType dt = compute_bytes(cfg, device) == 4            ? at::kFloat
                            : cfg.quantization.compute_dtype == "fp16" ? at::kHalf
                                                                       : at::kBFloat16;
  const auto opts = at::TensorOptions().dtype(dt).device(device);
  const bool nf4 = cfg.lora.adapter == "qlora";
  const bool ckpt = cfg.gradient_checkpointing;
  const double L = static_cast<double>(mc.num_hidden_layers);
  // Tokens of an average micro-batch (the fullest one when the data is not known).
  const double T = static_cast<double>(data.known && data.rows > 0 ? data.avg_batch_tokens : data.batch_tokens);
  const double Nt = static_cast<double>(data.known && data.rows > 0 ? data.avg_batch_targets : data.batch_targets);
  // On the CPU the trainer runs one row shard per thread with single-threaded kernels
  // (trainer/train/step.h): time the kernels on one thread, for one shard's tokens, and count the
  // shards as running side by side.
  const double shards = static_cast<double>(row_shards(cfg, mc, device, data));
  struct OneThread {
    int prev = at::get_num_threads();
    explicit OneThread(bool on) {
      if (on)
        at::set_num_threads(1);
      else
        prev = 0;
    }
    ~OneThread() {
      if (prev > 0) at::set_num_threads(prev);
    }
  } one_thread(!cuda);
  const double per_shard = T / shards;
  const int64_t Tc = std::clamp<int64_t>(static_cast<int64_t>(per_shard), 16, cuda ? 4096 : 512);  // calibration tokens
  const int reps = cuda ? 5 : 2;
  at::Generator gen = at::detail::getDefaultCPUGenerator();

  TimePlan tp;
  double base_s = 0, lora_s = 0;
  {
    c10::AutoGradMode no_grad(false);
    std::map<std::pair<int64_t, int64_t>, double> seen;  // seconds per token, fwd + bwd, by shape
    for (const model::LinearSpec& s : model::layer_linears(mc)) {
      const bool expert = s.path.find("experts.") != std::string::npos;
      const double tok =
          expert ? per_shard * static_cast<double>(mc.num_experts_per_tok) / static_cast<double>(mc.num_experts)
                 : per_shard;
      auto it = seen.find({s.out, s.in});
      if (it == seen.end()) {
        at::Tensor w = at::randn({s.out, s.in}, at::TensorOptions().dtype(at::kFloat)) * 0.02;
        at::Tensor x = at::randn({Tc, s.in}, opts), dy = at::randn({Tc, s.out}, opts);
        double sec = 0;
        if (nf4) {
          kernels::NF4Tensor q =
              kernels::nf4_quantize(w.to(device), cfg.quantization.blocksize, cfg.quantization.double_quant);
          sec = time_it(device, reps, [&] {
            at::Tensor y = kernels::nf4_linear(x, q);
            at::Tensor dx = kernels::nf4_linear_grad_input(dy, q);
          });
          if (ckpt) sec += time_it(device, reps, [&] { at::Tensor y = kernels::nf4_linear(x, q); });
        } else {
          at::Tensor wd = w.to(opts);
          sec = time_it(device, reps, [&] {
            at::Tensor y = at::linear(x, wd);
            at::Tensor dx = at::mm(dy, wd);
          });
          if (ckpt) sec += time_it(device, reps, [&] { at::Tensor y = at::linear(x, wd); });
        }
        it = seen.emplace(std::make_pair(s.out, s.in), sec / static_cast<double>(Tc)).first;
      }
      base_s += L * tok * it->second;
      bool adapted = false;
      for (int64_t l = 0; l < mc.num_hidden_layers && !adapted; ++l)
        adapted = model::lora_targets(cfg.lora, model::layer_prefix(l) + s.path);
      // LoRA: three rank-r products each way, at the base's throughput per multiply-add
      if (adapted)
        lora_s += L * tok * it->second * 1.5 * static_cast<double>(cfg.lora.r) * static_cast<double>(s.in + s.out) /
                  (static_cast<double>(s.in) * static_cast<double>(s.out));
    }
  }
  double attn_s = 0, elem_s = 0, loss_s = 0, optim_s = 0;
  {
    // attention over one row of the longest length, forward and backward, times the rows
    const int64_t S = std::max<int64_t>(1, std::min<int64_t>(data.longest_row, cuda ? 8192 : 2048));
    const int64_t h = mc.num_attention_heads, kv = mc.num_key_value_heads, D = mc.head_dim;
    at::Tensor q = at::randn({1, h, S, D}, opts).requires_grad_(true);
    at::Tensor k = at::randn({1, h, S, D}, opts).requires_grad_(true);
    at::Tensor v = at::randn({1, h, S, D}, opts).requires_grad_(true);
    (void)kv;
    const double per_row = time_it(device, reps, [&] {
      at::Tensor o = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, true);
      o.sum().backward();
    });
    const double rows = std::max(1.0, static_cast<double>(data.batch_rows) / shards);
    const double scale = static_cast<double>(data.longest_row) / static_cast<double>(S);
    attn_s = L * rows * per_row * scale * scale * (ckpt ? 1.33 : 1.0);
    // norms, activation, residuals: two RMSNorms and SiLU(gate) * up per layer
    const int64_t H = mc.hidden_size, I = mc.is_moe() ? mc.moe_intermediate_size : mc.intermediate_size;
    at::Tensor x = at::randn({Tc, H}, opts).requires_grad_(true);
    at::Tensor g = at::randn({Tc, I}, opts).requires_grad_(true), u = at::randn({Tc, I}, opts).requires_grad_(true);
    at::Tensor w = at::ones({H}, opts);
    const double e = time_it(device, reps, [&] {
      at::Tensor xf = x.to(at::kFloat);
      at::Tensor n = w * (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-6)).to(dt);
      at::Tensor a = at::silu(g) * u;
      (n.sum() * 2 + a.sum()).backward();
    });
    elem_s = L * e * per_shard / static_cast<double>(Tc) * (ckpt ? 1.33 : 1.0);
    // lm_head and the loss over the targets
    const int64_t V = mc.vocab_size, chunk = model::default_ce_chunk_tokens(V);
    const int64_t Nc = std::clamp<int64_t>(static_cast<int64_t>(Nt / shards), 1, chunk);
    at::Tensor hid = at::randn({Nc, H}, opts).requires_grad_(true);
    at::Tensor head = at::randn({V, H}, opts) * 0.02;
    at::Tensor tg = at::randint(V, {Nc}, at::TensorOptions().dtype(at::kLong).device(device));
    const double l = time_it(device, reps, [&] { model::chunked_cross_entropy_sum(hid, head, tg, chunk).backward(); });
    loss_s = l * std::max(Nt / shards, 1.0) / static_cast<double>(Nc);
  }
  // AdamW: a pass over masters, moments, gradients and parameters, memory-bound; timed on up to
  // 4M elements and scaled
  {
    double trainable = 0;
    for (const Proj& pr : projections(cfg, mc))
      trainable += static_cast<double>(pr.adapted_layers) * static_cast<double>(cfg.lora.r) * (pr.in + pr.out);
    const int64_t n = std::clamp<int64_t>(static_cast<int64_t>(trainable), 1, int64_t{4} << 20);
    at::Tensor pv = at::zeros({n}, opts), gv = at::randn({n}, opts) * 1e-3;
    optim::AdamWOptions ao = adamw_options(cfg.optim);
    ao.paging.enabled = false;
    optim::AdamW opt({{"p", pv, 1.0}}, ao, device);
    const double o = time_it(device, reps, [&] { opt.step(1e-4, {gv}, {pv}); });
    optim_s = o * trainable / static_cast<double>(n);
  }
  const double accum = static_cast<double>(cfg.gradient_accumulation_steps);
  const double micro = base_s + lora_s + attn_s + elem_s + loss_s;
  tp.parts = {{"base projections (NF4 forward and backward)", accum * base_s},
              {"LoRA", accum * lora_s},
              {"attention", accum * attn_s},
              {"norms, activations", accum * elem_s},
              {"lm_head and loss", accum * loss_s},
              {"optimizer", optim_s}};
  if (!nf4) tp.parts[0].first = "base projections (16-bit forward and backward)";
  tp.step_seconds = accum * micro + optim_s;
  tp.tokens_per_second = tp.step_seconds > 0 ? accum * T / tp.step_seconds : 0;
  tp.calibration_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return tp;
}

// ---- budget and fixes ------------------------------------------------------------------------

std::optional<Budget> memory_budget(at::Device device, int processes) {
  if (device.is_cuda()) {
#ifdef QLORA_WITH_CUDA
    int prev = 0;
    C10_CUDA_CHECK(cudaGetDevice(&prev));
    C10_CUDA_CHECK(cudaSetDevice(device.has_index() ? device.index() : prev));
    size_t free_b = 0, total_b = 0;
    C10_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    C10_CUDA_CHECK(cudaSetDevice(prev));
    return Budget{free_b, "free on " + device.str()};
#else
    return std::nullopt;
#endif
  }
  const std::optional<HostMemory> h = host_memory_available();
  if (!h) return std::nullopt;
  const uint64_t share = static_cast<uint64_t>(std::max(1, processes));
  return Budget{h->available / share,
                h->source + (share > 1 ? ", shared by " + std::to_string(share) + " processes" : "")};
}

namespace {

// The data's shape under a changed micro_batch_size or sequence_len (scaled; rows shorter than
// the new sequence_len keep their length).
DataShape reshaped(const DataShape& d, int64_t old_b, int64_t new_b, int64_t new_s) {
  DataShape o = d;
  const double fb = static_cast<double>(new_b) / static_cast<double>(std::max<int64_t>(old_b, 1));
  const int64_t longest = std::min(d.longest_row, new_s);
  const double fs = d.longest_row > 0 ? static_cast<double>(longest) / static_cast<double>(d.longest_row) : 1.0;
  auto scale = [&](int64_t v) { return static_cast<int64_t>(std::ceil(static_cast<double>(v) * fb * fs)); };
  o.batch_tokens = scale(d.batch_tokens);
  o.batch_padded = scale(d.batch_padded);
  o.batch_targets = scale(d.batch_targets);
  o.avg_batch_tokens = scale(d.avg_batch_tokens);
  o.avg_batch_targets = scale(d.avg_batch_targets);
  o.batch_rows = static_cast<int64_t>(std::ceil(static_cast<double>(d.batch_rows) * fb));
  o.longest_row = longest;
  return o;
}

struct Candidate {
  std::string change;
  config::TrainConfig cfg;
  DataShape data;
};

}  // namespace

std::vector<Fix> fixes_for(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                           const DataShape& data, uint64_t budget) {
  const bool cuda = device.is_cuda();
  // Single changes, in the order of what they cost the run: recomputation, host traffic, state
  // precision, smaller micro-batches (same global batch, more steps of accumulation), then
  // changes to what is trained: shorter rows, a smaller rank.
  std::vector<std::function<std::optional<Candidate>(const Candidate&)>> moves;
  moves.push_back([](const Candidate& c) -> std::optional<Candidate> {
    if (c.cfg.gradient_checkpointing) return std::nullopt;
    Candidate n = c;
    n.cfg.gradient_checkpointing = true;
    n.change = "gradient_checkpointing: true";
    return n;
  });
  if (cuda)
    moves.push_back([](const Candidate& c) -> std::optional<Candidate> {
      if (c.cfg.activation_offload) return std::nullopt;
      Candidate n = c;
      n.cfg.gradient_checkpointing = true;
      n.cfg.activation_offload = true;
      n.change = "gradient_checkpointing: offload";
      return n;
    });
  moves.push_back([](const Candidate& c) -> std::optional<Candidate> {
    if (c.cfg.optim.optimizer == "adamw_8bit") return std::nullopt;
    Candidate n = c;
    n.cfg.optim.optimizer = "adamw_8bit";
    n.change = std::string("optimizer: ") + (c.cfg.optim.paged ? "paged_adamw_8bit" : "adamw_8bit");
    return n;
  });
  moves.push_back([](const Candidate& c) -> std::optional<Candidate> {
    const int64_t b = c.cfg.micro_batch_size;
    if (b <= 1) return std::nullopt;
    Candidate n = c;
    const int64_t nb = b / 2;
    n.cfg.micro_batch_size = nb;
    n.cfg.gradient_accumulation_steps = c.cfg.gradient_accumulation_steps * b / nb;
    n.data = reshaped(c.data, b, nb, c.cfg.data.sequence_len);
    n.change = "micro_batch_size: " + std::to_string(nb) +
               (b % nb == 0 ? " (gradient_accumulation_steps: " + std::to_string(n.cfg.gradient_accumulation_steps) +
                                  " keeps the batch)"
                            : "");
    return n;
  });
  moves.push_back([](const Candidate& c) -> std::optional<Candidate> {
    const int64_t s = c.cfg.data.sequence_len, ns = s / 2;
    if (ns < 64 || c.data.longest_row <= ns / 2) return std::nullopt;
    Candidate n = c;
    n.cfg.data.sequence_len = ns;
    n.data = reshaped(c.data, c.cfg.micro_batch_size, c.cfg.micro_batch_size, ns);
    n.change =
        "sequence_len: " + std::to_string(ns) + (c.data.longest_row > ns ? " (longer samples are truncated)" : "");
    return n;
  });
  moves.push_back([](const Candidate& c) -> std::optional<Candidate> {
    if (c.cfg.lora.r <= 4) return std::nullopt;
    Candidate n = c;
    n.cfg.lora.r = c.cfg.lora.r / 2;
    n.change = "lora_r: " + std::to_string(n.cfg.lora.r);
    return n;
  });

  auto peak = [&](const Candidate& c) { return plan_memory(c.cfg, mc, device, c.data).peak(); };
  const Candidate start{"", cfg, data};
  std::vector<Fix> out;
  // each move repeated (micro-batch and sequence halvings) until it fits or cannot go on
  for (const auto& move : moves) {
    std::optional<Candidate> c = move(start);
    for (int i = 0; c && i < 12; ++i) {
      const uint64_t pk = peak(*c);
      if (pk <= budget) {
        out.push_back({c->change, pk});
        break;
      }
      std::optional<Candidate> next = move(*c);
      if (!next || next->change == c->change) break;
      c = next;
    }
  }
  if (!out.empty()) return out;
  // pairs: checkpointing (and 8-bit state) with the repeated moves
  for (size_t a = 0; a < moves.size() && out.empty(); ++a) {
    std::optional<Candidate> first = moves[a](start);
    if (!first) continue;
    for (size_t b = a + 1; b < moves.size(); ++b) {
      std::optional<Candidate> c = moves[b](*first);
      for (int i = 0; c && i < 12; ++i) {
        const uint64_t pk = peak(*c);
        if (pk <= budget) {
          out.push_back({first->change + " and " + c->change, pk});
          break;
        }
        std::optional<Candidate> next = moves[b](*c);
        if (!next) break;
        c = next;
      }
    }
  }
  return out;
}

// ---- reports ---------------------------------------------------------------------------------

namespace {

std::string pad_right(std::string s, size_t n) {
  if (s.size() < n) s.append(n - s.size(), ' ');
  return s;
}

std::string seconds(double s) {
  char buf[32];
  if (s < 0.01)
    std::snprintf(buf, sizeof buf, "%.1f ms", s * 1e3);
  else if (s < 100)
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  else
    std::snprintf(buf, sizeof buf, "%.0f s", s);
  return buf;
}

std::string dtype_name(const config::TrainConfig& cfg, at::Device d) {
  const double cb = compute_bytes(cfg, d);
  if (cb == 4) return "fp32";
  return cfg.quantization.compute_dtype == "fp16" ? "fp16" : "bf16";
}

}  // namespace

std::string describe_plan(const config::TrainConfig& cfg, const model::ModelConfig& mc, const MemoryPlan& m,
                          const TimePlan* t, const DataShape& data, const std::optional<Budget>& budget,
                          const std::vector<Fix>& fixes) {
  std::ostringstream os;
  os << "plan: " << mc.model_type << ", " << mc.num_hidden_layers << " layers, hidden " << mc.hidden_size << ", vocab "
     << mc.vocab_size << "; " << (cfg.lora.adapter == "qlora" ? "NF4" : "16-bit") << " base, LoRA r " << cfg.lora.r
     << "; on " << m.device.str() << " in " << dtype_name(cfg, m.device) << "\n";
  os << "data: ";
  if (data.known)
    os << data.rows << " training rows; the fullest micro-batch has " << data.batch_rows << " rows, "
       << data.batch_tokens << " tokens (" << data.batch_targets << " supervised), longest row " << data.longest_row
       << "\n";
  else
    os << "not read; every row counted as " << cfg.data.sequence_len << " tokens, " << cfg.micro_batch_size
       << " per micro-batch\n";
  os << "peak memory" << (m.device.is_cuda() ? " on " + m.device.str() : "") << ": " << fs::format_bytes(m.peak())
     << (m.load_peak > m.train_peak ? " (while loading)" : " (while training)") << "\n";
  for (const MemoryPart& p : m.parts)
    os << "  " << pad_right(p.name, 34) << pad_right(fs::format_bytes(p.bytes), 12) << p.note << "\n";
  os << "  " << pad_right("while loading", 34) << fs::format_bytes(m.load_peak) << "\n";
  if (m.device.is_cuda()) {
    os << "host memory: " << fs::format_bytes(m.host_peak) << "\n";
    for (const MemoryPart& p : m.host_parts)
      os << "  " << pad_right(p.name, 34) << pad_right(fs::format_bytes(p.bytes), 12) << p.note << "\n";
  }
  if (budget) {
    const bool fits = m.peak() <= budget->bytes;
    os << "budget: " << fs::format_bytes(budget->bytes) << " (" << budget->source
       << "): " << (fits ? "fits" : "does NOT fit") << "\n";
    if (!fits) {
      if (fixes.empty()) os << "  no change tried fits (checkpointing, 8-bit state, smaller batches, rows or rank)\n";
      for (const Fix& f : fixes) os << "  fits with " << f.change << ": peak " << fs::format_bytes(f.peak) << "\n";
    }
  }
  if (t) {
    os << "step time: about " << seconds(t->step_seconds) << " per optimizer step ("
       << static_cast<int64_t>(t->tokens_per_second) << " tokens/s); calibrated in " << seconds(t->calibration_seconds)
       << "\n";
    for (const auto& [name, sec] : t->parts) os << "  " << pad_right(name, 44) << seconds(sec) << "\n";
  }
  return os.str();
}

std::string plan_json(const config::TrainConfig& cfg, const model::ModelConfig& mc, const MemoryPlan& m,
                      const TimePlan* t, const DataShape& data, const std::optional<Budget>& budget,
                      const std::vector<Fix>& fixes) {
  using json = nlohmann::ordered_json;
  auto parts = [](const std::vector<MemoryPart>& v) {
    json a = json::array();
    for (const MemoryPart& p : v) a.push_back({{"name", p.name}, {"bytes", p.bytes}, {"note", p.note}});
    return a;
  };
  json j = {{"config", cfg.config_path},
            {"device", m.device.str()},
            {"compute_dtype", dtype_name(cfg, m.device)},
            {"model",
             {{"model_type", mc.model_type},
              {"num_hidden_layers", mc.num_hidden_layers},
              {"hidden_size", mc.hidden_size},
              {"vocab_size", mc.vocab_size}}},
            {"data",
             {{"known", data.known},
              {"rows", data.rows},
              {"batch_rows", data.batch_rows},
              {"batch_tokens", data.batch_tokens},
              {"batch_padded_tokens", data.batch_padded},
              {"batch_targets", data.batch_targets},
              {"longest_row", data.longest_row},
              {"resident_tokens", data.resident_tokens}}},
            {"memory",
             {{"peak_bytes", m.peak()},
              {"train_peak_bytes", m.train_peak},
              {"load_peak_bytes", m.load_peak},
              {"parts", parts(m.parts)}}}};
  if (m.device.is_cuda()) j["host_memory"] = {{"peak_bytes", m.host_peak}, {"parts", parts(m.host_parts)}};
  if (budget) {
    json f = json::array();
    for (const Fix& x : fixes) f.push_back({{"change", x.change}, {"peak_bytes", x.peak}});
    j["budget"] = {
        {"bytes", budget->bytes}, {"source", budget->source}, {"fits", m.peak() <= budget->bytes}, {"fixes", f}};
  }
  if (t) {
    json p = json::object();
    for (const auto& [name, sec] : t->parts) p[name] = sec;
    j["time"] = {{"step_seconds", t->step_seconds},
                 {"tokens_per_second", t->tokens_per_second},
                 {"calibration_seconds", t->calibration_seconds},
                 {"parts", p}};
  }
  return j.dump(2);
}

}  // namespace qlora::train
