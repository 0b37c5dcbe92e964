// YAML config loader (trainer/config/load.h): the input is a config file's text, read by
// parse_config as `qlora train CONFIG` reads it. A config it accepts must come back unchanged
// through to_yaml (the resolved config a run directory keeps and resume reads).
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/config/load.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::guarded("parse_config", [&] {
    config::TrainConfig cfg = config::parse_config(text, "fuzz.yaml");
    const std::string resolved = config::to_yaml(cfg);
    config::TrainConfig again;
    try {
      again = config::parse_config(resolved, "resolved.yaml");
    } catch (const UserError& e) {
      std::fprintf(stderr, "fuzz: the resolved config does not read back: %s\n--- resolved:\n%s\n", e.what(),
                   resolved.c_str());
      std::abort();
    }
    auto changes = config::diff_configs(cfg, again);
    if (!changes.empty()) {
      std::fprintf(stderr, "fuzz: %s changed through to_yaml: %s -> %s\n", changes[0].key.c_str(),
                   changes[0].before.c_str(), changes[0].after.c_str());
      std::abort();
    }
  });
  return 0;
}
