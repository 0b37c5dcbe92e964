#include "trainer/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/autograd.h>
#include <torch/cuda.h>

#ifdef QLORA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/data/formats.h"
#include "trainer/data/loader.h"
#include "trainer/io/peft.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/adapter_source.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/from_config.h"
#include "trainer/optim/grad.h"
#include "trainer/optim/schedule.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/train/checkpoint.h"
#include "trainer/train/eval_loss.h"
#include "trainer/train/progress.h"
#include "trainer/train/signals.h"
#include "trainer/train/step.h"

namespace qlora::train {

namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

uint64_t memory_in_use_peak(const at::Device& dev) {
#ifdef QLORA_WITH_CUDA
  if (dev.is_cuda()) {
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index());
    return static_cast<uint64_t>(st.allocated_bytes[0].peak);
  }
#endif
  return fs::peak_rss_bytes();
}

// QLORA_TEST_NONFINITE_STEPS="3,4": the gradients of those steps are made NaN (fault injection
// for the tests of non-finite handling; unset in normal runs).
bool nonfinite_test_step(int64_t step) {
  static const std::vector<int64_t> steps = [] {
    std::vector<int64_t> v;
    if (const char* e = std::getenv("QLORA_TEST_NONFINITE_STEPS")) {
      std::stringstream ss(e);
      std::string item;
      while (std::getline(ss, item, ',')) v.push_back(std::atoll(item.c_str()));
    }
    return v;
  }();
  return std::find(steps.begin(), steps.end(), step) != steps.end();
}

void warn(const std::string& s) { std::fprintf(stderr, "qlora: warning: %s\n", s.c_str()); }

// Loss and perplexity over a validation set, and exact-match accuracy of generated answers.
EvalMetrics evaluate(model::Model& m, const std::shared_ptr<const data::PackedData>& val, int64_t micro_batch,
                     const config::TrainConfig& cfg, const tok::Tokenizer& tk, int64_t step) {
  at::NoGradGuard no_grad;
  const bool was = m.training;
  m.training = false;
  EvalMetrics e;
  e.step = step;
  const LossTotal lt = eval_loss(m, val, micro_batch);
  e.tokens = lt.count;
  e.loss = lt.mean();
  e.perplexity = std::exp(e.loss);
  if (cfg.eval_exact_match) {
    // Each sample: the prompt is everything before its first trained token; the answer is the
    // trained tokens (EOS included). Greedy generation must reproduce the answer exactly.
    const auto& d = *val;
    const int32_t eos = tk.special().eos_id.value_or(-1);
    int64_t hits = 0, total = 0;
    for (int64_t s = 0; s < d.num_samples(); ++s) {
      const int64_t b0 = d.sample_begin[s];
      const int64_t b1 = s + 1 < d.num_samples() ? d.sample_begin[s + 1] : static_cast<int64_t>(d.input_ids.size());
      int64_t first = b0;
      while (first < b1 && d.labels[first] == data::kIgnoreIndex) ++first;
      if (first == b1 || first == b0) continue;  // nothing to answer, or no prompt
      std::vector<int32_t> prompt(d.input_ids.begin() + b0, d.input_ids.begin() + first);
      std::vector<int32_t> answer;
      for (int64_t t = first; t < b1; ++t)
        if (d.labels[t] != data::kIgnoreIndex) answer.push_back(d.input_ids[t]);
      model::GenerateOptions go;
      go.max_new_tokens = std::min<int64_t>(cfg.eval_max_new_tokens, static_cast<int64_t>(answer.size()) + 1);
      if (eos >= 0) go.stop_ids = {eos};
      std::vector<int32_t> got = model::generate(m, prompt, go);
      hits += got == answer;
      ++total;
    }
    if (total > 0) e.accuracy = static_cast<double>(hits) / total;
  }
  m.training = was;
  return e;
}

std::string describe_eval(const EvalMetrics& e) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "eval @ step %lld: loss %.4f perplexity %.3f (%lld tokens)",
                static_cast<long long>(e.step), e.loss, e.perplexity, static_cast<long long>(e.tokens));
  std::string s = buf;
  if (e.accuracy) {
    std::snprintf(buf, sizeof buf, ", exact match %.1f%%", 100.0 * *e.accuracy);
    s += buf;
  }
  return s;
}

