// metrics.jsonl in the run directory: one JSON object per line for each optimizer step, each
// evaluation and each event (resume), appended and flushed as they happen.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qlora::run {

struct StepMetrics {
  int64_t step = 0;
  int64_t total_steps = 0;
  double epoch = 0;
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0;       // target tokens in this optimizer step
  double tokens_per_s = 0;  // input tokens per second over the step
  double elapsed_s = 0;
  uint64_t memory_bytes = 0;       // peak device memory (GPU) or peak RSS (CPU)
  int64_t skipped_steps = 0;       // non-finite steps skipped so far
  std::optional<double> aux_loss;  // a mixture of experts' router load-balancing loss, when on
};

struct EvalMetrics {
  int64_t step = 0;
  double loss = 0;
  double perplexity = 0;
  int64_t tokens = 0;
  std::optional<double> accuracy;  // exact-match accuracy when the run measures one
};

class TensorBoardWriter;  // run/tensorboard.h

// Appends one JSON object per line and flushes, so a crash loses at most the current line.
// With a TensorBoard writer attached, every number of a step's or an eval's line also goes to
// TensorBoard as a scalar at that step (tensorboard_tag names it), flushed with the line.
class MetricsLog {
 public:
  explicit MetricsLog(const std::filesystem::path& path, bool append);
  ~MetricsLog();
  void attach_tensorboard(std::unique_ptr<TensorBoardWriter> tb);
  void log_step(const StepMetrics& m);
  void log_eval(const EvalMetrics& m);
  void log_event(const std::string& event, const std::string& json_fields);  // {"event":..., <fields>}

 private:
  std::FILE* f_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tb_;
};

// The TensorBoard tag of a metrics.jsonl field, in HF Trainer's style: a step's fields under
// train/ (loss, learning_rate, grad_norm, tokens_per_second, ...), an eval's eval_X as eval/X.
std::string tensorboard_tag(const std::string& key);

// On resume: keeps the lines of `path` up to `step` (the resumed run rewrites what came after;
// a torn last line from a crash is dropped) and returns the kept step and eval losses (step and
// loss filled in) for the loss plot. A missing file is left missing.
struct MetricsHistory {
  std::vector<StepMetrics> steps;
  std::vector<EvalMetrics> evals;
};
MetricsHistory truncate_metrics(const std::filesystem::path& path, int64_t step);

}  // namespace qlora::run
