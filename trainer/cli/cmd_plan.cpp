// qlora plan CONFIG [--set key=value ...] [--device D] [--memory BYTES] [--no-time] [--json]:
// the run's peak memory, broken down, and its step time, before anything is loaded or written
// (trainer/train/plan.h). Reads config.json, the tokenizer and the data; times our kernels for a
// second or two on the device.
#include <cstdio>

#include "trainer/cli/commands.h"
#include "trainer/common/bytes.h"
#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/model/device.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/model/model_config.h"
#include "trainer/train/plan.h"
#include "trainer/train/preflight.h"

namespace qlora::cli {

int run_plan(const PlanArgs& a) {
  config::TrainConfig cfg = config::load_config(a.config, a.set);
  if (!a.device.empty()) cfg.device = a.device;
  const at::Device device =
      model::resolve_device(cfg.device, a.device.empty() ? cfg.where("device") + ": device" : "--device");
  std::optional<train::Budget> budget;
  if (!a.memory.empty()) {
    const std::optional<uint64_t> b = parse_byte_size(a.memory);
    if (!b || *b == 0) user_error("--memory: expected a size like 24GB or 16GiB, got \"", a.memory, "\"");
    budget = train::Budget{*b, "--memory"};
  } else {
    budget = train::memory_budget(device);
  }
  const model::ModelConfig mc = model::read_model_config(cfg.base_model);
  train::check_config_against_model(cfg, mc);
  train::DataShape shape = train::full_rows(cfg);
  if (!a.no_data) {
    const std::string tok_path = cfg.tokenizer.empty() ? cfg.base_model : cfg.tokenizer;
    const auto tk = model::load_base_tokenizer(tok_path);
    const data::Datasets ds = train::prepare_run_data(cfg, *tk, tok_path, nullptr);
    shape = train::data_shape(*ds.train, ds.val.get(), cfg.micro_batch_size, cfg.data.pad_to_sequence_len);
  }
  const train::MemoryPlan m = train::plan_memory(cfg, mc, device, shape);
  std::optional<train::TimePlan> t;
  if (!a.no_time) t = train::plan_time(cfg, mc, device, shape);
  std::vector<train::Fix> fixes;
  if (budget && m.peak() > budget->bytes) fixes = train::fixes_for(cfg, mc, device, shape, budget->bytes);
  const train::TimePlan* tp = t ? &*t : nullptr;
  const std::string out = a.json ? train::plan_json(cfg, mc, m, tp, shape, budget, fixes) + "\n"
                                 : train::describe_plan(cfg, mc, m, tp, shape, budget, fixes);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace qlora::cli
