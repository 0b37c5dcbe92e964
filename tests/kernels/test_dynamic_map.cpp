// kernels::dynamic_map must equal bitsandbytes' create_dynamic_map bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <sstream>

#include "kernels/ops.h"
#include "tests/common/harness.h"

using namespace qlora;

TEST(DynamicMap, BitIdenticalToBitsandbytes) {
  test::ProcResult r = test::run_python("dynamic_map.py");
  ASSERT_EQ(r.code, 0);
  std::istringstream lines(r.output);
  std::string line;
  int checked = 0;
  while (std::getline(lines, line)) {
    std::istringstream ss(line);
    std::string kind;
    ss >> kind;
    if (kind != "signed" && kind != "unsigned") continue;
    at::Tensor ours = kernels::dynamic_map(kind == "signed");
    ASSERT_EQ(ours.numel(), 256);
    for (int i = 0; i < 256; ++i) {
      std::string hex;
      ss >> hex;
      uint32_t bits = 0;
      for (int b = 0; b < 4; ++b) bits |= std::stoul(hex.substr(2 * b, 2), nullptr, 16) << (8 * b);
      float ref;
      std::memcpy(&ref, &bits, 4);
      float v = ours.data_ptr<float>()[i];
      EXPECT_EQ(std::memcmp(&v, &ref, 4), 0) << kind << "[" << i << "] ours=" << v << " bnb=" << ref;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2) << r.output;
}
