// qlora init MODEL_DIR [--data FILE] [--out FILE] [--force]
// Writes a commented training config for a model (trainer/train/init_config.h), atomically; an
// existing file is replaced only with --force.
#include <cstdio>
#include <filesystem>

#include "trainer/cli/commands.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/train/init_config.h"

namespace qlora::cli {

int run_init(const InitArgs& a) {
  if (a.out.empty()) user_error("--out: expected a file name");
  std::error_code ec;
  if (std::filesystem::is_directory(a.out, ec)) user_error(a.out, ": --out: is a directory, expected a file");
  if (!a.force && std::filesystem::exists(a.out, ec))
    user_error(a.out, ": --out: the file exists; pass --force to replace it");
  const std::string text = train::init_config_text({a.model, a.data});
  fs::write_file_atomic(a.out, text);
  std::printf("wrote %s\n", a.out.c_str());
  std::printf("check the data with: qlora preprocess %s --show 3\n", a.out.c_str());
  std::printf("train with:          qlora train %s\n", a.out.c_str());
  return 0;
}

}  // namespace qlora::cli
