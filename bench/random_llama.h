// Shared by the CPU training benchmarks: a random llama-shaped checkpoint (bf16 safetensors, norms
// at one, weights N(0, 0.05)), or a Mixtral-shaped one when `experts` is set (each expert's
// intermediate size is `intermediate`), and the machine's CPU name.
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "trainer/common/fs.h"
#include "trainer/io/safetensors.h"

namespace qlora::bench {

struct LlamaShape {
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads;
  int64_t experts = 0, experts_per_tok = 0;  // > 0: a mixtral mixture of experts
};

inline void write_random_llama(const std::filesystem::path& dir, const LlamaShape& s) {
  std::filesystem::create_directories(dir);
  const bool moe = s.experts > 0;
  nlohmann::json c = {{"architectures", {moe ? "MixtralForCausalLM" : "LlamaForCausalLM"}},
                      {"model_type", moe ? "mixtral" : "llama"},
                      {"vocab_size", s.vocab},
                      {"hidden_size", s.hidden},
                      {"intermediate_size", s.intermediate},
                      {"num_hidden_layers", s.layers},
                      {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.kv_heads},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"max_position_embeddings", 4096},
                      {"tie_word_embeddings", false},
                      {"torch_dtype", "bfloat16"},
                      {"hidden_act", "silu"}};
  if (moe) c.update({{"num_local_experts", s.experts}, {"num_experts_per_tok", s.experts_per_tok}});
  fs::write_file_atomic(dir / "config.json", c.dump(2));
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  io::SafetensorsWriter w;
  auto rnd = [&](std::vector<int64_t> shape) { return (at::randn(shape, g, at::kFloat) * 0.05).to(at::kBFloat16); };
  const int64_t H = s.hidden, hd = s.hidden / s.heads;
  w.add("model.embed_tokens.weight", rnd({s.vocab, H}));
  w.add("lm_head.weight", rnd({s.vocab, H}));
  w.add("model.norm.weight", at::ones({H}, at::kBFloat16));
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.add(p + "input_layernorm.weight", at::ones({H}, at::kBFloat16));
    w.add(p + "post_attention_layernorm.weight", at::ones({H}, at::kBFloat16));
    w.add(p + "self_attn.q_proj.weight", rnd({s.heads * hd, H}));
    w.add(p + "self_attn.k_proj.weight", rnd({s.kv_heads * hd, H}));
    w.add(p + "self_attn.v_proj.weight", rnd({s.kv_heads * hd, H}));
    w.add(p + "self_attn.o_proj.weight", rnd({H, s.heads * hd}));
    if (moe) {
      w.add(p + "block_sparse_moe.gate.weight", rnd({s.experts, H}));
      for (int64_t e = 0; e < s.experts; ++e) {
        const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        w.add(x + "w1.weight", rnd({s.intermediate, H}));
        w.add(x + "w3.weight", rnd({s.intermediate, H}));
        w.add(x + "w2.weight", rnd({H, s.intermediate}));
      }
      continue;
    }
    w.add(p + "mlp.gate_proj.weight", rnd({s.intermediate, H}));
    w.add(p + "mlp.up_proj.weight", rnd({s.intermediate, H}));
    w.add(p + "mlp.down_proj.weight", rnd({H, s.intermediate}));
  }
  w.write(dir / "model.safetensors");
}

// The shape as the results files describe the model (config.json's names).
inline nlohmann::json shape_json(const LlamaShape& s) {
  nlohmann::json j = {
      {"vocab_size", s.vocab},         {"hidden_size", s.hidden},        {"intermediate_size", s.intermediate},
      {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads}};
  if (s.experts > 0) j.update({{"num_local_experts", s.experts}, {"num_experts_per_tok", s.experts_per_tok}});
  return j;
}

// "model name" from /proc/cpuinfo, or "".
inline std::string cpu_model_name() {
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "";
}

}  // namespace qlora::bench
