// Shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp).
//
// A target hands its input to the function the program uses. qlora::UserError is the expected
// answer to bad input; any other exception is a finding: guarded() prints it and aborts, which
// libFuzzer reports as a crash and keeps the input. Crashes, hangs and sanitizer reports are
// findings too.
#pragma once
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "trainer/common/error.h"

namespace qlora::fuzz {

template <class F>
void guarded(const char* what, F&& fn) {
  try {
    fn();
  } catch (const qlora::UserError&) {
    // bad input, refused the way the program refuses it
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: %s: not a UserError: %s\n", what, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "fuzz: %s: unknown exception\n", what);
    std::abort();
  }
}

// A private directory for the files a target writes (the readers under test take paths), under
// $QLORA_FUZZ_TMP (scripts/fuzz.sh points it at a folder of its own and removes it afterwards:
// a run that crashes or is killed leaves its files), else /dev/shm, else the temp directory;
// removed at a normal exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* env = std::getenv("QLORA_FUZZ_TMP");
    std::string base = env && *env                                 ? std::string(env)
                       : std::filesystem::is_directory("/dev/shm") ? "/dev/shm"
                                                                   : std::filesystem::temp_directory_path().string();
    std::string tmpl = base + "/qlora-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("fuzz: mkdtemp");
      std::abort();
    }
    std::filesystem::path p(tmpl);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return p;
  }();
  return dir;
}

inline void write_bytes(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::abort();
  }
}

// Splits the input at the first occurrence of `sep` (targets that take two texts); without it,
// the second part is empty.
inline std::pair<std::string_view, std::string_view> split_input(std::string_view in, std::string_view sep) {
  size_t at = in.find(sep);
  if (at == std::string_view::npos) return {in, {}};
  return {in.substr(0, at), in.substr(at + sep.size())};
}

}  // namespace qlora::fuzz
