// GGUF reader (trainer/io/gguf_reader.h) and ggml dequantization (trainer/quant/ggml_dequant.h):
// the input is a whole .gguf file, opened the way a GGUF base model is; every metadata value is
// visited and every tensor it accepts is read, dequantized where its type is one we read.
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/quant/ggml_dequant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  const auto path = fuzz::scratch_dir() / "model.gguf";
  fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("GgufFile", [&] {
    io::GgufFile f(path);
    uint64_t sum = 0;
    for (const auto& k : f.keys()) sum += f.value(k).size() + static_cast<uint32_t>(f.type_of(k));
    for (const auto& t : f.tensors()) {
      if (f.find(t.name) != &t) std::abort();
      auto b = f.bytes(t.name);
      if (b.size() != t.nbytes) std::abort();
      for (uint8_t x : b) sum += x;  // every accepted byte range lies inside the mapping
      if (quant::ggml_can_dequantize(t.type) && t.numel() <= (int64_t{1} << 20)) {
        at::Tensor v = quant::gguf_tensor_f32(f, t.name);
        if (v.numel() != t.numel()) std::abort();
      }
    }
    (void)sum;
  });
  return 0;
}
