// Smoke tests of the house: the reference Python environment works, the binary answers
// --version and --help, and unimplemented subcommands fail plainly.
#include <gtest/gtest.h>

#include "tests/common/harness.h"

using namespace qlora::test;

TEST(Smoke, ReferenceEnvironmentImportsAndBnbQuantizesOnCpu) {
  ProcResult r = run_python("smoke.py");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ok torch=2.11.0"), std::string::npos) << r.output;
}

TEST(Smoke, VersionNamesLibTorchArchsAndGpu) {
  ProcResult r = run_qlora("--version");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("qlora "), std::string::npos);
  EXPECT_NE(r.output.find("LibTorch 2.11.0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CUDA architectures:"), std::string::npos);
  EXPECT_NE(r.output.find("GPU:"), std::string::npos);
}

TEST(Smoke, EverySubcommandHasHelp) {
  for (const char* sub : {"train", "export", "quantize", "generate", "eval", "inspect"}) {
    ProcResult r = run_qlora(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub << ": " << r.output;
    EXPECT_NE(r.output.find(sub), std::string::npos) << r.output;
  }
}

TEST(Smoke, UnknownOptionIsUsageErrorExit2) {
  ProcResult r = run_qlora("--no-such-flag");
  EXPECT_EQ(r.code, 2) << r.output;
}

TEST(Smoke, UsageErrorsAreOneLineNamingTheSubcommandsHelp) {
  struct Case {
    const char* args;
    const char* says;
  };
  for (const Case& c : {Case{"train", "config"}, Case{"train a.yaml --no-such-flag", "--no-such-flag"},
                        Case{"export ckpt --out o --format nope", "nope"}, Case{"eval --batch-size x", "x"}}) {
    ProcResult r = run_qlora(c.args);
    EXPECT_EQ(r.code, 2) << c.args << ": " << r.output;
    EXPECT_EQ(r.output.rfind("qlora: error: ", 0), 0u) << c.args << ": " << r.output;
    EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << c.args << ": " << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.args << ": " << r.output;
    const std::string sub = std::string(c.args).substr(0, std::string(c.args).find(' '));
    EXPECT_NE(r.output.find("run 'qlora " + sub + " --help'"), std::string::npos) << c.args << ": " << r.output;
  }
}
