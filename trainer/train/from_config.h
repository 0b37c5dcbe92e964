// Builders from the plain config structs (trainer/config/config.h) to the optimizer's arguments,
// so the training loop does not translate names itself. It lives in train/ because it reads
// the config (optim/ does not know it).
#pragma once
#include <cstdint>

#include "trainer/config/config.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/schedule.h"

namespace qlora::train {

// optimizer adamw|adamw_8bit (+ paged), betas, eps, weight decay, device budget ("auto" or a
// size, validated by the config).
optim::AdamWOptions adamw_options(const config::OptimizerConfig& c);

// A trainable parameter's learning-rate multiplier: LoRA+ (loraplus_lr_ratio) puts lora_B and
// 1-D parameters at lr * ratio, as PEFT's create_loraplus_optimizer groups them; else 1.
double lr_scale(const config::OptimizerConfig& c, const std::string& name, int64_t dim);

// The schedule for a run of total_steps optimizer steps (warmup_ratio resolved like transformers).
optim::LRSchedule lr_schedule(const config::OptimizerConfig& c, int64_t total_steps);

}  // namespace qlora::train
