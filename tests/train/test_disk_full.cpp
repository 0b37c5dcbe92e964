// A full disk while qlora writes: a checkpoint save and the exports (peft, merged) that run out of
// space end with one error line naming what failed to write (never a staging folder), exit 1 or
// 2, and leave what was there before exactly as it was (the previous checkpoint stays resumable).
//
// The outputs live on a small tmpfs the test mounts when it may (root, or CAP_SYS_ADMIN), filled
// up to a few bytes before each failing command; where mounting is not permitted the command
// runs under RLIMIT_FSIZE (SIGXFSZ ignored, so an oversize write fails with EFBIG instead).
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

stdfs::path* g_fix = nullptr;   // train_fixture.py output (on the ordinary disk)
stdfs::path* g_disk = nullptr;  // where outputs go: the tmpfs mount point, or a plain directory
bool g_tmpfs = false;

// Every file under `dir` (relative name -> bytes); directories as "name/".
std::map<std::string, std::string> snapshot(const stdfs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : stdfs::recursive_directory_iterator(dir)) {
    const std::string rel = stdfs::relative(e.path(), dir).string();
    m[e.is_directory() ? rel + "/" : rel] = e.is_regular_file() ? fs::read_file(e.path()) : "";
  }
  return m;
}

uint64_t largest_file(const stdfs::path& dir) {
  uint64_t n = 0;
  for (const auto& e : stdfs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n = std::max<uint64_t>(n, e.file_size());
  return n;
}

// Names under `dir` that look like staging leftovers (".<name>.tmp-<pid>-<n>").
std::vector<std::string> leftovers(const stdfs::path& dir) {
  std::vector<std::string> v;
  for (const auto& e : stdfs::recursive_directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) v.push_back(e.path().string());
  return v;
}

class DiskFull : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_fix = new stdfs::path(test::temp_dir("fixture"));
    test::ProcResult r = test::run_python("train_fixture.py", {g_fix->string()});
    ASSERT_EQ(r.code, 0) << r.output;
    g_disk = new stdfs::path(test::temp_dir("disk"));
    g_tmpfs = ::mount("qlora-test", g_disk->c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=64m") == 0;
    if (!g_tmpfs)
      std::fprintf(stderr, "note: cannot mount a tmpfs (%s); using RLIMIT_FSIZE instead\n", std::strerror(errno));
  }
  static void TearDownTestSuite() {
    if (g_tmpfs) ::umount2(g_disk->c_str(), MNT_DETACH);
    delete g_fix;
    delete g_disk;
  }
  void TearDown() override { unlimit(); }

  // The next command finds only `free_bytes` free (tmpfs: a filler file takes the rest; else the
  // command may not write a file larger than `free_bytes`).
  void limit(uint64_t free_bytes) {
    if (!g_tmpfs) {
      fsize_ = free_bytes;
      return;
    }
    struct statvfs st {};
    ASSERT_EQ(::statvfs(g_disk->c_str(), &st), 0);
    const uint64_t avail = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
    ASSERT_GT(avail, free_bytes);
    std::ofstream f(*g_disk / "filler", std::ios::binary);
    const std::string block(1 << 16, '\0');
    uint64_t left = avail - free_bytes;
    while (left > 0 && f) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, block.size()));
      f.write(block.data(), static_cast<std::streamsize>(n));
      left -= n;
    }
    f.close();
    ASSERT_EQ(::statvfs(g_disk->c_str(), &st), 0);
    ASSERT_LE(static_cast<uint64_t>(st.f_bavail) * st.f_frsize, free_bytes + 2 * 4096);
  }
  void unlimit() {
    fsize_ = 0;
    std::error_code ec;
    stdfs::remove(*g_disk / "filler", ec);
  }

  // Runs qlora; the result's output is its stderr only (progress on stdout is dropped).
  test::ProcResult qlora(const std::string& args) const {
    std::string cmd = test::quote(test::qlora_exe().string()) + " " + args;
    if (fsize_ > 0) cmd = "trap '' XFSZ; prlimit --fsize=" + std::to_string(fsize_) + " " + cmd;
    return test::run("{ " + cmd + " >/dev/null; }");
  }

  stdfs::path write_config(const stdfs::path& dir) const {
    const stdfs::path f = *g_fix;
    std::ofstream o(dir / "cfg.yaml");
    o << "base_model: " << (f / "model").string() << "\n"
      << "adapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.1\nlora_target_linear: true\n"
      << "sequence_len: 256\nmicro_batch_size: 2\ngradient_accumulation_steps: 1\nmax_steps: 6\n"
      << "learning_rate: 0.002\nsave_steps: 2\nsave_total_limit: 0\n"
      << "datasets:\n  - path: " << (f / "train.jsonl").string() << "\n    type: alpaca\n"
      << "output_dir: " << (dir / "run").string() << "\n";
    return dir / "cfg.yaml";
  }

  uint64_t fsize_ = 0;
};

