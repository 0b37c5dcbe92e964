// tokenizer.json loading (trainer/tokenizer/load.cpp): the input is a tokenizer.json, alone in a
// model directory (so it runs as written, as for PreTrainedTokenizerFast), loaded with
// load_tokenizer as the program loads one. A tokenizer it accepts then encodes and decodes a few
// texts.
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const auto dir = [] {
    auto d = fuzz::scratch_dir() / "tokenizer_json";
    std::filesystem::create_directories(d);
    return d;
  }();
  fuzz::write_bytes(dir / "tokenizer.json", std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("load_tokenizer", [&] {
    auto tk = tok::load_tokenizer(dir);
    for (const char* text : {"Hello wörld 123!", " <s>a\n\n b</s>  ", "\xe2\x96\x81x\xf0\x9f\x98\x80\t"}) {
      for (bool special : {false, true}) {
        std::vector<int32_t> ids = tk->encode(text, special);
        for (int32_t id : ids)
          if (id < 0) std::abort();
        (void)tk->decode(ids, false);
        (void)tk->decode(ids, true);
      }
    }
    const int32_t n = tk->vocab_size();
    for (int32_t id = 0; id < n && id < 64; ++id) (void)tk->id_to_token(id);
  });
  return 0;
}
