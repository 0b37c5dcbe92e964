// Values echoed in error messages are shortened: a message stays one readable line whatever the
// input held.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/error.h"

using namespace qlora;

TEST(Shorten, KeepsShortValuesAndCutsLongOnesAtACharacterBoundary) {
  EXPECT_EQ(shorten("lora_r"), "lora_r");
  EXPECT_EQ(shorten(std::string(80, 'a')), std::string(80, 'a'));
  EXPECT_EQ(shorten(std::string(81, 'a')), std::string(77, 'a') + "... (81 bytes)");
  // "é" is two bytes: a cut in its middle moves back before it.
  std::string s = std::string(76, 'a') + "\xc3\xa9" + std::string(10, 'b');
  EXPECT_EQ(shorten(s), std::string(76, 'a') + "... (88 bytes)");
}

TEST(Shorten, ConfigErrorsDoNotEchoKilobytesOfAValue) {
  const auto d = test::temp_dir();
  const std::string huge(20000, 'x');
  {
    std::ofstream o(d / "cfg.yaml");
    o << "base_model: m\nlora_r: " << huge << "\n";
  }
  test::ProcResult r = test::run_qlora("train " + test::quote((d / "cfg.yaml").string()));
  EXPECT_EQ(r.code, 2) << r.output.substr(0, 500);
  EXPECT_LT(r.output.size(), 600u) << r.output.substr(0, 600);
  EXPECT_NE(r.output.find("lora_r"), std::string::npos) << r.output.substr(0, 600);
  EXPECT_NE(r.output.find("(20000 bytes)"), std::string::npos) << r.output.substr(0, 600);
  {
    std::ofstream o(d / "cfg.yaml");
    o << "base_model: m\n" << huge << ": 1\n";
  }
  r = test::run_qlora("train " + test::quote((d / "cfg.yaml").string()));
  EXPECT_EQ(r.code, 2) << r.output.substr(0, 500);
  EXPECT_LT(r.output.size(), 600u) << r.output.substr(0, 600);
}
