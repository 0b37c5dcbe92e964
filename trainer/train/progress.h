// Run output: a live progress bar on a terminal (plain lines otherwise), metrics.jsonl, and the
// loss-curve plot (SVG) written at the end.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qlora::train {

struct StepMetrics {
  int64_t step = 0;
  int64_t total_steps = 0;
  double epoch = 0;
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  int64_t tokens = 0;            // target tokens in this optimizer step
  double tokens_per_s = 0;       // input tokens per second over the step
  double elapsed_s = 0;
  uint64_t memory_bytes = 0;     // peak device memory (GPU) or peak RSS (CPU)
  int64_t skipped_steps = 0;     // non-finite steps skipped so far
};

struct EvalMetrics {
  int64_t step = 0;
  double loss = 0;
  double perplexity = 0;
  int64_t tokens = 0;
  std::optional<double> accuracy;  // exact-match accuracy when the run measures one
};

// Appends one JSON object per line and flushes, so a crash loses at most the current line.
class MetricsLog {
 public:
  explicit MetricsLog(const std::filesystem::path& path, bool append);
  ~MetricsLog();
  void log_step(const StepMetrics& m);
  void log_eval(const EvalMetrics& m);
  void log_event(const std::string& event, const std::string& json_fields);  // {"event":..., <fields>}

 private:
  std::FILE* f_ = nullptr;
};

// Progress on stdout. On a terminal: one line redrawn in place (step/total, loss, lr, tokens/s,
// ETA, memory). Otherwise: a plain line every `every` steps.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t every, bool force_plain = false);
  void update(const StepMetrics& m);
  // Prints a message on its own line without breaking the bar.
  void message(const std::string& line);
  void finish();
  bool is_tty() const { return tty_; }

 private:
  int64_t total_, every_;
  bool tty_;
  bool bar_shown_ = false;
};

// Loss-curve SVG: training loss per step (line) and eval loss (points).
std::string loss_curve_svg(const std::vector<StepMetrics>& steps, const std::vector<EvalMetrics>& evals,
                           const std::string& title);

// "01:23" or "1:02:03".
std::string format_duration(double seconds);

}  // namespace qlora::train
