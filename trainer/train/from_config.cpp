#include "trainer/train/from_config.h"

#include <c10/util/Exception.h>

#include "trainer/common/bytes.h"

namespace qlora::train {

optim::AdamWOptions adamw_options(const config::OptimizerConfig& c) {
  optim::AdamWOptions o;
  o.beta1 = c.adam_beta1;
  o.beta2 = c.adam_beta2;
  o.eps = c.adam_epsilon;
  // LoRA+ as PEFT's create_loraplus_optimizer groups it: every group decays by its own
  // loraplus_weight_decay (default 0), whatever the optimizer's weight_decay says.
  o.weight_decay = c.loraplus_lr_ratio ? c.loraplus_weight_decay : c.weight_decay;
  TORCH_CHECK(c.optimizer == "adamw" || c.optimizer == "adamw_8bit", "unknown optimizer ", c.optimizer);
  o.state_8bit = c.optimizer == "adamw_8bit";
  o.paging.enabled = c.paged;
  if (c.device_budget != "auto") {
    const std::optional<uint64_t> budget = parse_byte_size(c.device_budget);
    TORCH_CHECK(budget, "invalid optimizer_device_budget ", c.device_budget);
    o.paging.device_budget = static_cast<int64_t>(*budget);
  }
  return o;
}

double lr_scale(const config::OptimizerConfig& c, const std::string& name, int64_t dim) {
  if (!c.loraplus_lr_ratio) return 1.0;
  return name.find("lora_B") != std::string::npos || dim == 1 ? *c.loraplus_lr_ratio : 1.0;
}

optim::LRSchedule lr_schedule(const config::OptimizerConfig& c, int64_t total_steps) {
  optim::LRSchedule s;
  s.kind = optim::schedule_kind(c.lr_scheduler);
  s.learning_rate = c.learning_rate;
  s.total_steps = total_steps;
  s.warmup_steps = optim::resolve_warmup_steps(c.warmup_steps, c.warmup_ratio, total_steps);
  return s;
}

}  // namespace qlora::train
