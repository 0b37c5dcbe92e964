// SHA-256 against Python's hashlib on files of awkward sizes.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "tests/common/harness.h"
#include "trainer/common/sha256.h"

using namespace qlora;

TEST(Sha256, MatchesHashlib) {
  auto d = test::temp_dir();
  std::mt19937 rng(7);
  std::vector<std::string> args;
  std::vector<std::string> ours;
  for (size_t n : {0, 1, 55, 56, 63, 64, 65, 119, 1000, 1 << 20}) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    auto p = d / ("f" + std::to_string(n));
    std::ofstream(p, std::ios::binary) << s;
    args.push_back(p.string());
    ours.push_back(sha256_file(p));
    EXPECT_EQ(sha256_hex(s), ours.back());
  }
  test::ProcResult r = test::run_python("sha256_file.py", args);
  ASSERT_EQ(r.code, 0);
  std::istringstream in(r.output);
  for (const auto& h : ours) {
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line, h);
  }
}
