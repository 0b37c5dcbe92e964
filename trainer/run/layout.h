// The run directory (a training config's output_dir) and the files in it; every other part of
// the program builds these paths through here.
//
//   <run>/config.yaml                     the config the run was started (or resumed) with
//   <run>/metrics.jsonl                   one JSON object per step / eval / event (run/metrics.h)
//   <run>/loss.svg                        loss curve, written at the end
//   <run>/runs/events.out.tfevents.*      TensorBoard event files (report_to: tensorboard; run/tensorboard.h),
//                                         the default logging_dir (config/load.cpp resolves it)
//   <run>/checkpoints/checkpoint-000120/  one complete checkpoint (run/checkpoint.h):
//       adapter_config.json               PEFT adapter config
//       adapter_model.safetensors         LoRA weights (fp32 masters, PEFT keys)
//       optimizer.safetensors             optimizer state tensors
//       optimizer.json                    optimizer state scalars (steps, paging layout)
//       rng_state.safetensors             dropout and CPU generator states
//       trainer_state.json                step counters, elapsed time, data loader position
//       config.yaml                       the run's config at that step
//       manifest.json                     {step, files: {name: {sha256, bytes}}}, written last
//   <run>/checkpoints/latest              names the newest complete checkpoint
#pragma once
#include <filesystem>

#include "trainer/io/peft.h"

namespace qlora::run {

namespace stdfs = std::filesystem;

inline constexpr const char* kConfigFile = "config.yaml";  // in the run dir and each checkpoint
inline constexpr const char* kMetricsFile = "metrics.jsonl";
inline constexpr const char* kLossPlotFile = "loss.svg";
inline constexpr const char* kCheckpointsDir = "checkpoints";
inline constexpr const char* kLatestFile = "latest";

// Inside a checkpoint. The two adapter files carry PEFT's names (io/peft.h writes them).
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kAdapterConfigFile = io::kPeftConfigFile;
inline constexpr const char* kAdapterWeightsFile = io::kPeftWeightsFile;
inline constexpr const char* kOptimizerTensorsFile = "optimizer.safetensors";
inline constexpr const char* kOptimizerStateFile = "optimizer.json";
inline constexpr const char* kRngStateFile = "rng_state.safetensors";
inline constexpr const char* kTrainerStateFile = "trainer_state.json";

inline stdfs::path checkpoints_dir(const stdfs::path& run_dir) { return run_dir / kCheckpointsDir; }
inline stdfs::path metrics_file(const stdfs::path& run_dir) { return run_dir / kMetricsFile; }
inline stdfs::path loss_plot_file(const stdfs::path& run_dir) { return run_dir / kLossPlotFile; }
// config.yaml of a run directory or of a checkpoint.
inline stdfs::path config_file(const stdfs::path& dir) { return dir / kConfigFile; }

}  // namespace qlora::run