// The one error line of a failed command: exactly one line mentions "error", it is qlora's, it
// names `what` and no staging folder.
void expect_one_error_line(const test::ProcResult& r, const std::string& what) {
  EXPECT_TRUE(r.code == 1 || r.code == 2) << "exit " << r.code << "\n" << r.output;
  std::istringstream in(r.output);
  std::string line, err;
  int n = 0;
  while (std::getline(in, line))
    if (line.find("error") != std::string::npos) {
      ++n;
      err = line;
    }
  ASSERT_EQ(n, 1) << r.output;
  EXPECT_TRUE(err.rfind("qlora: error: ", 0) == 0 || err.rfind("qlora: internal error: ", 0) == 0) << err;
  EXPECT_NE(err.find(what), std::string::npos) << "expected " << what << " in: " << err;
  EXPECT_EQ(err.find(".tmp-"), std::string::npos) << err;
  EXPECT_TRUE(err.find("No space left") != std::string::npos || err.find("too large") != std::string::npos) << err;
}

}  // namespace

TEST_F(DiskFull, CheckpointWriteFailsCleanlyAndThePreviousOneResumes) {
  const stdfs::path d = *g_disk / "train";
  stdfs::create_directories(d);
  const stdfs::path cfg = write_config(d);
  test::ProcResult r = qlora("train " + test::quote(cfg.string()) + " --test-stop-after-step 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const stdfs::path ckpts = d / "run/checkpoints";
  ASSERT_TRUE(stdfs::exists(ckpts / "checkpoint-000002/manifest.json"));
  const auto before = snapshot(ckpts);

  // Room for the run's small files, not for the next checkpoint's largest one.
  limit(largest_file(ckpts / "checkpoint-000002") / 2);
  r = qlora("train " + test::quote(cfg.string()) + " --resume");
  expect_one_error_line(r, (ckpts / "checkpoint-000004").string() + "/");
  EXPECT_EQ(snapshot(ckpts), before) << "the checkpoints directory changed";
  EXPECT_TRUE(leftovers(d).empty()) << leftovers(d)[0];
  unlimit();

  // With space again the run resumes from the previous checkpoint and finishes.
  r = qlora("train " + test::quote(cfg.string()) + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(stdfs::exists(ckpts / "checkpoint-000006/manifest.json"));
}

TEST_F(DiskFull, ExportsFailCleanlyAndLeaveThePreviousExport) {
  const stdfs::path d = *g_disk / "export";
  stdfs::create_directories(d);
  const stdfs::path cfg = write_config(d);
  ASSERT_EQ(qlora("train " + test::quote(cfg.string())).code, 0);
  const stdfs::path old_ckpt = d / "run/checkpoints/checkpoint-000002";
  const stdfs::path new_ckpt = d / "run/checkpoints/checkpoint-000006";
  for (const std::string format : {"peft", "merged"}) {
    SCOPED_TRACE(format);
    const stdfs::path out = d / ("out_" + format);
    test::ProcResult r = qlora("export " + test::quote(old_ckpt.string()) + " --format " + format + " --out " +
                               test::quote(out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto before = snapshot(out);

    limit(largest_file(out) / 2);
    r = qlora("export " + test::quote(new_ckpt.string()) + " --format " + format + " --force --out " +
              test::quote(out.string()));
    expect_one_error_line(r, out.string() + "/");
    EXPECT_EQ(snapshot(out), before) << "the previous export changed";
    EXPECT_TRUE(leftovers(d).empty()) << leftovers(d)[0];
    unlimit();

    // The same export with space succeeds (the failure was the disk, nothing else).
    r = qlora("export " + test::quote(new_ckpt.string()) + " --format " + format + " --force --out " +
              test::quote(out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(snapshot(out), before);
  }
}
