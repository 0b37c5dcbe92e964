#include "trainer/optim/schedule.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace qlora::optim {

ScheduleKind schedule_kind(const std::string& name) {
  if (name == "cosine") return ScheduleKind::Cosine;
  if (name == "linear") return ScheduleKind::Linear;
  if (name == "constant") return ScheduleKind::Constant;
  TORCH_CHECK(false, "unknown lr_scheduler \"", name, "\"");
}

double LRSchedule::lr_at(int64_t step) const {
  // Same double arithmetic, in the same order, as the transformers lambdas.
  double factor;
  if (step < warmup_steps) {
    factor = static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  } else {
    const double rest = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
    switch (kind) {
      case ScheduleKind::Constant: factor = 1.0; break;
      case ScheduleKind::Linear: factor = std::max(0.0, static_cast<double>(total_steps - step) / rest); break;
      case ScheduleKind::Cosine:
      default: {
        const double progress = static_cast<double>(step - warmup_steps) / rest;
        const double num_cycles = 0.5;
        factor = std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
        break;
      }
    }
  }
  return learning_rate * factor;  // LambdaLR: base_lr * lambda(step)
}

int64_t resolve_warmup_steps(int64_t warmup_steps, std::optional<double> warmup_ratio, int64_t total_steps) {
  if (warmup_ratio) return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * *warmup_ratio));
  return warmup_steps;
}

}  // namespace qlora::optim
