// The config `qlora init` writes, for model shapes no test can train: a 70B Llama's config.json
// (no weights: init reads none) with a real tokenizer. The micro-batch choice against the
// memory estimate it is made from.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/train/init_config.h"
#include "trainer/train/preflight.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

// Llama-2-70B's config.json shapes, with the demo model's SentencePiece tokenizer.
stdfs::path llama_70b_dir() {
  const stdfs::path dir = test::temp_dir("llama70b");
  std::ofstream(dir / "config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
            "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-05, "hidden_act": "silu", "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"})";
  for (const char* f : {"tokenizer.model", "tokenizer_config.json"})
    stdfs::copy_file(test::source_dir() / "data/demo/model" / f, dir / f);
  return dir;
}

}  // namespace

TEST(InitConfig, LargeModelGetsThePapersSettingsAndAPlaceholder) {
  const stdfs::path dir = llama_70b_dir();
  const std::string text = train::init_config_text({dir.string(), ""});
  const config::TrainConfig cfg = config::parse_config(text, "init.yaml");
  EXPECT_EQ(cfg.lora.r, 64);
  EXPECT_EQ(cfg.lora.alpha, 16);
  EXPECT_EQ(cfg.lora.dropout, 0.05);  // above 13B parameters
  EXPECT_EQ(cfg.optim.learning_rate, 2e-4);
  EXPECT_EQ(cfg.optim.lr_scheduler, "constant");
  EXPECT_EQ(cfg.optim.warmup_ratio, 0.03);
  EXPECT_EQ(cfg.data.sequence_len, 2048);  // max_position_embeddings 4096, capped without data
  EXPECT_EQ(cfg.num_epochs, 1);
  EXPECT_NE(cfg.data.datasets.at(0).path.find("REPLACE_WITH_YOUR_DATA"), std::string::npos);
  EXPECT_NE(text.find("NOT TRAINABLE AS WRITTEN"), std::string::npos);
  EXPECT_NE(text.find("  - down_proj                     # 28672 -> 8192\n"), std::string::npos) << text;

  // The micro-batch is choose_micro_batch's, and that is the largest whose estimate fits the
  // memory it read (without checkpointing when any does).
  const model::ModelConfig mc = model::read_model_config(dir);
  const train::MicroBatchChoice c = train::choose_micro_batch(cfg, mc, at::Device(at::kCPU));
  ASSERT_GT(c.available, 0u);
  auto estimate = [&](int64_t m, bool gc) {
    config::TrainConfig t = cfg;
    t.micro_batch_size = m;
    t.gradient_checkpointing = gc;
    return train::estimate_memory(t, mc, at::Device(at::kCPU)).total();
  };
  EXPECT_EQ(c.estimate, estimate(c.micro_batch_size, c.gradient_checkpointing));
  if (c.fits) {
    EXPECT_LE(c.estimate, c.available);
    if (c.micro_batch_size < 16) { EXPECT_GT(estimate(c.micro_batch_size * 2, c.gradient_checkpointing), c.available); }
    if (c.gradient_checkpointing) { EXPECT_GT(estimate(1, false), c.available); }
  } else {
    EXPECT_EQ(c.micro_batch_size, 1);
    EXPECT_TRUE(c.gradient_checkpointing);
    EXPECT_GT(c.estimate, c.available);
    EXPECT_NE(text.find("not even 1 fits"), std::string::npos) << text;
  }
}
