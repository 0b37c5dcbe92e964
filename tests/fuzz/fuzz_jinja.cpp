// Jinja renderer through the chat template (trainer/tokenizer/chat_template.h, trainer/jinja):
// the input is template text, then optionally a NUL byte and a JSON messages list (a default
// conversation otherwise). The template is parsed, rendered with and without the generation
// prompt, and rendered for training (assistant spans), as data preparation and generate do.
#include <nlohmann/json.hpp>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/jinja/value.h"
#include "trainer/tokenizer/chat_template.h"

namespace {

const char* kDefaultMessages =
    R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},)"
    R"({"role":"assistant","content":"Hello!"},{"role":"user","content":"2+2?"},)"
    R"({"role":"assistant","content":"4","tool_calls":[{"type":"function","function":{"name":"add","arguments":{"a":2,"b":2}}}]}])";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  const auto parts =
      fuzz::split_input(std::string_view(reinterpret_cast<const char*>(data), size), std::string_view("\0", 1));
  const std::string_view source = parts.first, messages_text = parts.second;
  nlohmann::ordered_json mj = nlohmann::ordered_json::parse(messages_text, nullptr, /*allow_exceptions=*/false);
  if (!mj.is_array()) mj = nlohmann::ordered_json::parse(kDefaultMessages);
  tok::SpecialTokens special;
  special.bos_id = 1;
  special.bos_token = "<s>";
  special.eos_id = 2;
  special.eos_token = "</s>";
  fuzz::guarded("ChatTemplate", [&] {
    tok::ChatTemplate t(source, "fuzz template", special);
    const jinja::Value messages = jinja::Value::from_json(mj);
    fuzz::guarded("render", [&] { (void)t.render(messages, false); });
    fuzz::guarded("render (generation prompt)", [&] { (void)t.render(messages, true); });
    fuzz::guarded("render_for_training", [&] {
      tok::ChatTemplate::Rendered r = t.render_for_training(messages);
      for (const auto& [b, e] : r.assistant_spans)
        if (b > e || e > r.text.size()) std::abort();
    });
  });
  return 0;
}
