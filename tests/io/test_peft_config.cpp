// adapter_config.json: init_lora_weights and loftq_config as PEFT writes them, read back.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/io/peft.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

std::string read_error(const std::string& json) {
  const stdfs::path d = test::temp_dir();
  std::ofstream(d / "adapter_config.json") << json;
  try {
    io::read_peft_adapter_config(d);
  } catch (const UserError& e) { return e.what(); }
  return "(no error)";
}

}  // namespace

TEST(PeftConfig, InitLoraWeightsRoundTrips) {
  for (const std::string init : {"true", "false", "gaussian", "pissa", "pissa_niter_4", "olora", "loftq"}) {
    SCOPED_TRACE(init);
    const stdfs::path d = test::temp_dir(init);
    io::PeftAdapterConfig c;
    c.target_modules = {"q_proj"};
    c.init_lora_weights = init;
    c.loftq_iter = 3;
    std::ofstream(d / "adapter_config.json") << io::peft_adapter_config_json(c);
    const io::PeftAdapterConfig back = io::read_peft_adapter_config(d);
    EXPECT_EQ(back.init_lora_weights, init);
    EXPECT_EQ(back.loftq_iter, init == "loftq" ? 3 : 1);
  }
  // PEFT writes the booleans as JSON booleans and the methods as strings.
  io::PeftAdapterConfig c;
  c.target_modules = {"q_proj"};
  EXPECT_NE(io::peft_adapter_config_json(c).find("\"init_lora_weights\": true"), std::string::npos);
  c.init_lora_weights = "pissa";
  EXPECT_NE(io::peft_adapter_config_json(c).find("\"init_lora_weights\": \"pissa\""), std::string::npos);
}

TEST(PeftConfig, UnsupportedInitIsNamed) {
  const std::string base = R"({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], )";
  EXPECT_NE(read_error(base + R"("init_lora_weights": "corda"})").find("init_lora_weights: \"corda\" is not supported"),
            std::string::npos);
  EXPECT_NE(read_error(base + R"("init_lora_weights": 3})").find("init_lora_weights: expected true, false"),
            std::string::npos);
  EXPECT_NE(read_error(base + R"("init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 8}})")
                .find("loftq_config.loftq_bits: only 4"),
            std::string::npos);
}
