// trainer/common/fs: atomic writes and staged directories never leave half-written outputs.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"

using namespace qlora;

namespace {
std::string slurp(const std::filesystem::path& p) { return fs::read_file(p); }
size_t entries(const std::filesystem::path& d) {
  size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(d)) ++n;
  return n;
}
}  // namespace

TEST(Fs, WriteFileAtomicReplacesContentAndLeavesNoTemp) {
  auto d = test::temp_dir();
  fs::write_file_atomic(d / "a.txt", "first");
  fs::write_file_atomic(d / "a.txt", "second");
  EXPECT_EQ(slurp(d / "a.txt"), "second");
  EXPECT_EQ(entries(d), 1u);
}

TEST(Fs, ReadMissingFileIsUserErrorNamingPath) {
  auto d = test::temp_dir();
  try {
    fs::read_file(d / "missing.json");
    FAIL() << "expected UserError";
  } catch (const UserError& e) { EXPECT_NE(std::string(e.what()).find("missing.json"), std::string::npos) << e.what(); }
}

TEST(Fs, StagedDirPublishesOnlyOnCommit) {
  auto d = test::temp_dir();
  {
    fs::StagedDir s(d / "out");
    std::ofstream(s.path() / "x") << "1";
    EXPECT_FALSE(std::filesystem::exists(d / "out"));
  }  // destroyed without commit: nothing published, temp removed
  EXPECT_FALSE(std::filesystem::exists(d / "out"));
  EXPECT_EQ(entries(d), 0u);
  {
    fs::StagedDir s(d / "out");
    std::ofstream(s.path() / "x") << "2";
    s.commit();
  }
  EXPECT_EQ(slurp(d / "out" / "x"), "2");
  // Refuses to replace unless asked; the good directory stays.
  {
    fs::StagedDir s(d / "out");
    std::ofstream(s.path() / "x") << "3";
    EXPECT_THROW(s.commit(), UserError);
  }
  EXPECT_EQ(slurp(d / "out" / "x"), "2");
  {
    fs::StagedDir s(d / "out", /*replace_existing=*/true);
    std::ofstream(s.path() / "y") << "4";
    s.commit();
  }
  EXPECT_FALSE(std::filesystem::exists(d / "out" / "x"));
  EXPECT_EQ(slurp(d / "out" / "y"), "4");
  EXPECT_EQ(entries(d), 1u);
}

TEST(Fs, PublicPathNamesWhatAStagedFileBecomes) {
  const std::filesystem::path staged = fs::temp_sibling("/runs/a/checkpoints/checkpoint-000004");
  EXPECT_NE(staged.filename().string(), "checkpoint-000004");
  EXPECT_EQ(fs::public_path(staged / "adapter_model.safetensors"),
            std::filesystem::path("/runs/a/checkpoints/checkpoint-000004/adapter_model.safetensors"));
  // Names that only look similar stay as they are.
  for (const char* p :
       {"/x/.hidden", "/x/.a.tmp-", "/x/.a.tmp-1", "/x/.a.tmp-1-", "/x/.a.tmp-1-2x", "/x/a.tmp-1-2", "rel/.tmp-1-2"})
    EXPECT_EQ(fs::public_path(p), std::filesystem::path(p)) << p;
}

TEST(Fs, ErrorsWhileStagingNameTheFinalPathNotTheStagingFolder) {
  auto d = test::temp_dir();
  fs::StagedDir s(d / "out");
  try {
    fs::write_file_atomic(s.path() / "missing_subdir" / "x.json", "{}");
    FAIL() << "expected UserError";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find((d / "out" / "missing_subdir" / "x.json").string() + ": "), std::string::npos) << m;
    EXPECT_EQ(m.find(".tmp-"), std::string::npos) << m;
  }
}
