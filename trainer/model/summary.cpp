#include "trainer/model/summary.h"

#include <set>

#include "kernels/nf4.h"

namespace qlora::model {

int64_t nf4_bytes(int64_t numel, int64_t blocksize, bool double_quant) {
  const int64_t nb = nf4::num_blocks(numel, blocksize);
  const int64_t codes = (numel + 1) / 2;
  if (!double_quant) return codes + 4 * nb;
  return codes + nb + 4 * nf4::num_blocks(nb, nf4::kNestedBlocksize);
}

namespace {
int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

void add_nf4(NF4Memory& m, int64_t n, int64_t blocksize, bool dq) {
  m.codes_bytes += (n + 1) / 2;
  m.stats_bytes += nf4_bytes(n, blocksize, dq) - (n + 1) / 2;
}
}  // namespace

ModelSummary summarize(const ModelConfig& c, int64_t blocksize) {
  ModelSummary s;
  s.blocksize = blocksize;
  const int64_t H = c.hidden_size;
  s.layer_tensors.push_back({"input_layernorm.weight", {H}});
  for (const LinearSpec& l : layer_linears(c)) {
    s.layer_tensors.push_back({l.path + ".weight", {l.out, l.in}});
    if (l.bias) s.layer_tensors.push_back({l.path + ".bias", {l.out}});
    if (l.name == "o_proj" && c.qk_norm) {  // HF's module order: q_norm, k_norm after o_proj
      s.layer_tensors.push_back({"self_attn.q_norm.weight", {c.head_dim}});
      s.layer_tensors.push_back({"self_attn.k_norm.weight", {c.head_dim}});
    }
  }
  if (c.is_moe()) {  // routers stay 16-bit
    s.layer_tensors.push_back({router_path(c) + ".weight", {c.num_experts, H}});
    if (c.shared_expert_intermediate_size > 0) s.layer_tensors.push_back({"mlp.shared_expert_gate.weight", {1, H}});
  }
  s.layer_tensors.push_back({"post_attention_layernorm.weight", {H}});
  if (c.gemma) {
    s.layer_tensors.push_back({"pre_feedforward_layernorm.weight", {H}});
    s.layer_tensors.push_back({"post_feedforward_layernorm.weight", {H}});
  }
  s.other_tensors.push_back({"model.embed_tokens.weight", {c.vocab_size, H}});
  s.other_tensors.push_back({"model.norm.weight", {H}});
  if (!c.tie_word_embeddings) s.other_tensors.push_back({"lm_head.weight", {c.vocab_size, H}});

  const int64_t L = c.num_hidden_layers;
  std::set<std::string> linear_weights;
  for (const LinearSpec& l : layer_linears(c)) linear_weights.insert(l.path + ".weight");
  for (const auto& t : s.layer_tensors) {
    const int64_t n = numel(t.shape);
    const bool is_bias = t.name.ends_with(".bias");
    const bool is_norm = t.name.find("norm") != std::string::npos;
    if (is_bias) {
      s.bias_parameters += L * n;
    } else if (is_norm) {
      s.norm_parameters += L * n;
    } else if (!linear_weights.count(t.name)) {
      s.router_parameters += L * n;
    } else {
      s.linear_parameters += L * n;
      for (int64_t l = 0; l < L; ++l) {
        add_nf4(s.nf4_dq, n, blocksize, true);
        add_nf4(s.nf4, n, blocksize, false);
      }
    }
  }
  for (const auto& t : s.other_tensors) {
    if (t.name.find("norm") != std::string::npos)
      s.norm_parameters += numel(t.shape);
    else
      s.embedding_parameters += numel(t.shape);
  }
  s.total_parameters =
      s.linear_parameters + s.embedding_parameters + s.norm_parameters + s.bias_parameters + s.router_parameters;
  s.bytes_16bit = 2 * s.total_parameters;
  const int64_t rest = 2 * (s.total_parameters - s.linear_parameters);
  for (NF4Memory* m : {&s.nf4_dq, &s.nf4}) {
    m->rest_bytes = rest;
    m->bits_per_linear_weight = s.linear_parameters ? 8.0 * static_cast<double>(m->codes_bytes + m->stats_bytes) /
                                                          static_cast<double>(s.linear_parameters)
                                                    : 0;
  }
  return s;
}

}  // namespace qlora::model
