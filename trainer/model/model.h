// The decoder of the supported families (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text,
// mixtral, qwen2_moe, qwen3_moe) with NF4 or 16-bit frozen linears and LoRA adapters, loaded from
// a Hugging Face model directory.
//
//   Model m = load_model(dir, opts);              // streams + quantizes tensor by tensor
//   at::Tensor h = m.forward(ids, pos, seg);      // [B, T, hidden] after the final norm
//   LossSum l = m.loss(h, labels);                // summed token loss + target count
//   (l.sum / total_target_tokens).backward();     // grads land in m.lora_parameters()
//   at::Tensor logits = m.logits(h);              // [B, T, vocab] for generate / eval
//
// Numerics follow transformers (docs/formats.md §4.3): RMSNorm in fp32 then cast and times weight;
// RoPE rotate_half with cos/sin from fp32; causal GQA attention (scaled_dot_product_attention),
// SwiGLU MLP. Gemma (model_config.h): (1 + weight) RMSNorm cast after the product, scaled
// embeddings, GeGLU, pre/post norms around attention and MLP, soft-capped attention scores
// (explicit attention instead of SDPA) and logits, local/global RoPE tables. Compute dtype: bf16 on GPU, configurable on CPU (fp32 by default). Embeddings,
// norms and lm_head stay unquantized, held in the compute dtype.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/config/config.h"
#include "trainer/model/cross_entropy.h"
#include "trainer/model/lora.h"
#include "trainer/model/model_config.h"

namespace qlora::model {

// One projection: a frozen base weight (NF4 or 16-bit), an optional frozen bias and an optional
// LoRA adapter. y = base(x) + bias + B(A(dropout(x))) * scaling.
struct Linear {
  std::string name;  // HF module path, e.g. "model.layers.0.self_attn.q_proj"
  int64_t in_features = 0, out_features = 0;
  std::optional<kernels::NF4Tensor> nf4;  // quantized base weight [out, in] (QLoRA)
  at::Tensor weight;                      // 16-bit base weight [out, in] (plain LoRA), when !nf4
  at::Tensor bias;                        // [out] or undefined
  std::optional<LoraAdapter> lora;

  at::Tensor forward(const at::Tensor& x, bool training, at::Generator* gen) const;
  // The base weight as the model uses it (dequantized for NF4), [out, in] in `dtype`.
  at::Tensor base_weight(at::ScalarType dtype) const;
};

// One expert of a mixture of experts: a SwiGLU MLP (mixtral's w1, w3, w2).
struct Expert {
  Linear gate_proj, up_proj, down_proj;
};

struct DecoderLayer {
  at::Tensor input_layernorm;             // [hidden]
  at::Tensor post_attention_layernorm;    // [hidden]
  at::Tensor q_norm, k_norm;              // [head_dim] (qwen3, gemma3_text), else undefined
  at::Tensor pre_feedforward_layernorm;   // [hidden] (gemma), else undefined
  at::Tensor post_feedforward_layernorm;  // [hidden] (gemma), else undefined
  Linear q_proj, k_proj, v_proj, o_proj;  // self_attn
  Linear gate_proj, up_proj, down_proj;   // mlp
  Linear qkv_proj, gate_up_proj;          // phi3's fused projections (q, k, v and gate, up unused)
  // Mixture of experts (in place of gate/up/down): the router [experts, hidden] (frozen, 16-bit),
  // the experts, and qwen2_moe's shared expert with its gate [1, hidden].
  at::Tensor router;
  std::vector<Expert> experts;
  Expert shared_expert;
  at::Tensor shared_expert_gate;
  // LoRA on the experts as PEFT's ParamWrapper holds it for transformers' fused expert tensors
  // (lora_target_parameters): gate_up (gate rows, then up rows) and down, each one adapter for all
  // E experts, A [r E, in] and B [out, r E]; expert e's delta is scaling * B_e A_e with
  // A_e = A[e r : (e + 1) r] and B_e = B[:, j E + e] (j < r). module: PEFT's module path.
  std::optional<LoraAdapter> experts_gate_up_lora, experts_down_lora;
  std::string experts_gate_up_module, experts_down_module;

