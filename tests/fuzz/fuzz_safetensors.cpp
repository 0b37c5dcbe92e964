// safetensors reader (trainer/io/safetensors.h): the input is a whole .safetensors file, opened
// the way model loading opens one; every tensor it accepts is then viewed and read.
#include <ATen/core/Tensor.h>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  const auto path = fuzz::scratch_dir() / "model.safetensors";
  fuzz::write_bytes(path, std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("SafetensorsFile", [&] {
    io::SafetensorsFile f(path);
    uint64_t sum = 0;
    for (const auto& t : f.tensors()) {
      if (f.find(t.name) != &t) std::abort();
      auto b = f.bytes(t.name);
      for (uint8_t x : b) sum += x;  // every accepted byte range lies inside the mapping
      at::Tensor v = f.tensor(t.name);
      if (static_cast<uint64_t>(v.numel()) != static_cast<uint64_t>(t.numel())) std::abort();
    }
    for (const auto& [k, v] : f.metadata()) sum += k.size() + v.size();
    (void)sum;
  });
  return 0;
}
