// Learning-rate schedules with linear warmup, as transformers defines them
// (transformers/optimization.py: get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_constant_schedule_with_warmup, driven by torch's LambdaLR):
//   lr(step) = learning_rate * factor(step), step = optimizer steps already taken (0 for the first)
//   warmup   (step < warmup_steps): factor = step / max(1, warmup_steps)   (the first step has lr 0)
//   cosine:   factor = max(0, 0.5 * (1 + cos(pi * 0.5 * 2 * progress)))
//   linear:   factor = max(0, (total - step) / max(1, total - warmup_steps))
//   constant: factor = 1
// with progress = (step - warmup_steps) / max(1, total - warmup_steps).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace qlora::optim {

enum class ScheduleKind { Cosine, Linear, Constant };

// "cosine" | "linear" | "constant" (TORCH_CHECK on anything else; the config validates names).
ScheduleKind schedule_kind(const std::string& name);

struct LRSchedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  double learning_rate = 2e-4;  // the peak (after warmup)
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;  // optimizer steps in the whole run

  // The learning rate for the optimizer step that follows `step` completed steps.
  double lr_at(int64_t step) const;
};

// Warmup length as transformers computes it: warmup_ratio, when given, is
// ceil(total_steps * warmup_ratio) (TrainingArguments.get_warmup_steps); else warmup_steps.
int64_t resolve_warmup_steps(int64_t warmup_steps, std::optional<double> warmup_ratio, int64_t total_steps);

}  // namespace qlora::optim
