#include "trainer/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#ifdef QLORA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/data/formats.h"
#include "trainer/data/loader.h"
#include "trainer/model/device.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/grad.h"
#include "trainer/optim/schedule.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/checkpoint_state.h"
#include "trainer/run/layout.h"
#include "trainer/run/metrics.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/train/eval_loss.h"
#include "trainer/train/from_config.h"
#include "trainer/train/progress.h"
#include "trainer/train/signals.h"
#include "trainer/train/step.h"

namespace qlora::train {

namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t memory_in_use_peak(const at::Device& dev) {
#ifdef QLORA_WITH_CUDA
  if (dev.is_cuda()) {
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index());
    return static_cast<uint64_t>(st.allocated_bytes[0].peak);
  }
#endif
  return fs::peak_rss_bytes();
}

void warn(const std::string& s) { std::fprintf(stderr, "qlora: warning: %s\n", s.c_str()); }

// Loss and perplexity over a validation set, and exact-match accuracy of generated answers.
run::EvalMetrics evaluate(model::Model& m, const std::shared_ptr<const data::PackedData>& val, int64_t micro_batch,
                          const config::TrainConfig& cfg, const tok::Tokenizer& tk, int64_t step) {
  at::NoGradGuard no_grad;
  const bool was = m.training;
  m.training = false;
  run::EvalMetrics e;
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

std::string describe_eval(const run::EvalMetrics& e) {
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

// ---- setup -------------------------------------------------------------------------------------

// Everything the run holds from setup to finish. Built in place and passed by reference: the
// optimizer and the metrics file do not move.
struct Session {
  Session(const config::TrainConfig& c, const TrainOptions& o, at::Device d)
      : cfg(c), opt(o), device(d), run_dir(c.output_dir) {}

  const config::TrainConfig& cfg;
  const TrainOptions& opt;
  at::Device device;
  stdfs::path run_dir;
  std::unique_ptr<tok::Tokenizer> tk;
  data::Datasets ds;
  model::Model m;
  std::vector<model::NamedParameter> params;
  std::vector<at::Tensor> param_tensors;  // params[i].param: where backward puts the grads
  std::vector<at::Tensor> compute;        // params[i].param.detach(): what AdamW updates
  std::unique_ptr<optim::AdamW> adamw;
  std::unique_ptr<data::DataLoader> loader;
  int64_t steps_per_epoch = 0, total_steps = 0;
  optim::LRSchedule sched;
  int64_t shards = 1;  // row shards per micro-batch (step.h)

  run::TrainerState ts;
  run::MetricsHistory hist;  // step and eval losses so far, for the loss plot
  std::unique_ptr<run::MetricsLog> metrics;
  std::unique_ptr<Progress> progress;
  int64_t last_saved = -1;   // step of the newest checkpoint this process wrote or resumed
  Clock::time_point t_loop;  // the loop's start; elapsed_s adds the time before a resume
  double elapsed_before = 0;

  bool has_val() const { return ds.val && ds.val->num_rows() > 0; }
  stdfs::path ckpt_dir() const { return run::checkpoints_dir(run_dir); }
};

// A resumed run's config against the checkpoint's: harmless changes are printed; others refuse
// the resume unless --allow-config-change (then a warning).
void check_resume_config(const config::TrainConfig& cfg, const TrainOptions& opt, const stdfs::path& ckpt) {
  const config::TrainConfig saved = run::read_checkpoint_config(ckpt);
  std::string blocking, harmless;
  for (const auto& c : config::diff_configs(saved, cfg)) {
    std::string d = c.key + " (" + c.before + " -> " + c.after + ")";
    if (c.kind == config::ChangeKind::Harmless) {
      harmless += (harmless.empty() ? "" : ", ") + d;
    } else {
      blocking += (blocking.empty() ? "" : ", ") + d +
                  (c.kind == config::ChangeKind::Schedule ? " [changes the LR schedule]" : "");
    }
  }
  if (!blocking.empty() && !opt.allow_config_change)
    user_error(cfg.config_path, ": config differs from the checkpoint's (", ckpt.string(), "): ", blocking,
               "; resume with the same config, or pass --allow-config-change");
  if (!blocking.empty()) warn("resuming with changed config: " + blocking);
  if (!harmless.empty()) std::printf("config changes since the checkpoint (harmless): %s\n", harmless.c_str());
}

// Picks the checkpoint to resume from (checking its config), or refuses a fresh run into a run
// directory with checkpoints; then creates the run directory and writes its config.yaml.
// Returns the checkpoint, empty for a fresh run.
stdfs::path prepare_run_dir(const config::TrainConfig& cfg, const TrainOptions& opt) {
  const stdfs::path run_dir = cfg.output_dir;
  stdfs::path resume_from;
  if (opt.resume) {
    resume_from = run::pick_resume_checkpoint(run_dir, opt.resume_path, warn);
    check_resume_config(cfg, opt, resume_from);
  } else if (!run::list_checkpoints(run::checkpoints_dir(run_dir)).empty()) {
    user_error(cfg.config_path, ": output_dir ", run_dir.string(),
               " already holds checkpoints of a run; pass --resume to continue it, or choose another output_dir");
  }
  std::error_code ec;
  stdfs::create_directories(run_dir, ec);
  if (ec) user_error(cfg.config_path, ": output_dir: cannot create ", run_dir.string(), ": ", ec.message());
  fs::write_file_atomic(run::config_file(run_dir), config::to_yaml(cfg));
  return resume_from;
}

// Base model with LoRA, its trainable parameters, and the optimizer over them.
void setup_model(Session& s) {
  const config::TrainConfig& cfg = s.cfg;
  const auto t_load = Clock::now();
  s.m = model::load_model(cfg.base_model, model::ModelLoadOptions::from_train_config(cfg, s.device));
  s.m.gradient_checkpointing = cfg.gradient_checkpointing;
  s.params = s.m.lora_parameters();
  int64_t trainable = 0;
  for (const auto& p : s.params) trainable += p.param.numel();
  std::printf(
      "model: %s, %lld layers, %s on %s in %s (%s frozen base, %s), %lld trainable LoRA parameters; loaded in %.1fs\n",
      s.m.config.model_type.c_str(), static_cast<long long>(s.m.layers.size()), cfg.base_model.c_str(),
      s.device.str().c_str(), c10::toString(s.m.compute_dtype),
      fs::format_bytes(static_cast<uint64_t>(s.m.base_nbytes())).c_str(),
      cfg.lora.adapter == "qlora" ? "NF4" : "16-bit", static_cast<long long>(trainable), seconds_since(t_load));

  std::vector<optim::NamedParam> np;
  for (const auto& p : s.params) {
    np.push_back({p.name, p.param.detach()});
    s.param_tensors.push_back(p.param);
    s.compute.push_back(p.param.detach());
  }
  s.adamw = std::make_unique<optim::AdamW>(np, adamw_options(cfg.optim), s.device);
  std::printf("optimizer: %s\n", s.adamw->describe().c_str());
}

// Tokenizer, datasets, model and optimizer, data loader and schedule.
void setup(Session& s) {
  const config::TrainConfig& cfg = s.cfg;
  const std::string tok_path = cfg.tokenizer.empty() ? cfg.base_model : cfg.tokenizer;
  s.tk = tok::load_tokenizer(tok_path);
  s.ds = data::build_datasets(cfg.data, *s.tk, [](const std::string& l) { std::printf("%s\n", l.c_str()); });
  setup_model(s);
  s.loader = std::make_unique<data::DataLoader>(s.ds.train, cfg.micro_batch_size, cfg.seed, /*shuffle=*/true,
                                                cfg.data.pad_to_sequence_len);
  const int64_t accum = cfg.gradient_accumulation_steps;
  s.steps_per_epoch = std::max<int64_t>(1, (s.loader->batches_per_epoch() + accum - 1) / accum);
  s.total_steps = cfg.max_steps ? *cfg.max_steps : *cfg.num_epochs * s.steps_per_epoch;
  s.sched = lr_schedule(cfg.optim, s.total_steps);
}

// ---- resume ------------------------------------------------------------------------------------

// Restores the checkpoint's state and keeps metrics.jsonl up to its step.
void resume(Session& s, const stdfs::path& ckpt) {
  s.ts = run::restore_checkpoint(ckpt, s.m, *s.adamw, s.param_tensors, *s.loader);
  s.hist = run::truncate_metrics(run::metrics_file(s.run_dir), s.ts.global_step);
  s.last_saved = s.ts.global_step;
  std::printf("resumed from %s at step %lld/%lld\n", ckpt.string().c_str(), static_cast<long long>(s.ts.global_step),
              static_cast<long long>(s.total_steps));
}

// ---- loop --------------------------------------------------------------------------------------

void run_eval(Session& s, int64_t step) {
  if (!s.has_val()) return;
  run::EvalMetrics e = evaluate(s.m, s.ds.val, s.cfg.micro_batch_size, s.cfg, *s.tk, step);
  s.metrics->log_eval(e);
  s.hist.evals.push_back(e);
  s.progress->message(describe_eval(e));
}

// Opens metrics.jsonl (appending on resume), prints the plan, runs the eval on start.
void start_loop(Session& s, const stdfs::path& resumed_from) {
  const config::TrainConfig& cfg = s.cfg;
  const bool resumed = !resumed_from.empty();
  s.metrics = std::make_unique<run::MetricsLog>(run::metrics_file(s.run_dir), /*append=*/resumed);
  if (resumed)
    s.metrics->log_event("resume",
                         nlohmann::json({{"step", s.ts.global_step}, {"from", resumed_from.string()}}).dump());
  std::printf(
      "training: %lld steps (%lld per epoch), micro_batch_size %lld x gradient_accumulation_steps %lld, "
      "lr %.3g %s, warmup %lld\n",
      static_cast<long long>(s.total_steps), static_cast<long long>(s.steps_per_epoch),
      static_cast<long long>(cfg.micro_batch_size), static_cast<long long>(cfg.gradient_accumulation_steps),
      s.sched.learning_rate, cfg.optim.lr_scheduler.c_str(), static_cast<long long>(s.sched.warmup_steps));
  std::fflush(stdout);

  s.progress = std::make_unique<Progress>(s.total_steps, cfg.logging_steps, s.opt.force_plain_progress);
  if (cfg.eval_on_start && !resumed) run_eval(s, 0);
  s.m.training = true;
  s.t_loop = Clock::now();
  s.elapsed_before = s.ts.elapsed_s;
  // CPU: each micro-batch runs as one row shard per thread (step.h); GPU: one shard.
  s.shards = s.device.is_cpu() ? std::max(1, at::get_num_threads()) : 1;
  if (s.shards > 1)
    s.progress->message("cpu: " + std::to_string(s.shards) + " threads; each micro-batch runs as " +
                        std::to_string(std::min<int64_t>(s.shards, cfg.micro_batch_size)) + " row shards side by side");
}

// One optimizer step's gradients and numbers, before the update.
struct StepResult {
  double loss = NAN;       // mean token loss over the accumulated batch
  double grad_norm = NAN;  // before clipping
  double lr = 0;
  int64_t targets = 0, tokens = 0;  // target and input tokens of the accumulated batch
  std::vector<at::Tensor> grads;    // clipped; undefined for a parameter without a gradient
};

// Forward and backward over gradient_accumulation_steps micro-batches, then clipping.
StepResult compute_step(Session& s) {
  StepResult r;
  // Gather the accumulated batch first: the loss is normalized by its total target tokens.
  std::vector<data::Batch> micro;
  for (int64_t a = 0; a < s.cfg.gradient_accumulation_steps; ++a) {
    micro.push_back(s.loader->next());
    r.targets += micro.back().num_target_tokens;
    r.tokens += micro.back().num_tokens;
  }
  double loss_sum = 0;
  for (auto& p : s.params) p.param.mutable_grad() = at::Tensor();
  if (r.targets > 0) {
    for (auto& b : micro)
      loss_sum += forward_backward(s.m, b, static_cast<double>(r.targets), s.shards, s.param_tensors);
  }
  r.loss = r.targets > 0 ? loss_sum / r.targets : NAN;
  for (auto& p : s.params) r.grads.push_back(p.param.grad().defined() ? p.param.grad().contiguous() : at::Tensor());
  const auto& nonfinite = s.opt.faults.nonfinite_steps;
  if (std::find(nonfinite.begin(), nonfinite.end(), s.ts.global_step + 1) != nonfinite.end())
    for (auto& g : r.grads)
      if (g.defined()) g.fill_(NAN);
  r.grad_norm = optim::clip_grad_norm_(r.grads, s.cfg.optim.max_grad_norm);
  r.lr = s.sched.lr_at(s.ts.global_step);
  return r;
}

// Counts the step and applies the update, or skips a non-finite one. False when the run has
// diverged (max_nonfinite_steps in a row; the error is printed).
bool apply_step(Session& s, const StepResult& r) {
  run::TrainerState& ts = s.ts;
  ts.global_step += 1;
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    // Skip: no update, the state stays finite (and so does every checkpoint).
    ts.skipped_steps += 1;
    ts.consecutive_nonfinite += 1;
    s.progress->message("step " + std::to_string(ts.global_step) + ": non-finite loss or gradient; step skipped (" +
                        std::to_string(ts.consecutive_nonfinite) + " in a row)");
    if (ts.consecutive_nonfinite >= s.cfg.max_nonfinite_steps) {
      s.progress->finish();
      std::fprintf(stderr,
                   "qlora: error: training diverged: %lld non-finite steps in a row (max_nonfinite_steps); "
                   "the last checkpoint holds the last finite state\n",
                   static_cast<long long>(ts.consecutive_nonfinite));
      return false;
    }
  } else {
    ts.consecutive_nonfinite = 0;
    at::NoGradGuard ng;
    s.adamw->step(r.lr, r.grads, s.compute);
  }
  for (auto& p : s.params) p.param.mutable_grad() = at::Tensor();
  return true;
}

// The step's line in metrics.jsonl and on the progress bar.
void log_step(Session& s, const StepResult& r, Clock::time_point t_step) {
  const data::DataLoader& loader = *s.loader;
  run::StepMetrics sm;
  sm.step = s.ts.global_step;
  sm.total_steps = s.total_steps;
  sm.epoch = static_cast<double>(loader.epoch()) +
             static_cast<double>(loader.state().position) / std::max<int64_t>(1, s.ds.train->num_rows());
  sm.loss = r.loss;
  sm.lr = r.lr;
  sm.grad_norm = r.grad_norm;
  sm.tokens = r.targets;
  sm.tokens_per_s = r.tokens / std::max(1e-9, seconds_since(t_step));
  s.ts.elapsed_s = s.elapsed_before + seconds_since(s.t_loop);
  sm.elapsed_s = s.ts.elapsed_s;
  sm.memory_bytes = memory_in_use_peak(s.device);
  sm.skipped_steps = s.ts.skipped_steps;
  s.metrics->log_step(sm);
  s.hist.steps.push_back(sm);
  s.progress->update(sm);
}

void save(Session& s) {
  run::save_checkpoint(s.ckpt_dir(), s.cfg, s.m, *s.adamw, *s.loader, s.ts);
  s.last_saved = s.ts.global_step;
}

// The cadence after each step: eval every eval_steps (the last step's eval is finish's), a
// checkpoint every save_steps and on a stop request. True when the run stops here.
bool after_step(Session& s) {
  const int64_t step = s.ts.global_step;
  if (s.cfg.eval_steps > 0 && step % s.cfg.eval_steps == 0 && step < s.total_steps) run_eval(s, step);
  const bool stop = stop_requested() || step == s.opt.faults.stop_after_step;
  if ((s.cfg.save_steps > 0 && step % s.cfg.save_steps == 0) || stop) save(s);
  return stop;
}

enum class LoopEnd { Done, Stopped, Diverged };

LoopEnd train_loop(Session& s) {
  while (s.ts.global_step < s.total_steps) {
    const auto t_step = Clock::now();
    const StepResult r = compute_step(s);
    if (!apply_step(s, r)) return LoopEnd::Diverged;
    log_step(s, r, t_step);
    if (after_step(s)) return LoopEnd::Stopped;
  }
  return LoopEnd::Done;
}

// ---- finish ------------------------------------------------------------------------------------

void finish(Session& s, Clock::time_point t_start) {
  const int64_t step = s.ts.global_step;
  run_eval(s, step);
  if (s.last_saved != step) save(s);
  const stdfs::path plot = run::loss_plot_file(s.run_dir);
  fs::write_file_atomic(
      plot, loss_curve_svg(s.hist.steps, s.hist.evals, "qlora: " + stdfs::path(s.cfg.config_path).filename().string()));
  const optim::PagingStats ps = s.adamw->stats();
  std::printf("done: %lld steps in %s (%lld skipped); optimizer paging: %s\n", static_cast<long long>(step),
              format_duration(seconds_since(t_start)).c_str(), static_cast<long long>(s.ts.skipped_steps),
              ps.to_string().c_str());
  std::printf("run directory: %s\n  config:     %s\n  metrics:    %s\n  loss plot:  %s\n  checkpoint: %s\n",
              s.run_dir.string().c_str(), run::config_file(s.run_dir).string().c_str(),
              run::metrics_file(s.run_dir).string().c_str(), plot.string().c_str(),
              (s.ckpt_dir() / run::checkpoint_name(step)).string().c_str());
}

}  // namespace

int run_training(const config::TrainConfig& cfg, const TrainOptions& opt) {
  const auto t_start = Clock::now();
  Session s(cfg, opt, model::resolve_device(cfg.device, cfg.config_path + ": device"));
  at::manual_seed(cfg.seed);
  install_stop_handlers();

  const stdfs::path resume_from = prepare_run_dir(cfg, opt);
  setup(s);
  if (opt.resume) resume(s, resume_from);
  start_loop(s, resume_from);

  const LoopEnd end = train_loop(s);
  if (end == LoopEnd::Diverged) return 1;
  s.progress->finish();
  if (end == LoopEnd::Stopped) {
    std::printf("stopped at step %lld/%lld; checkpoint %s\nresume with: qlora train %s --resume\n",
                static_cast<long long>(s.ts.global_step), static_cast<long long>(s.total_steps),
                (s.ckpt_dir() / run::checkpoint_name(s.ts.global_step)).string().c_str(), cfg.config_path.c_str());
    return 0;
  }
  finish(s, t_start);
  return 0;
}

}  // namespace qlora::train