// What a checkpoint holds besides the files the optimizer and adapter write.
struct TrainerState {
  int64_t global_step = 0;
  int64_t skipped_steps = 0;
  int64_t consecutive_nonfinite = 0;
  double elapsed_s = 0;
  nlohmann::json loader;
};

void save_checkpoint(const stdfs::path& ckpt_dir, int64_t step, const config::TrainConfig& cfg,
                     const model::Model& m, const optim::AdamW& opt, const data::DataLoader& loader,
                     const TrainerState& ts) {
  CheckpointWriter w(ckpt_dir, step);
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
  ow.write(w.path() / "optimizer.safetensors");
  fs::write_file_atomic(w.path() / "optimizer.json", os.json);
  // RNG states.
  io::SafetensorsWriter rw;
  rw.add("dropout_generator", m.dropout_generator.get_state());
  rw.add("cpu_generator", at::detail::getDefaultCPUGenerator().get_state());
  rw.write(w.path() / "rng_state.safetensors");
  nlohmann::json j = {{"global_step", ts.global_step},
                      {"skipped_steps", ts.skipped_steps},
                      {"consecutive_nonfinite", ts.consecutive_nonfinite},
                      {"elapsed_s", ts.elapsed_s},
                      {"loader", loader.state().to_json()}};
  fs::write_file_atomic(w.path() / "trainer_state.json", j.dump(2) + "\n");
  fs::write_file_atomic(w.path() / "config.yaml", config::to_yaml(cfg));
  w.commit(cfg.save_total_limit);
}

// Keeps metrics.jsonl lines up to `step` (a resumed run rewrites what came after).
void truncate_metrics(const stdfs::path& path, int64_t step, std::vector<StepMetrics>* steps,
                      std::vector<EvalMetrics>* evals) {
  if (!stdfs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (...) {
      continue;  // a torn last line from a crash
    }
    const int64_t s = j.value("step", int64_t{0});
    if (s > step) continue;
    kept += line + "\n";
    if (j.contains("loss") && j["loss"].is_number()) {
      StepMetrics m;
      m.step = s;
      m.loss = j["loss"].get<double>();
      steps->push_back(m);
    } else if (j.contains("eval_loss") && j["eval_loss"].is_number()) {
      EvalMetrics e;
      e.step = s;
      e.loss = j["eval_loss"].get<double>();
      evals->push_back(e);
    }
  }
  fs::write_file_atomic(path, kept);
}

stdfs::path pick_resume_checkpoint(const config::TrainConfig& cfg, const TrainOptions& opt) {
  stdfs::path where = opt.resume_path.empty() ? stdfs::path(cfg.output_dir) / "checkpoints" : stdfs::path(opt.resume_path);
  if (stdfs::exists(where / "manifest.json")) {
    if (auto why = verify_checkpoint(where)) user_error(where.string(), ": cannot resume: ", *why);
    return where;
  }
  if (stdfs::is_directory(where / "checkpoints")) where /= "checkpoints";
  std::vector<std::string> warnings;
  auto found = find_resume_checkpoint(where, &warnings);
  for (const auto& w : warnings) warn(w);
  if (!found) user_error(where.string(), ": no complete checkpoint to resume from");
  return *found;
}

}  // namespace

