// tokenizer_config.json loading (trainer/tokenizer/load.cpp): the input is a
// tokenizer_config.json next to the demo model's SentencePiece tokenizer.model, loaded with
// load_tokenizer; an accepted tokenizer encodes and decodes a text, and its chat template (the
// config's own, when it has one) renders a conversation for training.
#include <nlohmann/json.hpp>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/jinja/value.h"
#include "trainer/tokenizer/chat_template.h"
#include "trainer/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const auto dir = [] {
    auto d = fuzz::scratch_dir() / "tokenizer_config";
    std::filesystem::create_directories(d);
    std::filesystem::copy_file(std::filesystem::path(QLORA_FUZZ_DEMO_MODEL) / "tokenizer.model", d / "tokenizer.model");
    return d;
  }();
  static const jinja::Value messages = jinja::Value::from_json(
      nlohmann::ordered_json::parse(R"([{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}])"));
  fuzz::write_bytes(dir / "tokenizer_config.json", std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("load_tokenizer", [&] {
    auto tk = tok::load_tokenizer(dir);
    for (bool special : {false, true}) {
      auto ids = tk->encode("Hello <s> world</s><pad>!", special);
      (void)tk->decode(ids, false);
      (void)tk->decode(ids, true);
    }
    if (!tk->chat_template().empty())
      fuzz::guarded("chat template", [&] {
        auto t = tok::ChatTemplate::resolve("", *tk);
        (void)t.render_for_training(messages);
      });
  });
  return 0;
}