  // The projections this architecture has (those with a name), in module order.
  std::vector<Linear*> linears();
  std::vector<const Linear*> linears() const;
  // The projection at `path` under the layer ("self_attn.q_proj", "mlp.experts.3.down_proj",
  // "block_sparse_moe.experts.0.w1", ...); nullptr for none.
  Linear* linear_at(const std::string& path);
};

struct ModelLoadOptions {
  at::Device device = at::kCPU;
  std::optional<at::ScalarType> compute_dtype;  // default: bf16 on CUDA, fp32 on CPU
  bool quantize = true;                         // NF4 base linears (QLoRA); false: 16-bit linears (plain LoRA)
  int64_t blocksize = 64;                       // NF4 blocksize when quantizing while loading
  bool double_quant = true;                     // double-quantize the NF4 absmax statistics
  std::optional<config::LoraConfig> lora;       // adapters to create (none: base model only)
  uint64_t seed = 42;                           // LoRA init (A) and the dropout generator

  // From the run config: quantize iff adapter == "qlora"; compute_dtype "auto" -> default.
  static ModelLoadOptions from_train_config(const config::TrainConfig& cfg, at::Device device);
};

// Keys and values of the tokens seen so far, for incremental decoding (generate.h). Filled by
// Model::forward_cached; one entry per layer, [B, kv_heads, capacity, head_dim] in the compute
// dtype (after k_norm and RoPE), of which the first `length` positions are valid.
struct KVCache {
  std::vector<at::Tensor> k, v;
  int64_t length = 0;   // tokens cached (the position of the next token)
  int64_t reserve = 0;  // capacity to allocate on first use (0: grow as needed)
  at::Tensor ids;       // longrope only: the tokens cached [B, length], to recompute them (forward_cached)
  void clear() {
    k.clear();
    v.clear();
    ids = at::Tensor();
    length = 0;
  }
};

// Move-only: the parameters are shared tensors, a copy would alias them. Do not move a Model while
// an autograd graph built by its forward is alive (checkpointed blocks refer back to it).
class Model {
 public:
  Model() = default;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  ModelConfig config;
  at::Device device = at::kCPU;
  at::ScalarType compute_dtype = at::kFloat;

  at::Tensor embed_tokens;  // [vocab, hidden]
  std::vector<DecoderLayer> layers;
  at::Tensor norm;            // [hidden]
  at::Tensor lm_head;         // [vocab, hidden]; the same tensor as embed_tokens when tied
  at::Tensor inv_freq;        // float32 [rotary_dim / 2]
  at::Tensor long_inv_freq;   // longrope: for sequences past original_max_position_embeddings
  at::Tensor inv_freq_local;  // float32 [head_dim / 2]: sliding layers of gemma3_text, else undefined

  // Switches the trainer sets.
  bool training = false;                // LoRA dropout active
  bool gradient_checkpointing = false;  // recompute each decoder block in backward
  bool checkpoint_offload = false;      // ... and keep each block's input in (pinned) host memory
  int64_t ce_chunk_tokens = 0;          // tokens per cross-entropy chunk; 0: default for the vocab;
                                        // < 0: unchunked (all fp32 logits at once; for comparison)
  at::Generator dropout_generator;      // CPU; draws one LoRA dropout seed per call (seeded at load)
  // forward_loss on rows that pack several sequences (segment_ids, or padding inside a row):
  // attention per sequence over the unpadded tokens (kernels/varlen_attention.h) instead of a
  // [B, 1, T, T] block-diagonal mask. -1: auto (always on CUDA in fp16/bf16; on the CPU when
  // T >= 128 and the sequences' squared lengths sum to at most half of B T^2); 0: never; 1: always.
  // Never with Gemma 2's soft-capped attention scores, nor where a sliding window is shorter than
  // a sequence: those take the mask.
  int varlen_attention = -1;
  // forward_loss on a mixture of experts also returns the router's load-balancing loss (LossSum::aux)
  // over every layer's router logits of the batch's real tokens, as transformers'
  // load_balancing_loss_func computes it with the attention mask (padding left out; the packed
  // sequences of a row all count, like the rows of a batch). The last block then runs on every
  // real token (its router sees them all), not only those that predict a label.
  bool router_aux_loss = false;

  // input_ids [B, T] (int64). position_ids [B, T]: default 0..T-1 per row. segment_ids [B, T]
  // (any integer type): packed samples; a token attends only to earlier tokens with the same
  // segment id (block-diagonal causal mask). Give packed samples positions restarting at 0.
  // Right padding needs no mask (causal attention never looks ahead; label pads -100).
  // Returns the final-norm hidden states [B, T, hidden] in the compute dtype.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& position_ids = {},
                     const at::Tensor& segment_ids = {});

