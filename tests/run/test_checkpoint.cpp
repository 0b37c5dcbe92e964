// Checkpoint directories: atomic publish, manifest verification, keep-last-K, resume choice.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/run/checkpoint.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {
void save(const stdfs::path& dir, int64_t step, int64_t limit) {
  run::CheckpointWriter w(dir, step);
  std::ofstream(w.path() / "adapter_model.safetensors") << "weights-" << step;
  stdfs::create_directories(w.path() / "sub");
  std::ofstream(w.path() / "sub" / "state.json") << "{\"step\": " << step << "}";
  EXPECT_FALSE(stdfs::exists(w.final_path()));
  w.commit(limit);
}
}  // namespace

TEST(Checkpoint, PublishesWithManifestAndLatest) {
  auto d = test::temp_dir();
  save(d, 5, 0);
  auto c = d / "checkpoint-000005";
  ASSERT_TRUE(stdfs::exists(c / "manifest.json"));
  EXPECT_FALSE(run::verify_checkpoint(c).has_value());
  EXPECT_EQ(fs::read_file(d / "latest"), "checkpoint-000005\n");
  EXPECT_EQ(run::checkpoint_step(c), 5);
}

TEST(Checkpoint, KeepsOnlySaveTotalLimit) {
  auto d = test::temp_dir();
  for (int s : {10, 20, 30, 40}) save(d, s, 2);
  auto all = run::list_checkpoints(d);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].filename(), "checkpoint-000040");
  EXPECT_EQ(all[1].filename(), "checkpoint-000030");
}

TEST(Checkpoint, CorruptOrPartialNewestIsSkippedForPreviousGood) {
  auto d = test::temp_dir();
  save(d, 1, 0);
  save(d, 2, 0);
  save(d, 3, 0);
  // Corrupt the newest: flip its content (same size).
  { std::ofstream(d / "checkpoint-000003" / "adapter_model.safetensors") << "weights-X"; }
  // A partial one (crash before the manifest) that looks newer still.
  stdfs::create_directories(d / "checkpoint-000004");
  std::ofstream(d / "checkpoint-000004" / "adapter_model.safetensors") << "half";
  std::vector<std::string> warn;
  auto r = run::find_resume_checkpoint(d, &warn);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->filename(), "checkpoint-000002");
  ASSERT_EQ(warn.size(), 2u);
  EXPECT_NE(warn[0].find("incomplete"), std::string::npos) << warn[0];
  EXPECT_NE(warn[1].find("checksum mismatch"), std::string::npos) << warn[1];
  // A missing file is detected too.
  stdfs::remove(d / "checkpoint-000002" / "sub" / "state.json");
  EXPECT_NE(run::verify_checkpoint(d / "checkpoint-000002").value().find("missing"), std::string::npos);
}

TEST(Checkpoint, AbandonedStagingLeavesNothingAndIsCleanedLater) {
  auto d = test::temp_dir();
  {
    run::CheckpointWriter w(d, 7);
    std::ofstream(w.path() / "x") << "1";
    // destroyed without commit (e.g. an exception while saving)
  }
  EXPECT_TRUE(run::list_checkpoints(d).empty());
  EXPECT_FALSE(run::find_resume_checkpoint(d, nullptr).has_value());
  // A leftover temp dir from a killed process is removed by the next save.
  stdfs::create_directories(d / ".checkpoint-000008.tmp-99999-0");
  save(d, 9, 0);
  for (const auto& e : stdfs::directory_iterator(d))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}
