// report_to and logging_dir as transformers names them: a name or a list, "all" and "none", any
// other integration a one-line error naming the key; logging_dir by default <output_dir>/runs.
#include <gtest/gtest.h>

#include <filesystem>

#include "trainer/common/error.h"
#include "trainer/config/load.h"

using namespace qlora;
using config::TrainConfig;
namespace stdfs = std::filesystem;

namespace {

const char* kBase = R"(base_model: models/tiny
datasets:
  - path: data/train.jsonl
    type: alpaca
lora_target_modules: [q_proj, v_proj]
max_steps: 10
output_dir: runs/x
)";

TrainConfig parse(const std::string& extra, const std::vector<std::string>& overrides = {}) {
  return config::parse_config(std::string(kBase) + extra, "configs/x.yaml", overrides);
}

std::string error_of(const std::string& extra) {
  try {
    parse(extra);
  } catch (const UserError& e) { return e.what(); }
  return "(no error)";
}

std::string abs_path(const std::string& p) { return stdfs::absolute(p).lexically_normal().string(); }

}  // namespace

TEST(ReportTo, NamesListsAllAndNone) {
  using V = std::vector<std::string>;
  EXPECT_EQ(parse("").report_to, V{});
  EXPECT_FALSE(parse("").reports_to("tensorboard"));
  EXPECT_EQ(parse("report_to: tensorboard\n").report_to, V{"tensorboard"});
  EXPECT_EQ(parse("report_to: TensorBoard\n").report_to, V{"tensorboard"});
  EXPECT_EQ(parse("report_to: all\n").report_to, V{"tensorboard"});
  EXPECT_EQ(parse("report_to: [tensorboard, all]\n").report_to, V{"tensorboard"});
  EXPECT_EQ(parse("report_to: none\n").report_to, V{});
  EXPECT_EQ(parse("report_to: [none]\n").report_to, V{});
  EXPECT_EQ(parse("report_to: []\n").report_to, V{});
  EXPECT_EQ(parse("report_to:\n").report_to, V{});
  EXPECT_EQ(parse("", {"report_to=tensorboard"}).report_to, V{"tensorboard"});
  EXPECT_TRUE(parse("report_to: tensorboard\n").reports_to("tensorboard"));
}

TEST(ReportTo, OtherIntegrationsAreOneLineErrors) {
  EXPECT_EQ(error_of("report_to: wandb\n"),
            "configs/x.yaml:8: report_to: expected tensorboard, all or none (or a list of them), got \"wandb\"");
  EXPECT_EQ(error_of("report_to:\n  - tensorboard\n  - mlflow\n"),
            "configs/x.yaml:10: report_to.1: expected tensorboard, all or none (or a list of them), got \"mlflow\"");
  EXPECT_EQ(error_of("report_to: {tensorboard: true}\n"),
            "configs/x.yaml:8: report_to: expected tensorboard, all or none (or a list of them), got a mapping");
  EXPECT_EQ(error_of("report_to: 3\n"),
            "configs/x.yaml:8: report_to: expected tensorboard, all or none (or a list of them), got 3");
}

TEST(ReportTo, LoggingDirDefaultsToRunsInTheOutputDir) {
  EXPECT_EQ(parse("").logging_dir, abs_path("runs/x/runs"));
  EXPECT_EQ(parse("logging_dir: tb/one\n").logging_dir, abs_path("tb/one"));
  EXPECT_EQ(parse("", {"output_dir=/r/out"}).logging_dir, "/r/out/runs");
}

TEST(ReportTo, WrittenReadBackAndHarmlessToChange) {
  for (const std::string extra : {"", "report_to: tensorboard\nlogging_dir: /tb\n"}) {
    const TrainConfig c = parse(extra);
    const std::string y = config::to_yaml(c);
    const TrainConfig back = config::parse_config(y, "run/config.yaml");
    EXPECT_TRUE(config::diff_configs(c, back).empty()) << y;
    EXPECT_EQ(back.report_to, c.report_to);
    EXPECT_EQ(back.logging_dir, c.logging_dir);
  }
  const auto d = config::diff_configs(parse(""), parse("report_to: tensorboard\nlogging_dir: /tb\n"));
  ASSERT_EQ(d.size(), 2u);
  for (const auto& ch : d) {
    EXPECT_TRUE(ch.key == "report_to" || ch.key == "logging_dir") << ch.key;
    EXPECT_EQ(ch.kind, config::ChangeKind::Harmless) << ch.key;
  }
}
