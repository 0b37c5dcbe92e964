// llama.cpp LoRA adapter GGUF, read back by the gguf package (llama.cpp's own reader).
#include <gtest/gtest.h>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/io/gguf.h"
#include "trainer/io/peft.h"
#include "trainer/io/safetensors.h"

using namespace qlora;

namespace {
// A 2-layer GQA model's LoRA: hidden 64, 4 heads of 16, 2 kv heads, intermediate 96, r 4.
std::vector<io::LoraTensor> make_lora() {
  at::manual_seed(3);
  const int64_t H = 64, KV = 32, I = 96, r = 4;
  std::vector<io::LoraTensor> v;
  for (int l = 0; l < 2; ++l) {
    auto add = [&](const std::string& m, int64_t in, int64_t out) {
      v.push_back({"model.layers." + std::to_string(l) + "." + m, at::randn({r, in}), at::randn({out, r})});
    };
    add("self_attn.q_proj", H, H);
    add("self_attn.k_proj", H, KV);
    add("self_attn.v_proj", H, KV);
    add("self_attn.o_proj", H, H);
    add("mlp.gate_proj", H, I);
    add("mlp.up_proj", H, I);
    add("mlp.down_proj", I, H);
  }
  return v;
}
}  // namespace

TEST(Gguf, LoraAdapterReadByGgufPackage) {
  auto d = test::temp_dir();
  auto lora = make_lora();
  io::SafetensorsWriter peft;
  for (const auto& l : lora) {
    peft.add(io::peft_lora_key(l.module, 'A'), l.A);
    peft.add(io::peft_lora_key(l.module, 'B'), l.B);
  }
  peft.write(d / "adapter_model.safetensors");
  struct Case {
    std::string arch;
    at::ScalarType dtype;
  };
  for (const Case& c :
       {Case{"llama", at::kFloat}, Case{"llama", at::kHalf}, Case{"llama", at::kBFloat16}, Case{"qwen2", at::kFloat}}) {
    io::GgufLoraOptions o;
    o.architecture = c.arch;
    o.alpha = 8;
    o.n_head = 4;
    o.n_head_kv = 2;
    o.dtype = c.dtype;
    auto p = d / (c.arch + "-" + std::string(c10::toString(c.dtype)) + ".gguf");
    io::write_lora_gguf(p, lora, o);
    test::ProcResult r = test::run_python(
        "gguf_check.py", {p.string(), (d / "adapter_model.safetensors").string(), c.arch, "4", "2", "8"});
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("ok 28 tensors"), std::string::npos) << r.output;
  }
}

TEST(Gguf, UntargetableModuleIsAClearError) {
  EXPECT_EQ(io::gguf_tensor_base_name("model.layers.12.mlp.down_proj"), "blk.12.ffn_down");
  EXPECT_THROW(io::gguf_tensor_base_name("lm_head"), UserError);
}