int run_training(const config::TrainConfig& cfg, const TrainOptions& opt) {
  const auto t_start = Clock::now();
  const at::Device device = model::resolve_device(cfg.device, cfg.config_path + ": device");
  at::manual_seed(cfg.seed);
  install_stop_handlers();

  const stdfs::path run_dir = cfg.output_dir;
  const stdfs::path ckpt_dir = run_dir / "checkpoints";
  stdfs::path resume_from;
  if (opt.resume) {
    resume_from = pick_resume_checkpoint(cfg, opt);
    const config::TrainConfig saved =
        config::parse_config(fs::read_file(resume_from / "config.yaml"), (resume_from / "config.yaml").string());
    std::string blocking, harmless;
    for (const auto& c : config::diff_configs(saved, cfg)) {
      std::string d = c.key + " (" + c.before + " -> " + c.after + ")";
      if (c.kind == config::ChangeKind::Harmless) {
        harmless += (harmless.empty() ? "" : ", ") + d;
      } else {
        blocking += (blocking.empty() ? "" : ", ") + d + (c.kind == config::ChangeKind::Schedule ? " [changes the LR schedule]" : "");
      }
    }
    if (!blocking.empty() && !opt.allow_config_change)
      user_error(cfg.config_path, ": config differs from the checkpoint's (", resume_from.string(), "): ", blocking,
                 "; resume with the same config, or pass --allow-config-change");
    if (!blocking.empty()) warn("resuming with changed config: " + blocking);
    if (!harmless.empty()) std::printf("config changes since the checkpoint (harmless): %s\n", harmless.c_str());
  } else if (!list_checkpoints(ckpt_dir).empty()) {
    user_error(cfg.config_path, ": output_dir ", run_dir.string(),
               " already holds checkpoints of a run; pass --resume to continue it, or choose another output_dir");
  }
  std::error_code ec;
  stdfs::create_directories(run_dir, ec);
  if (ec) user_error(cfg.config_path, ": output_dir: cannot create ", run_dir.string(), ": ", ec.message());
  fs::write_file_atomic(run_dir / "config.yaml", config::to_yaml(cfg));

  // Tokenizer and data.
  const std::string tok_path = cfg.tokenizer.empty() ? cfg.base_model : cfg.tokenizer;
  std::unique_ptr<tok::Tokenizer> tk = tok::load_tokenizer(tok_path);
  data::Datasets ds = data::build_datasets(cfg.data, *tk, [](const std::string& s) { std::printf("%s\n", s.c_str()); });
  const bool has_val = ds.val && ds.val->num_rows() > 0;

  // Model.
  const auto t_load = Clock::now();
  model::Model m = model::load_model(cfg.base_model, model::ModelLoadOptions::from_train_config(cfg, device));
  m.gradient_checkpointing = cfg.gradient_checkpointing;
  std::vector<model::NamedParameter> params = m.lora_parameters();
  int64_t trainable = 0;
  for (const auto& p : params) trainable += p.param.numel();
  std::printf("model: %s, %lld layers, %s on %s in %s (%s frozen base, %s), %lld trainable LoRA parameters; loaded in %.1fs\n",
              m.config.model_type.c_str(), static_cast<long long>(m.layers.size()), cfg.base_model.c_str(),
              device.str().c_str(), c10::toString(m.compute_dtype),
              fs::format_bytes(static_cast<uint64_t>(m.base_nbytes())).c_str(),
              cfg.lora.adapter == "qlora" ? "NF4" : "16-bit", static_cast<long long>(trainable), seconds_since(t_load));

  // Optimizer.
  const optim::AdamWOptions oo = optim::adamw_options(cfg.optim);
  std::vector<optim::NamedParam> np;
  for (const auto& p : params) np.push_back({p.name, p.param.detach()});
  optim::AdamW adamw(np, oo, device);
  std::printf("optimizer: %s\n", adamw.describe().c_str());

  // Schedule.
  data::DataLoader loader(ds.train, cfg.micro_batch_size, cfg.seed, /*shuffle=*/true, cfg.data.pad_to_sequence_len);
  const int64_t accum = cfg.gradient_accumulation_steps;
  const int64_t steps_per_epoch = std::max<int64_t>(1, (loader.batches_per_epoch() + accum - 1) / accum);
  const int64_t total_steps = cfg.max_steps ? *cfg.max_steps : *cfg.num_epochs * steps_per_epoch;
  const optim::LRSchedule sched = optim::lr_schedule(cfg.optim, total_steps);

  TrainerState ts;
  std::vector<StepMetrics> step_hist;
  std::vector<EvalMetrics> eval_hist;
  if (opt.resume) {
    optim::OptimizerState os;
    io::SafetensorsFile of(resume_from / "optimizer.safetensors");
    for (const auto& t : of.tensors()) os.tensors[t.name] = of.tensor(t.name).clone();
    os.json = fs::read_file(resume_from / "optimizer.json");
    adamw.load_state_dict(os);
    {
      at::NoGradGuard ng;
      for (size_t i = 0; i < params.size(); ++i) adamw.copy_master_to(i, params[i].param);
    }
    io::SafetensorsFile rf(resume_from / "rng_state.safetensors");
    m.dropout_generator.set_state(rf.tensor("dropout_generator").clone());
    {
      at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();
      cpu_gen.set_state(rf.tensor("cpu_generator").clone());
    }
    const auto j = nlohmann::json::parse(fs::read_file(resume_from / "trainer_state.json"));
    ts.global_step = j.at("global_step").get<int64_t>();
    ts.skipped_steps = j.value("skipped_steps", int64_t{0});
    ts.consecutive_nonfinite = j.value("consecutive_nonfinite", int64_t{0});
    ts.elapsed_s = j.value("elapsed_s", 0.0);
    loader.restore(data::LoaderState::from_json(j.at("loader")));
    truncate_metrics(run_dir / "metrics.jsonl", ts.global_step, &step_hist, &eval_hist);
    std::printf("resumed from %s at step %lld/%lld\n", resume_from.string().c_str(),
                static_cast<long long>(ts.global_step), static_cast<long long>(total_steps));
  }
  MetricsLog metrics(run_dir / "metrics.jsonl", /*append=*/opt.resume);
  if (opt.resume) metrics.log_event("resume", nlohmann::json({{"step", ts.global_step}, {"from", resume_from.string()}}).dump());

  std::printf("training: %lld steps (%lld per epoch), micro_batch_size %lld x gradient_accumulation_steps %lld, "
              "lr %.3g %s, warmup %lld\n",
              static_cast<long long>(total_steps), static_cast<long long>(steps_per_epoch),
              static_cast<long long>(cfg.micro_batch_size), static_cast<long long>(accum), sched.learning_rate,
              cfg.optim.lr_scheduler.c_str(), static_cast<long long>(sched.warmup_steps));
  std::fflush(stdout);

  Progress progress(total_steps, cfg.logging_steps, opt.force_plain_progress);
  auto run_eval = [&](int64_t step) {
    if (!has_val) return;
    EvalMetrics e = evaluate(m, ds.val, cfg.micro_batch_size, cfg, *tk, step);
    metrics.log_eval(e);
    eval_hist.push_back(e);
    progress.message(describe_eval(e));
  };
  if (cfg.eval_on_start && !opt.resume) run_eval(0);

  m.training = true;
  int64_t last_saved = opt.resume ? ts.global_step : -1;
  const auto t_loop = Clock::now();
  const double elapsed_before = ts.elapsed_s;
  bool stopped = false;
  std::vector<at::Tensor> compute, param_tensors;
  for (const auto& p : params) {
    compute.push_back(p.param.detach());
    param_tensors.push_back(p.param);
  }
  // CPU: each micro-batch runs as one row shard per thread (step.h); GPU: one shard.
  const int64_t shards = device.is_cpu() ? std::max(1, at::get_num_threads()) : 1;
  if (shards > 1)
    progress.message("cpu: " + std::to_string(shards) + " threads; each micro-batch runs as " +
                     std::to_string(std::min<int64_t>(shards, cfg.micro_batch_size)) + " row shards side by side");

  while (ts.global_step < total_steps) {
    const auto t_step = Clock::now();
    // Gather the accumulated batch first: the loss is normalized by its total target tokens.
    std::vector<data::Batch> micro;
    int64_t targets = 0, tokens = 0;
    for (int64_t a = 0; a < accum; ++a) {
      micro.push_back(loader.next());
      targets += micro.back().num_target_tokens;
      tokens += micro.back().num_tokens;
    }
    double loss_sum = 0;
    for (auto& p : params) p.param.mutable_grad() = at::Tensor();
    if (targets > 0) {
      for (auto& b : micro) loss_sum += forward_backward(m, b, static_cast<double>(targets), shards, param_tensors);
    }
    const double loss = targets > 0 ? loss_sum / targets : NAN;
    std::vector<at::Tensor> grads;
    for (auto& p : params) grads.push_back(p.param.grad().defined() ? p.param.grad().contiguous() : at::Tensor());
    if (nonfinite_test_step(ts.global_step + 1))
      for (auto& g : grads)
        if (g.defined()) g.fill_(NAN);
    const double gnorm = optim::clip_grad_norm_(grads, cfg.optim.max_grad_norm);
    const double lr = sched.lr_at(ts.global_step);
    ts.global_step += 1;
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      // Skip: no update, the state stays finite (and so does every checkpoint).
      ts.skipped_steps += 1;
      ts.consecutive_nonfinite += 1;
      progress.message("step " + std::to_string(ts.global_step) + ": non-finite loss or gradient; step skipped (" +
                       std::to_string(ts.consecutive_nonfinite) + " in a row)");
      if (ts.consecutive_nonfinite >= cfg.max_nonfinite_steps) {
        progress.finish();
        std::fprintf(stderr, "qlora: error: training diverged: %lld non-finite steps in a row (max_nonfinite_steps); "
                     "the last checkpoint holds the last finite state\n", static_cast<long long>(ts.consecutive_nonfinite));
        return 1;
      }
    } else {
      ts.consecutive_nonfinite = 0;
      at::NoGradGuard ng;
      adamw.step(lr, grads, compute);
    }
    for (auto& p : params) p.param.mutable_grad() = at::Tensor();

    StepMetrics sm;
    sm.step = ts.global_step;
    sm.total_steps = total_steps;
    sm.epoch = static_cast<double>(loader.epoch()) +
               static_cast<double>(loader.state().position) / std::max<int64_t>(1, ds.train->num_rows());
    sm.loss = loss;
    sm.lr = lr;
    sm.grad_norm = gnorm;
    sm.tokens = targets;
    sm.tokens_per_s = tokens / std::max(1e-9, seconds_since(t_step));
    ts.elapsed_s = elapsed_before + seconds_since(t_loop);
    sm.elapsed_s = ts.elapsed_s;
    sm.memory_bytes = memory_in_use_peak(device);
    sm.skipped_steps = ts.skipped_steps;
    metrics.log_step(sm);
    step_hist.push_back(sm);
    progress.update(sm);

    if (cfg.eval_steps > 0 && ts.global_step % cfg.eval_steps == 0 && ts.global_step < total_steps) run_eval(ts.global_step);
    // QLORA_STOP_AFTER_STEP=N acts like a stop signal after step N (deterministic, for tests).
    static const int64_t stop_after = [] {
      const char* e = std::getenv("QLORA_STOP_AFTER_STEP");
      return e ? std::atoll(e) : int64_t{-1};
    }();
    const bool stop = stop_requested() || ts.global_step == stop_after;
    if ((cfg.save_steps > 0 && ts.global_step % cfg.save_steps == 0) || stop) {
      save_checkpoint(ckpt_dir, ts.global_step, cfg, m, adamw, loader, ts);
      last_saved = ts.global_step;
    }
    if (stop) {
      stopped = true;
      break;
    }
  }
  progress.finish();
  if (stopped) {
    std::printf("stopped at step %lld/%lld; checkpoint %s\nresume with: qlora train %s --resume\n",
                static_cast<long long>(ts.global_step), static_cast<long long>(total_steps),
                (ckpt_dir / checkpoint_name(ts.global_step)).string().c_str(), cfg.config_path.c_str());
    return 0;
  }
  run_eval(ts.global_step);
  if (last_saved != ts.global_step) save_checkpoint(ckpt_dir, ts.global_step, cfg, m, adamw, loader, ts);
  const stdfs::path plot = run_dir / "loss.svg";
  fs::write_file_atomic(plot, loss_curve_svg(step_hist, eval_hist, "qlora: " + stdfs::path(cfg.config_path).filename().string()));
  const optim::PagingStats ps = adamw.stats();
  std::printf("done: %lld steps in %s (%lld skipped); optimizer paging: %s\n", static_cast<long long>(ts.global_step),
              format_duration(seconds_since(t_start)).c_str(), static_cast<long long>(ts.skipped_steps),
              ps.to_string().c_str());
  std::printf("run directory: %s\n  config:     %s\n  metrics:    %s\n  loss plot:  %s\n  checkpoint: %s\n",
              run_dir.string().c_str(), (run_dir / "config.yaml").string().c_str(),
              (run_dir / "metrics.jsonl").string().c_str(), plot.string().c_str(),
              (ckpt_dir / checkpoint_name(ts.global_step)).string().c_str());
  return 0;
}

}  // namespace qlora::train
