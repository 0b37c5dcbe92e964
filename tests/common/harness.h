// Helpers shared by the test suites: run a process, run a reference Python script from the
// project's virtualenv, fresh temporary directories, where the built binary is.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace qlora::test {

namespace stdfs = std::filesystem;

struct ProcResult {
  int code = -1;       // exit code (128+signal if killed)
  std::string output;  // stdout and stderr together
};

// Runs `cmd` with /bin/sh, capturing stdout+stderr.
ProcResult run(const std::string& cmd);

// Runs tests/python/<script> with the venv's Python (transformers, peft, bitsandbytes, ...).
// Arguments are shell-quoted. Fails the current test (ADD_FAILURE) if the script exits non-zero
// and `expect_ok` is set.
ProcResult run_python(const std::string& script, const std::vector<std::string>& args = {}, bool expect_ok = true);

// Shell-quotes one argument.
std::string quote(const std::string& s);

// A new empty directory under the build tree's tests/tmp, named after the running test.
stdfs::path temp_dir(const std::string& tag = "");

// The qlora executable, the source tree.
stdfs::path qlora_exe();
stdfs::path source_dir();

// Runs the qlora binary with arguments (already quoted as needed).
ProcResult run_qlora(const std::string& args);

}  // namespace qlora::test
