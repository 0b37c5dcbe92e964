#include "trainer/run/checkpoint_state.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include "trainer/common/fs.h"
#include "trainer/config/load.h"
#include "trainer/data/loader.h"
#include "trainer/io/peft.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/model.h"
#include "trainer/optim/adamw.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/layout.h"

namespace qlora::run {

stdfs::path save_checkpoint(const stdfs::path& checkpoints_dir, const config::TrainConfig& cfg, const model::Model& m,
                            const optim::AdamW& opt, const data::DataLoader& loader, const TrainerState& ts) {
  CheckpointWriter w(checkpoints_dir, ts.global_step);
  // Adapter: the fp32 masters under PEFT keys, loadable by PEFT as it is.
  std::map<std::string, at::Tensor> adapter;
  for (size_t i = 0; i < opt.size(); ++i) adapter[opt.name(i)] = opt.master(i);
  io::PeftAdapterConfig pc;
  pc.base_model_name_or_path = cfg.base_model;
  pc.r = cfg.lora.r;
  pc.lora_alpha = cfg.lora.alpha;
  pc.lora_dropout = cfg.lora.dropout;
  pc.use_rslora = cfg.lora.use_rslora;
  pc.target_modules = m.lora_target_modules();
  io::write_peft_adapter(w.path(), pc, adapter, at::kFloat);
  // Optimizer state.
  optim::OptimizerState os = opt.state_dict();
  io::SafetensorsWriter ow;
  for (const auto& [k, v] : os.tensors) ow.add(k, v);
  ow.write(w.path() / kOptimizerTensorsFile);
  fs::write_file_atomic(w.path() / kOptimizerStateFile, os.json);
  // RNG states.
  io::SafetensorsWriter rw;
  rw.add("dropout_generator", m.dropout_generator.get_state());
  rw.add("cpu_generator", at::detail::getDefaultCPUGenerator().get_state());
  rw.write(w.path() / kRngStateFile);
  nlohmann::json j = {{"global_step", ts.global_step},
                      {"skipped_steps", ts.skipped_steps},
                      {"consecutive_nonfinite", ts.consecutive_nonfinite},
                      {"elapsed_s", ts.elapsed_s},
                      {"loader", loader.state().to_json()}};
  fs::write_file_atomic(w.path() / kTrainerStateFile, j.dump(2) + "\n");
  fs::write_file_atomic(config_file(w.path()), config::to_yaml(cfg));
  w.commit(cfg.save_total_limit);
  return w.final_path();
}

TrainerState restore_checkpoint(const stdfs::path& ckpt, model::Model& m, optim::AdamW& opt,
                                const std::vector<at::Tensor>& params, data::DataLoader& loader) {
  optim::OptimizerState os;
  io::SafetensorsFile of(ckpt / kOptimizerTensorsFile);
  for (const auto& t : of.tensors()) os.tensors[t.name] = of.tensor(t.name).clone();
  os.json = fs::read_file(ckpt / kOptimizerStateFile);
  opt.load_state_dict(os);
  {
    at::NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) opt.copy_master_to(i, params[i]);
  }
  io::SafetensorsFile rf(ckpt / kRngStateFile);
  m.dropout_generator.set_state(rf.tensor("dropout_generator").clone());
  {
    at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();
    cpu_gen.set_state(rf.tensor("cpu_generator").clone());
  }
  const auto j = nlohmann::json::parse(fs::read_file(ckpt / kTrainerStateFile));
  TrainerState ts;
  ts.global_step = j.at("global_step").get<int64_t>();
  ts.skipped_steps = j.value("skipped_steps", int64_t{0});
  ts.consecutive_nonfinite = j.value("consecutive_nonfinite", int64_t{0});
  ts.elapsed_s = j.value("elapsed_s", 0.0);
  loader.restore(data::LoaderState::from_json(j.at("loader")));
  return ts;
}

config::TrainConfig read_checkpoint_config(const stdfs::path& ckpt) {
  const stdfs::path f = config_file(ckpt);
  return config::parse_config(fs::read_file(f), f.string());
}

}  // namespace qlora::run
