// PEFT adapter_config.json reader (trainer/io/peft.h): the input is an adapter_config.json, read
// by read_peft_adapter_config as the program reads an adapter directory. A config it accepts,
// written back as export writes it, must read back the same.
#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/peft.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const auto dir = [] {
    auto d = fuzz::scratch_dir() / "adapter";
    std::filesystem::create_directories(d / "again");
    return d;
  }();
  fuzz::write_bytes(dir / io::kPeftConfigFile, std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("read_peft_adapter_config", [&] {
    io::PeftAdapterConfig c = io::read_peft_adapter_config(dir);
    fuzz::write_bytes(dir / "again" / io::kPeftConfigFile, io::peft_adapter_config_json(c));
    io::PeftAdapterConfig d;
    try {
      d = io::read_peft_adapter_config(dir / "again");
    } catch (const UserError& e) {
      std::fprintf(stderr, "fuzz: the written adapter_config.json does not read back: %s\n", e.what());
      std::abort();
    }
    if (c.r != d.r || c.target_modules != d.target_modules || c.use_rslora != d.use_rslora ||
        c.base_model_name_or_path != d.base_model_name_or_path ||
        !(c.lora_alpha == d.lora_alpha || (c.lora_alpha != c.lora_alpha && d.lora_alpha != d.lora_alpha))) {
      std::fprintf(stderr, "fuzz: adapter_config.json changed through writing it back\n");
      std::abort();
    }
  });
  return 0;
}