  // Incremental decoding: input_ids [B, T] are the tokens at positions cache.length ..
  // cache.length + T - 1 of every row; they attend to the cached keys/values (causal, sliding
  // window as configured) and are appended to the cache. Returns hidden [B, T, hidden] equal (to
  // rounding) to the matching rows of forward() over the whole sequence. No dropout; call under
  // NoGradGuard. longrope: when the sequence first passes original_max_position_embeddings the
  // cached keys (short factors) are dropped and the whole sequence runs again with the long
  // factors, as transformers' generate does.
  at::Tensor forward_cached(const at::Tensor& input_ids, KVCache& cache);

  // The loss of a training or eval batch in one pass: the same numbers as
  // loss(forward(input_ids, position_ids, segment_ids), labels with padding set to -100), to
  // float rounding, computing only what the loss reads. attention_mask [B, T] (HF's: nonzero =
  // real token, 0 = padding; undefined = no padding): padding must be invisible to real tokens
  // (right padding, or a segment of its own) and is left out before the first block, so every op
  // but attention works on the [N, hidden] rows of real tokens; attention scatters them back to
  // [B, T]. In the last block only the rows that predict a label go on after attention (o_proj,
  // MLP, final norm, lm_head). When each row is one sample followed by padding, attention is
  // plain causal (no mask built). dropout_gen: draws the LoRA dropout seeds instead of
  // dropout_generator (a CPU generator; lets threads run shards of a batch side by side).
  LossSum forward_loss(const at::Tensor& input_ids, const at::Tensor& labels, const at::Tensor& position_ids = {},
                       const at::Tensor& segment_ids = {}, const at::Tensor& attention_mask = {},
                       at::Generator* dropout_gen = nullptr);

  // Logits [..., vocab] in the compute dtype for hidden [..., hidden].
  at::Tensor logits(const at::Tensor& hidden) const;

  // Causal-LM loss over hidden [B, T, H] and labels [B, T] aligned with input_ids (as in
  // transformers: the shift happens here, position t predicts labels[t + 1]; -100 is ignored;
  // with packing, label the first token of each sample -100). Chunked: see cross_entropy.h.
  LossSum loss(const at::Tensor& hidden, const at::Tensor& labels) const;

  // The trainable LoRA tensors with their PEFT state-dict keys, in module order (A then B), then
  // the trainable copies of lora_modules_to_save (saved_modules.h).
  std::vector<NamedParameter> lora_parameters() const;
  // Copies values into the LoRA tensors (and saved modules) (cast to their dtype/device). UserError naming `source`
  // for a missing or unknown key or a shape mismatch; with strict=false, keys may be missing.
  void load_lora_weights(const std::map<std::string, at::Tensor>& values, const std::string& source,
                         bool strict = true);
  // The short names of the targeted modules (q_proj, ...), for adapter_config.json.
  std::vector<std::string> lora_target_modules() const;
  // The expert tensors adapted (lora_target_parameters as configured), for adapter_config.json.
  std::vector<std::string> lora_target_parameters;

  // Every weight under its HF name as the model computes with it (NF4 linears dequantized), in
  // `dtype`; lm_head.weight omitted when tied. For tests, merge and export.
  std::map<std::string, at::Tensor> dequantized_state_dict(at::ScalarType dtype) const;

  std::vector<const Linear*> linears() const;
  // Bytes of the frozen base held on the device (NF4 codes + statistics, 16-bit tensors).
  int64_t base_nbytes() const;
};

// Segment ids [B, T] of packed samples from their position ids, by transformers' rule (a new
// sample starts wherever the position does not follow the previous one by +1): [[0,1,2,0,1]] ->
// [[0,0,0,1,1]].
at::Tensor segments_from_positions(const at::Tensor& position_ids);

// Loads DIR (config.json + safetensors, sharded or not, or a bitsandbytes 4-bit checkpoint read
// without re-quantizing). 16-bit checkpoints are quantized while streaming tensor by tensor out of
// the mmap, releasing each tensor's pages after use: peak host memory is about the final model +
// the largest single tensor. UserError naming the file and tensor for anything missing or of
// the wrong shape or dtype.
Model load_model(const std::filesystem::path& dir, const ModelLoadOptions& opts);

}  // namespace qlora::model
