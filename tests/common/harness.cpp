#include "tests/common/harness.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace qlora::test {

ProcResult run(const std::string& cmd) {
  ProcResult r;
  std::string full = cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int st = ::pclose(p);
  if (WIFEXITED(st))
    r.code = WEXITSTATUS(st);
  else if (WIFSIGNALED(st))
    r.code = 128 + WTERMSIG(st);
  return r;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'')
      q += "'\\''";
    else
      q += c;
  }
  return q + "'";
}

namespace {
// The paths compiled into the test executables, each overridable from the environment so that a
// test binary built here can run on another machine (scripts/gpu-check.sh carries them to the
// GPU machine): QLORA_TEST_PYTHON, QLORA_SOURCE_DIR, QLORA_TEST_BINARY_DIR, QLORA_EXE.
std::string path_setting(const char* env, const char* built_in) {
  const char* v = std::getenv(env);
  return v && *v ? std::string(v) : std::string(built_in);
}
}  // namespace

ProcResult run_python(const std::string& script, const std::vector<std::string>& args, bool expect_ok) {
  std::string cmd = quote(path_setting("QLORA_TEST_PYTHON", QLORA_TEST_PYTHON)) + " " +
                    quote((source_dir() / "tests/python" / script).string());
  for (const auto& a : args) cmd += " " + quote(a);
  // Reference libraries must never reach for a model hub.
  ProcResult r = run("HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false " + cmd);
  if (expect_ok && r.code != 0) ADD_FAILURE() << "python " << script << " failed (" << r.code << "):\n" << r.output;
  return r;
}

stdfs::path temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "suite";
  if (!tag.empty()) name += "." + tag;
  for (char& c : name)
    if (c == '/') c = '_';
  stdfs::path d = stdfs::path(path_setting("QLORA_TEST_BINARY_DIR", QLORA_TEST_BINARY_DIR)) / "tmp" /
                  (name + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  stdfs::remove_all(d);
  stdfs::create_directories(d);
  return d;
}

stdfs::path qlora_exe() { return path_setting("QLORA_EXE", QLORA_EXE); }
stdfs::path source_dir() { return path_setting("QLORA_SOURCE_DIR", QLORA_SOURCE_DIR); }

ProcResult run_qlora(const std::string& args) { return run(quote(qlora_exe().string()) + " " + args); }

}  // namespace qlora::test
