// Checkpoint directories: written out of place, checksummed, published with one rename.
//
//   <run>/checkpoints/checkpoint-000120/   one complete checkpoint (its files: run/layout.h,
//                                          written by run/checkpoint_state.h)
//                                          + manifest.json {step, files: {name: {sha256, bytes}}}
//   <run>/checkpoints/latest               text file naming the newest complete checkpoint;
//                                          updated last, atomically
// A checkpoint without a manifest, or whose files do not match it, is incomplete or corrupt:
// resume skips it (with a warning) for the previous good one. Only save_total_limit complete
// checkpoints are kept (0 = all).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "trainer/common/fs.h"

namespace qlora::run {

namespace stdfs = std::filesystem;

// "checkpoint-000120"
std::string checkpoint_name(int64_t step);

// Stages one checkpoint. Write files into path(); commit() checksums them, writes the
// manifest, fsyncs, renames into place, updates `latest`, then prunes old checkpoints.
class CheckpointWriter {
 public:
  CheckpointWriter(const stdfs::path& checkpoints_dir, int64_t step);
  const stdfs::path& path() const { return staged_.path(); }
  const stdfs::path& final_path() const { return staged_.final_path(); }
  // save_total_limit: keep at most this many complete checkpoints (0 = all).
  void commit(int64_t save_total_limit);

 private:
  stdfs::path dir_;
  int64_t step_;
  fs::StagedDir staged_;
};

// Why a checkpoint directory is not usable, or nullopt if it is complete and intact.
std::optional<std::string> verify_checkpoint(const stdfs::path& ckpt);

// Complete-looking checkpoint directories (name checkpoint-N) under `checkpoints_dir`, newest
// first (by step). Temporary directories are not listed.
std::vector<stdfs::path> list_checkpoints(const stdfs::path& checkpoints_dir);

// A check of one checkpoint: nullopt if usable, else one line saying why (naming the checkpoint
// or the file in it).
using CheckpointCheck = std::function<std::optional<std::string>(const stdfs::path&)>;

// The checkpoint to resume from: the newest one that passes `check` (empty: verify_checkpoint,
// the manifest only); each skipped one is reported through `warnings`. nullopt when none is usable.
std::optional<stdfs::path> find_resume_checkpoint(const stdfs::path& checkpoints_dir,
                                                  std::vector<std::string>* warnings,
                                                  const CheckpointCheck& check = {});

// Step recorded in a checkpoint's manifest.
int64_t checkpoint_step(const stdfs::path& ckpt);

// The checkpoint `qlora train --resume [PATH]` continues from. `resume_path` empty: the run
// directory's newest intact checkpoint. Else PATH is a checkpoint (it must be intact), a run
// directory, or a checkpoints directory. Checkpoints are checked in full (check_checkpoint in
// run/checkpoint_state.h: manifest and contents); skipped ones are reported through `warn`;
// UserError naming the file when a named checkpoint is not usable, or when none is.
stdfs::path pick_resume_checkpoint(const stdfs::path& run_dir, const stdfs::path& resume_path,
                                   const std::function<void(const std::string&)>& warn);

}  // namespace qlora::run
