// Checkpoint manifest (trainer/run/checkpoint.h): the input is the manifest.json of a checkpoint
// directory that holds two small files; it is checked as resume checks it (verify_checkpoint,
// pick_resume_checkpoint with the checkpoint's path) and its step read as resume reads it.
#include <filesystem>
#include <optional>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/layout.h"

// The resume picker (checkpoint.cpp) calls check_checkpoint: the manifest check, then the content
// checks of checkpoint_state.cpp, which need the model, optimizer and data layers this build leaves
// out (their readers are covered by tests/run). Here it is the manifest check alone, the part this
// target fuzzes.
namespace qlora::run {
std::optional<std::string> check_checkpoint(const std::filesystem::path& ckpt) { return verify_checkpoint(ckpt); }
}  // namespace qlora::run

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  // The seed corpus's manifests list these files with their real sizes and checksums.
  static const auto ckpt = [] {
    auto d = fuzz::scratch_dir() / "run" / "checkpoints" / "checkpoint-000002";
    std::filesystem::create_directories(d);
    fuzz::write_bytes(d / "trainer_state.json", "{\"step\": 2}\n");
    fuzz::write_bytes(d / "rng.bin", std::string("\x01\x02\x03\x04", 4));
    return d;
  }();
  fuzz::write_bytes(ckpt / run::kManifestFile, std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::guarded("verify_checkpoint", [&] {
    if (run::verify_checkpoint(ckpt)) return;
    (void)run::checkpoint_step(ckpt);
  });
  fuzz::guarded("pick_resume_checkpoint", [&] {
    (void)run::pick_resume_checkpoint(ckpt.parent_path().parent_path(), ckpt, [](const std::string&) {});
  });
  fuzz::guarded("pick_resume_checkpoint (run directory)", [&] {
    (void)run::pick_resume_checkpoint(ckpt.parent_path().parent_path(), {}, [](const std::string&) {});
  });
  return 0;
}
