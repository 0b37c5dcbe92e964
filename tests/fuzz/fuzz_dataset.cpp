// Dataset reader (trainer/data/records.h, formats.h): the input is a dataset file (.json: a JSON
// array when it starts with '[', else JSON Lines, as the program reads it). It is read strictly
// and with skip_invalid; every record kept is then built as a sample in each of the four formats
// with the demo model's tokenizer and chat template, as training builds them.
#include <memory>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/config/data_spec.h"
#include "trainer/data/formats.h"
#include "trainer/data/records.h"
#include "trainer/tokenizer/chat_template.h"
#include "trainer/tokenizer/tokenizer.h"

namespace {

struct Builders {
  std::unique_ptr<qlora::tok::Tokenizer> tk;
  std::unique_ptr<qlora::tok::ChatTemplate> chat;
  qlora::config::DataSpec spec;
  std::vector<std::unique_ptr<qlora::data::SampleBuilder>> all;
};

Builders& builders() {
  static Builders b = [] {
    using namespace qlora;
    Builders b;
    b.tk = tok::load_tokenizer(QLORA_FUZZ_DEMO_MODEL);
    b.chat = std::make_unique<tok::ChatTemplate>(tok::ChatTemplate::resolve("", *b.tk));
    for (const char* type : {"text", "alpaca", "chat", "prompt_completion"}) {
      config::DatasetSpec ds;
      ds.path = "fuzz.json";
      ds.type = type;
      b.all.push_back(std::make_unique<data::SampleBuilder>(ds, b.spec, *b.tk, b.chat.get()));
    }
    return b;
  }();
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  Builders& b = builders();
  const auto path = fuzz::scratch_dir() / "fuzz.json";
  fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("read_records", [&] { data::read_records(path, false, nullptr, [](std::vector<data::Record>&) {}); });
  int64_t skipped = 0;
  std::vector<data::Record> kept;
  fuzz::guarded("read_records skip_invalid", [&] {
    data::read_records(path, true, &skipped, [&](std::vector<data::Record>& chunk) {
      for (auto& r : chunk) kept.push_back(std::move(r));
    });
  });
  for (const auto& r : kept)
    for (const auto& builder : b.all)
      fuzz::guarded("SampleBuilder::build", [&] {
        data::Sample s = builder->build(r);
        if (s.input_ids.size() != s.labels.size()) std::abort();
      });
  return 0;
}
