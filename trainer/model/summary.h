// What a model is made of, from its config alone: parameter counts by kind and the memory its
// weights take in 16-bit and in NF4 (with or without double quantization). Used by
// `qlora inspect` and the trainer's start-up report.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/model/model_config.h"

namespace qlora::model {

struct TensorShape {
  std::string name;  // e.g. "self_attn.q_proj.weight" (per layer) or "model.embed_tokens.weight"
  std::vector<int64_t> shape;
};

struct NF4Memory {
  int64_t codes_bytes = 0;  // packed 4-bit codes of every linear
  int64_t stats_bytes = 0;  // absmax (uint8 with DQ, float32 without) + nested absmax
  int64_t rest_bytes = 0;   // unquantized tensors (embeddings, norms, biases, lm_head) at 16-bit
  int64_t total() const { return codes_bytes + stats_bytes + rest_bytes; }
  double bits_per_linear_weight = 0;  // (codes + stats) * 8 / linear parameters
};

struct ModelSummary {
  std::vector<TensorShape> layer_tensors;  // one decoder layer (all layers are alike)
  std::vector<TensorShape> other_tensors;  // embeddings, final norm, lm_head
  int64_t total_parameters = 0;            // tied embeddings counted once
  int64_t linear_parameters = 0;           // q,k,v,o,gate,up,down weights (quantizable)
  int64_t embedding_parameters = 0;        // embed_tokens (+ lm_head when untied)
  int64_t norm_parameters = 0;             // RMSNorm weights (incl. q_norm/k_norm)
  int64_t bias_parameters = 0;
  int64_t router_parameters = 0;  // mixture-of-experts routers and shared-expert gates (16-bit)
  int64_t bytes_16bit = 0;        // every parameter at 2 bytes
  NF4Memory nf4_dq;               // NF4, double-quantized statistics
  NF4Memory nf4;                  // NF4, float32 absmax
  int64_t blocksize = 64;
};

ModelSummary summarize(const ModelConfig& c, int64_t blocksize = 64);

// Bytes an NF4 weight of `numel` elements takes (codes + statistics), as kernels::NF4Tensor
// holds it.
int64_t nf4_bytes(int64_t numel, int64_t blocksize, bool double_quant);

}  // namespace qlora::model
