// The real-model configs in configs/ state the memory a run needs ("Memory (qlora plan on a GPU,
// every row full): about N GiB"): that number is the peak trainer/train/plan.h plans for the
// model's published config.json shapes, written here (the weights are not needed).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/config/load.h"
#include "trainer/model/model_config.h"
#include "trainer/train/plan.h"
#include "trainer/train/preflight.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

// config.json shapes as the model's Hugging Face repository publishes them.
nlohmann::json published_shapes(const std::string& config_name) {
  using json = nlohmann::json;
  if (config_name == "phi-3.5-mini-qlora.yaml") {  // microsoft/Phi-3.5-mini-instruct
    return json{{"architectures", {"Phi3ForCausalLM"}},
                {"model_type", "phi3"},
                {"hidden_size", 3072},
                {"intermediate_size", 8192},
                {"num_hidden_layers", 32},
                {"num_attention_heads", 32},
                {"num_key_value_heads", 32},
                {"vocab_size", 32064},
                {"max_position_embeddings", 131072},
                {"original_max_position_embeddings", 4096},
                {"rope_scaling",
                 {{"type", "longrope"},
                  {"short_factor", std::vector<double>(48, 1.0)},
                  {"long_factor", std::vector<double>(48, 1.0)}}},
                {"sliding_window", 262144},
                {"tie_word_embeddings", false},
                {"torch_dtype", "bfloat16"}};
  }
  if (config_name == "qwen3-30b-a3b-qlora.yaml") {  // Qwen/Qwen3-30B-A3B
    return json{{"architectures", {"Qwen3MoeForCausalLM"}},
                {"model_type", "qwen3_moe"},
                {"hidden_size", 2048},
                {"intermediate_size", 6144},
                {"moe_intermediate_size", 768},
                {"num_experts", 128},
                {"num_experts_per_tok", 8},
                {"norm_topk_prob", true},
                {"decoder_sparse_step", 1},
                {"mlp_only_layers", json::array()},
                {"num_hidden_layers", 48},
                {"num_attention_heads", 32},
                {"num_key_value_heads", 4},
                {"head_dim", 128},
                {"vocab_size", 151936},
                {"max_position_embeddings", 40960},
                {"rope_theta", 1000000.0},
                {"tie_word_embeddings", false},
                {"torch_dtype", "bfloat16"}};
  }
  if (config_name == "gemma-2-9b-qlora.yaml") {  // google/gemma-2-9b
    return json{{"architectures", {"Gemma2ForCausalLM"}},
                {"model_type", "gemma2"},
                {"hidden_size", 3584},
                {"intermediate_size", 14336},
                {"num_hidden_layers", 42},
                {"num_attention_heads", 16},
                {"num_key_value_heads", 8},
                {"head_dim", 256},
                {"vocab_size", 256000},
                {"max_position_embeddings", 8192},
                {"query_pre_attn_scalar", 256},
                {"attn_logit_softcapping", 50.0},
                {"final_logit_softcapping", 30.0},
                {"sliding_window", 4096},
                {"rope_theta", 10000.0},
                {"tie_word_embeddings", true},
                {"torch_dtype", "float32"}};
  }
  return nullptr;
}

}  // namespace

TEST(ShippedConfigs, StatedMemoryIsThePreflightEstimate) {
  int checked = 0;
  for (const auto& e : stdfs::directory_iterator(test::source_dir() / "configs")) {
    const nlohmann::json shapes = published_shapes(e.path().filename().string());
    if (shapes.is_null()) continue;
    SCOPED_TRACE(e.path().string());
    const std::string text = fs::read_file(e.path());
    std::smatch m;
    ASSERT_TRUE(std::regex_search(
        text, m, std::regex(R"(Memory \(qlora plan on a GPU, every row full\): about ([0-9.]+) GiB)")));
    const double stated = std::stod(m[1].str());
    const config::TrainConfig cfg = config::load_config(e.path().string());
    const model::ModelConfig mc = model::parse_model_config(shapes.dump(), "config.json");
    const train::MemoryEstimate est = train::estimate_memory(cfg, mc, at::Device(at::kCUDA, 0));
    const double gib = static_cast<double>(est.total()) / static_cast<double>(int64_t{1} << 30);
    std::printf("%s: %s\n", e.path().filename().c_str(), est.describe().c_str());
    const train::MemoryPlan plan = train::plan_memory(cfg, mc, at::Device(at::kCUDA, 0), train::full_rows(cfg));
    std::printf("%s", train::describe_plan(cfg, mc, plan, nullptr, train::full_rows(cfg), std::nullopt, {}).c_str());
    EXPECT_NEAR(gib, stated, 0.05 * stated) << est.describe();
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

// lora_target_parameters: the stacked expert adapters (r per expert) count in the estimate, with
// their gradients and the optimizer's fp32 master and moments.
TEST(ShippedConfigs, ExpertAdaptersCountInTheEstimate) {
  const stdfs::path f = test::source_dir() / "configs/qwen3-30b-a3b-qlora.yaml";
  config::TrainConfig cfg = config::load_config(f.string());
  const model::ModelConfig mc =
      model::parse_model_config(published_shapes(f.filename().string()).dump(), "config.json");
  const at::Device gpu(at::kCUDA, 0);
  const double before = static_cast<double>(train::estimate_memory(cfg, mc, gpu).lora);
  cfg.lora.target_parameters = {"experts.gate_up_proj", "experts.down_proj"};
  cfg.lora.dropout = 0;
  const double after = static_cast<double>(train::estimate_memory(cfg, mc, gpu).lora);
  const double params =
      static_cast<double>(mc.num_hidden_layers * cfg.lora.r * mc.num_experts) *
      static_cast<double>(mc.hidden_size + 2 * mc.moe_intermediate_size + mc.moe_intermediate_size + mc.hidden_size);
  // bf16 A, B and gradients, the fp32 sum of the micro-batches' gradients, the fp32 master, moments
  const double state = cfg.optim.optimizer == "adamw_8bit" ? 2 + 8.0 / 256 : 8;  // 8-bit: codes + absmax
  const double per_param = 2 * 2 + (cfg.gradient_accumulation_steps > 1 ? 4 : 0) + 4 + state;
  EXPECT_NEAR(after - before, params * per_param, 1e-6 * params * per_param);
  cfg.lora.target_parameters = {"mlp.experts.down_proj"};
  const double down = static_cast<double>(train::estimate_memory(cfg, mc, gpu).lora);
  EXPECT_NEAR(down - before,
              static_cast<double>(mc.num_hidden_layers * cfg.lora.r * mc.num_experts) *
                  static_cast<double>(mc.moe_intermediate_size + mc.hidden_size) * per_param,
              2.0);
}
