// Run output on the terminal: a live progress bar (plain lines otherwise), and the loss-curve plot
// (SVG) written at the end. metrics.jsonl is run/metrics.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/run/metrics.h"

namespace qlora::train {

// Progress on stdout. On a terminal: one line redrawn in place (step/total, loss, lr, tokens/s,
// ETA, memory). Otherwise: a plain line every `every` steps.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t every, bool force_plain = false);
  void update(const run::StepMetrics& m);
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
std::string loss_curve_svg(const std::vector<run::StepMetrics>& steps, const std::vector<run::EvalMetrics>& evals,
                           const std::string& title);

// "01:23" or "1:02:03".
std::string format_duration(double seconds);

}  // namespace qlora::train
