#include "trainer/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#ifdef QLORA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>

#include "kernels/host_cache.h"
#include "kernels/step_profile.h"
#include "trainer/common/bytes.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/common/memory.h"
#include "trainer/common/sha256.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/data/formats.h"
#include "trainer/data/loader.h"
#include "trainer/data/prepared.h"
#include "trainer/dist/dist.h"
#include "trainer/model/device.h"
#include "trainer/model/generate.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/model/model.h"
#include "trainer/model/saved_modules.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/grad.h"
#include "trainer/optim/schedule.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/checkpoint_state.h"
#include "trainer/run/layout.h"
#include "trainer/run/metrics.h"
#include "trainer/run/tensorboard.h"
#include "trainer/tokenizer/chat_template.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/train/eval_loss.h"
#include "trainer/train/from_config.h"
#include "trainer/train/preflight.h"
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

  config::TrainConfig cfg;  // a resume onto another world size may change gradient_accumulation_steps
  const TrainOptions& opt;
  at::Device device;
  stdfs::path run_dir;
  model::ModelConfig mc;      // the base's config.json
  uint64_t planned_peak = 0;  // trainer/train/plan.h's peak for this run
  uint64_t rss_at_start = 0;  // VmRSS when the run started (CPU): the baseline of the peak
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
  // Data-parallel runs: the process group (null for one process), this rank, the world size.
  std::unique_ptr<dist::Group> group;
  int rank = 0;
  int world_size = 1;
  bool stop_agreed = false;  // every rank saw the stop request of this step (after_step)

  run::TrainerState ts;
  run::MetricsHistory hist;  // step and eval losses so far, for the loss plot
  std::unique_ptr<run::MetricsLog> metrics;
  std::unique_ptr<Progress> progress;
  int64_t last_saved = -1;   // step of the newest checkpoint this process wrote or resumed
  stdfs::path resume_from;   // the checkpoint to resume from; empty for a fresh run
  Clock::time_point t_loop;  // the loop's start; elapsed_s adds the time before a resume
  double elapsed_before = 0;

  bool has_val() const { return ds.val && ds.val->num_rows() > 0; }
  bool is_main() const { return rank == 0; }  // the rank that writes files and reports
  stdfs::path ckpt_dir() const { return run::checkpoints_dir(run_dir); }
};

// A resumed run's config against the checkpoint's: harmless changes are printed; others refuse
// the resume unless --allow-config-change (then a warning).
// global_batch_kept: gradient_accumulation_steps changed with the world size (keep_global_batch).
void check_resume_config(const config::TrainConfig& cfg, const TrainOptions& opt, const stdfs::path& ckpt,
                         bool global_batch_kept) {
  const config::TrainConfig saved = run::read_checkpoint_config(ckpt);
  std::string blocking, harmless;
  for (const auto& c : config::diff_configs(saved, cfg)) {
    if (global_batch_kept && c.key == "gradient_accumulation_steps") continue;
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

// The output directory must be one the run can create and write: checked before anything is
// written, so that a run that cannot start leaves it as it was.
void check_output_dir(const config::TrainConfig& cfg) {
  const stdfs::path run_dir = cfg.output_dir;
  std::error_code ec;
  if (stdfs::exists(run_dir, ec) && !stdfs::is_directory(run_dir, ec))
    user_error(cfg.where("output_dir"), ": output_dir: ", run_dir.string(), " exists and is not a directory");
  stdfs::path p = run_dir;  // the nearest existing ancestor must be a writable directory
  while (!p.empty() && !stdfs::exists(p, ec) && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
  if (!stdfs::is_directory(p, ec))
    user_error(cfg.where("output_dir"), ": output_dir: cannot create ", run_dir.string(), ": ", p.string(),
               " is not a directory");
  if (::access(p.c_str(), W_OK | X_OK) != 0)
    user_error(cfg.where("output_dir"), ": output_dir: cannot create or write ", run_dir.string(), ": ", p.string(),
               " is not writable");
  if (cfg.reports_to("tensorboard"))
    run::check_logging_dir(cfg.logging_dir, cfg.where("logging_dir") + ": logging_dir");
}

// A resume with another number of processes keeps the global batch (micro_batch_size x
// gradient_accumulation_steps x world size) when it can: gradient_accumulation_steps is scaled
// and a line says so. When the new world size does not divide the checkpoint's micro-batches
// per step the resume is refused, unless --allow-config-change (then the global batch changes).
// Returns true when the global batch is kept (a change of gradient_accumulation_steps is then
// no change of the run).
bool keep_global_batch(Session& s, const stdfs::path& ckpt) {
  const run::TrainerState saved = run::read_trainer_state(ckpt);
  const config::TrainConfig saved_cfg = run::read_checkpoint_config(ckpt);
  const int64_t per_step = saved_cfg.gradient_accumulation_steps * saved.world_size;
  const int64_t w = s.world_size;
  if (saved.world_size == w) return false;
  if (s.cfg.gradient_accumulation_steps * w == per_step && saved_cfg.micro_batch_size == s.cfg.micro_batch_size) {
    std::printf("world size %lld -> %lld: the global batch stays %lld micro-batches of %lld per step\n",
                static_cast<long long>(saved.world_size), static_cast<long long>(w), static_cast<long long>(per_step),
                static_cast<long long>(saved_cfg.micro_batch_size));
    return true;
  }
  // --allow-config-change with a gradient_accumulation_steps of the user's own: theirs stands.
  if (s.opt.allow_config_change && s.cfg.gradient_accumulation_steps != saved_cfg.gradient_accumulation_steps)
    return false;
  const std::string was = "the checkpoint " + ckpt.filename().string() + " was trained by " +
                          std::to_string(saved.world_size) + " process" + (saved.world_size == 1 ? "" : "es") +
                          " with gradient_accumulation_steps " + std::to_string(saved_cfg.gradient_accumulation_steps) +
                          " (" + std::to_string(per_step) + " micro-batches of " +
                          std::to_string(saved_cfg.micro_batch_size) + " per step)";
  if (per_step % w != 0) {
    if (s.opt.allow_config_change) {
      warn(was + "; " + std::to_string(w) + " processes cannot keep that global batch; continuing with " +
           std::to_string(s.cfg.gradient_accumulation_steps * w) + " micro-batches per step (--allow-config-change)");
      return false;
    }
    user_error(s.cfg.where("gradient_accumulation_steps"), ": cannot resume with world size ", w, ": ", was, ", and ",
               per_step, " is not divisible by ", w,
               "; resume with a world size that divides it, or pass --allow-config-change to change the global "
               "batch");
  }
  const int64_t accum = per_step / w;
  std::printf(
      "world size %lld -> %lld: gradient_accumulation_steps %lld -> %lld keeps the global batch of %lld "
      "micro-batches of %lld per step\n",
      static_cast<long long>(saved.world_size), static_cast<long long>(w),
      static_cast<long long>(s.cfg.gradient_accumulation_steps), static_cast<long long>(accum),
      static_cast<long long>(per_step), static_cast<long long>(saved_cfg.micro_batch_size));
  s.cfg.gradient_accumulation_steps = accum;
  return true;
}

// Picks the checkpoint to resume from (checking its config), or refuses a fresh run into a run
// directory with checkpoints. Reads only. Returns the checkpoint, empty for a fresh run.
stdfs::path pick_checkpoint(Session& s) {
  const config::TrainConfig& cfg = s.cfg;
  const TrainOptions& opt = s.opt;
  const stdfs::path run_dir = cfg.output_dir;
  if (opt.resume) {
    const stdfs::path ckpt = run::pick_resume_checkpoint(run_dir, opt.resume_path, warn);
    const bool kept = keep_global_batch(s, ckpt);
    check_resume_config(cfg, opt, ckpt, kept);
    return ckpt;
  }
  if (!run::list_checkpoints(run::checkpoints_dir(run_dir)).empty())
    user_error(cfg.where("output_dir"), ": output_dir: ", run_dir.string(),
               " already holds checkpoints of a run; pass --resume to continue it, or choose another output_dir");
  return {};
}

// Once the run is known to start: creates the run directory and writes its config.yaml.
void commit_run_dir(const config::TrainConfig& cfg) {
  const stdfs::path run_dir = cfg.output_dir;
  std::error_code ec;
  stdfs::create_directories(run_dir, ec);
  if (ec) user_error(cfg.where("output_dir"), ": output_dir: cannot create ", run_dir.string(), ": ", ec.message());
  fs::write_file_atomic(run::config_file(run_dir), config::to_yaml(cfg));
}

// overrides_of_model_config: the router's load-balancing loss of a mixture of experts.
void apply_model_overrides(const config::TrainConfig& cfg, model::Model& m) {
  const config::ModelConfigOverrides& o = cfg.model_overrides;  // refused on a dense model (check_shapes)
  if (o.output_router_logits) m.config.output_router_logits = *o.output_router_logits;
  if (o.router_aux_loss_coef) m.config.router_aux_loss_coef = *o.router_aux_loss_coef;
}

// Base model with LoRA, its trainable parameters, and the optimizer over them.
void setup_model(Session& s) {
  const config::TrainConfig& cfg = s.cfg;
  const auto t_load = Clock::now();
  s.m = model::load_model(cfg.base_model, model::ModelLoadOptions::from_train_config(cfg, s.device));
  s.m.gradient_checkpointing = cfg.gradient_checkpointing;
  s.m.checkpoint_offload = cfg.activation_offload;
  apply_model_overrides(cfg, s.m);
  s.m.router_aux_loss = s.m.config.output_router_logits;
  s.params = s.m.lora_parameters();
  int64_t trainable = 0;
  for (const auto& p : s.params) trainable += p.param.numel();
  std::printf(
      "model: %s, %lld layers, %s on %s in %s (%s frozen base, %s), %lld trainable parameters; loaded in %.1fs\n",
      s.m.config.model_type.c_str(), static_cast<long long>(s.m.layers.size()), cfg.base_model.c_str(),
      s.device.str().c_str(), c10::toString(s.m.compute_dtype),
      fs::format_bytes(static_cast<uint64_t>(s.m.base_nbytes())).c_str(),
      cfg.lora.adapter == "qlora" ? "NF4" : "16-bit", static_cast<long long>(trainable), seconds_since(t_load));

  if (s.group) {  // every rank starts from rank 0's LoRA weights (checked by digest after setup)
    at::NoGradGuard ng;
    std::vector<at::Tensor> w;
    for (const auto& p : s.params) w.push_back(p.param.detach());
    s.group->broadcast(w, 0);
  }
  std::vector<optim::NamedParam> np;
  if (cfg.optim.loraplus_lr_ratio && cfg.optim.weight_decay > 0 && cfg.optim.loraplus_weight_decay == 0)
    std::fprintf(stderr,
                 "qlora: warning: %s: weight_decay: %g does not apply with loraplus_lr_ratio; LoRA+ decays by "
                 "loraplus_weight_decay (0 here), as PEFT's create_loraplus_optimizer does\n",
                 cfg.where("weight_decay").c_str(), cfg.optim.weight_decay);
  for (const auto& p : s.params) {
    np.push_back({p.name, p.param.detach(), lr_scale(cfg.optim, p.name, p.param.dim())});
    s.param_tensors.push_back(p.param);
    s.compute.push_back(p.param.detach());
  }
  s.adamw = std::make_unique<optim::AdamW>(np, adamw_options(cfg.optim), s.device);
  std::printf("optimizer: %s\n", s.adamw->describe().c_str());
}

// What a step of setup is doing, for the out-of-memory message.
std::string g_phase = "starting";
std::string g_last_checkpoint;  // the newest complete checkpoint of the run, if any

// Every check of the config that reads the model's config.json: target modules, shapes. Nothing
// is loaded yet (the memory check needs the data: setup()).
void check_against_model(Session& s) {
  s.mc = model::read_model_config(s.cfg.base_model);
  check_config_against_model(s.cfg, s.mc);
}

// SHA-256 of the training state every rank must hold identically: the LoRA weights, the
// optimizer state and the dropout generator.
std::string state_digest(const Session& s) {
  Sha256 h;
  auto add = [&](const at::Tensor& t) {
    const at::Tensor c = t.detach().cpu().contiguous();
    h.update(c.data_ptr(), c.nbytes());
  };
  for (const auto& p : s.params) add(p.param);
  const optim::OptimizerState os = s.adamw->state_dict();
  for (const auto& [k, t] : os.tensors) {
    h.update(k.data(), k.size());
    add(t);
  }
  h.update(os.json.data(), os.json.size());
  add(s.m.dropout_generator.get_state());
  return h.hex_digest();
}

// Every rank's state against rank 0's (a collective); `when` names the moment for the error.
void check_same_state(Session& s, const std::string& when) {
  if (!s.group) return;
  const std::string mine = state_digest(s);
  const std::string root = s.group->broadcast_string(mine, 0);
  const double differs = s.group->all_reduce_max(mine == root ? 0.0 : 1.0);
  if (differs > 0)
    throw std::runtime_error("rank " + std::to_string(s.rank) + ": the LoRA weights, optimizer or dropout state " +
                             (mine == root ? "of another rank" : "of this rank") + " differ from rank 0's " + when);
}

// Tokenizer, datasets, model and optimizer, data loader and schedule; on resume, the
// checkpoint's state. Writes nothing into the run directory (dataset_prepared_path may get an entry).
void setup(Session& s) {
  const config::TrainConfig& cfg = s.cfg;
  g_phase = "checking the config";
  check_output_dir(cfg);
  s.resume_from = pick_checkpoint(s);
  check_against_model(s);
  g_phase = "loading the tokenizer and the datasets";
  const std::string tok_path = cfg.tokenizer.empty() ? cfg.base_model : cfg.tokenizer;
  s.tk = model::load_base_tokenizer(tok_path);  // a GGUF base carries its own
  if (!cfg.data.chat_template.empty())          // a chat template the config names parses, chat data or not
    located(cfg, [&] { return tok::ChatTemplate::resolve(cfg.data.chat_template, *s.tk); });
  s.ds = prepare_run_data(cfg, *s.tk, tok_path, [](const std::string& l) { std::printf("%s\n", l.c_str()); });
  s.planned_peak = check_memory(
      cfg, s.mc, s.device, data_shape(*s.ds.train, s.ds.val.get(), cfg.micro_batch_size, cfg.data.pad_to_sequence_len),
      s.opt.world ? s.opt.world->local_world_size : 1, s.opt.faults.memory_budget);
  g_phase = "loading the model";
  located(cfg, [&] {
    setup_model(s);
    return 0;
  });
  s.loader = located(cfg, [&] {
    return std::make_unique<data::DataLoader>(s.ds.train, cfg.micro_batch_size, cfg.seed, /*shuffle=*/true,
                                              cfg.data.pad_to_sequence_len);
  });
  const int64_t accum = cfg.gradient_accumulation_steps * s.world_size;  // micro-batches per step
  s.steps_per_epoch = std::max<int64_t>(1, (s.loader->batches_per_epoch() + accum - 1) / accum);
  s.total_steps = cfg.max_steps ? *cfg.max_steps : *cfg.num_epochs * s.steps_per_epoch;
  s.sched = lr_schedule(cfg.optim, s.total_steps);
  if (!s.resume_from.empty()) {
    g_phase = "restoring the checkpoint";
    s.ts = run::restore_checkpoint(s.resume_from, s.m, *s.adamw, s.param_tensors, *s.loader);
  }
  s.ts.world_size = s.world_size;
  check_same_state(s, s.resume_from.empty() ? "at the start" : "after restoring " + s.resume_from.string());
}

// ---- resume ------------------------------------------------------------------------------------

// Keeps metrics.jsonl up to the restored checkpoint's step.
void resume(Session& s) {
  if (s.is_main()) s.hist = run::truncate_metrics(run::metrics_file(s.run_dir), s.ts.global_step);
  s.last_saved = s.ts.global_step;
  std::printf("resumed from %s at step %lld/%lld\n", s.resume_from.string().c_str(),
              static_cast<long long>(s.ts.global_step), static_cast<long long>(s.total_steps));
}

// ---- loop --------------------------------------------------------------------------------------

// Rank 0 evaluates; the other ranks wait for it in their next collective (within ddp_timeout).
void run_eval(Session& s, int64_t step) {
  if (!s.has_val() || !s.is_main()) return;
  g_phase = "evaluating";
  run::EvalMetrics e = evaluate(s.m, s.ds.val, s.cfg.micro_batch_size, s.cfg, *s.tk, step);
  if (s.metrics) s.metrics->log_eval(e);
  s.hist.evals.push_back(e);
  s.progress->message(describe_eval(e));
}

// report_to: tensorboard. The event files in logging_dir keep what came up to the step the run
// starts from (a fresh run: nothing; run/tensorboard.h), a new file takes what follows: the
// resolved config as text at that step, then each step's and eval's numbers as metrics.jsonl has
// them (run/metrics.h).
void open_tensorboard(Session& s, bool resumed) {
  const stdfs::path dir = s.cfg.logging_dir;
  if (resumed) {
    const int64_t removed = run::truncate_event_files(dir, s.ts.global_step, "config");
    if (removed > 0)
      std::printf("tensorboard: removed %lld events after step %lld from %s\n", static_cast<long long>(removed),
                  static_cast<long long>(s.ts.global_step), dir.string().c_str());
  } else if (const int64_t files = run::remove_event_files(dir); files > 0) {
    std::printf("tensorboard: removed %lld event files of an earlier start (no checkpoint) from %s\n",
                static_cast<long long>(files), dir.string().c_str());
  }
  auto tb = std::make_unique<run::TensorBoardWriter>(dir);
  if (resumed) tb->add_session_start(s.ts.global_step + 1);  // a running TensorBoard drops what came after
  tb->add_text("config", s.ts.global_step, "```yaml\n" + config::to_yaml(s.cfg) + "```\n");
  tb->flush();
  std::printf("tensorboard: %s (view with: tensorboard --logdir %s)\n", tb->path().string().c_str(),
              dir.string().c_str());
  s.metrics->attach_tensorboard(std::move(tb));
}

// Opens metrics.jsonl (appending on resume), prints the plan, runs the eval on start.
void start_loop(Session& s, const stdfs::path& resumed_from) {
  const config::TrainConfig& cfg = s.cfg;
  const bool resumed = !resumed_from.empty();
  if (s.is_main()) s.metrics = std::make_unique<run::MetricsLog>(run::metrics_file(s.run_dir), /*append=*/resumed);
  if (resumed && s.metrics)
    s.metrics->log_event("resume",
                         nlohmann::json({{"step", s.ts.global_step}, {"from", resumed_from.string()}}).dump());
  if (s.metrics && cfg.reports_to("tensorboard")) open_tensorboard(s, resumed);
  std::printf(
      "training: %lld steps (%lld per epoch), micro_batch_size %lld x gradient_accumulation_steps %lld%s, "
      "lr %.3g %s, warmup %lld\n",
      static_cast<long long>(s.total_steps), static_cast<long long>(s.steps_per_epoch),
      static_cast<long long>(cfg.micro_batch_size), static_cast<long long>(cfg.gradient_accumulation_steps),
      s.world_size > 1 ? (" x " + std::to_string(s.world_size) + " processes").c_str() : "", s.sched.learning_rate,
      cfg.optim.lr_scheduler.c_str(), static_cast<long long>(s.sched.warmup_steps));
  std::fflush(stdout);

  s.progress = std::make_unique<Progress>(s.total_steps, cfg.logging_steps, s.opt.force_plain_progress);
  if (cfg.eval_on_start && !resumed) run_eval(s, 0);
  s.m.training = true;
  s.t_loop = Clock::now();
  s.elapsed_before = s.ts.elapsed_s;
  // CPU: each micro-batch runs as one row shard per thread (step.h); GPU: one shard.
  s.shards = s.device.is_cpu() ? std::max(1, at::get_num_threads()) : 1;
  if (s.m.router_aux_loss) {
    s.shards = 1;  // the load-balancing loss is over the whole micro-batch
    s.progress->message("router load-balancing loss on: loss + " + std::to_string(s.m.config.router_aux_loss_coef) +
                        " x aux_loss (metrics.jsonl: aux_loss)");
  }
  if (s.shards > 1)
    s.progress->message("cpu: " + std::to_string(s.shards) + " threads; each micro-batch runs as " +
                        std::to_string(std::min<int64_t>(s.shards, cfg.micro_batch_size)) + " row shards side by side");
}

// One optimizer step's gradients and numbers, before the update.
struct StepResult {
  double loss = NAN;       // mean token loss over the accumulated batch
  double grad_norm = NAN;  // before clipping
  double aux_loss = NAN;   // router load-balancing loss, mean over the global batch's micro-batches
  double lr = 0;
  int64_t targets = 0, tokens = 0;  // target and input tokens of the accumulated batch
  std::vector<at::Tensor> grads;    // clipped; undefined for a parameter without a gradient
};

// Forward and backward over the global batch's micro-batches, then clipping. The global batch is
// gradient_accumulation_steps x world_size micro-batches in the loader's order, each with its own
// dropout seed drawn from the model's dropout generator (the same draws on every rank); rank r
// trains micro-batches [r G, (r + 1) G) and skips the others. Target tokens, loss and gradients
// are summed over the ranks, so the step is the single-process step over the same batch.
StepResult compute_step(Session& s) {
  StepResult r;
  const int64_t accum = s.cfg.gradient_accumulation_steps;
  const int64_t first = s.rank * accum, last = first + accum;
  // Gather this rank's micro-batches first: the loss is normalized by the global batch's target
  // tokens.
  std::vector<data::Batch> micro;
  std::vector<uint64_t> seeds;
  for (int64_t k = 0; k < accum * s.world_size; ++k) {
    const uint64_t seed = model::dropout_seed(&s.m.dropout_generator);
    if (k < first || k >= last) {
      s.loader->skip();
      continue;
    }
    micro.push_back(s.loader->next());
    seeds.push_back(seed);
    r.targets += micro.back().num_target_tokens;
    r.tokens += micro.back().num_tokens;
  }
  int64_t local_targets = r.targets;
  if (s.group) {
    const std::vector<double> t =
        s.group->all_reduce_sum({static_cast<double>(r.targets), static_cast<double>(r.tokens)});
    r.targets = static_cast<int64_t>(t[0]);
    r.tokens = static_cast<int64_t>(t[1]);
  }
  // The micro-batches' gradients are summed in float64 on the CPU (float32 on a GPU), across the
  // micro-batches and then across the ranks: sums of float32 values in float64 are exact in
  // practice, so the step does not depend on how the micro-batches are split over processes.
  const at::ScalarType acc_dtype = s.device.is_cpu() ? at::kDouble : at::kFloat;
  double loss_sum = 0, aux_sum = 0;
  // The load-balancing loss of each micro-batch, averaged over the global batch's micro-batches.
  const double micro_total = static_cast<double>(accum * s.world_size);
  const double aux_weight = s.m.config.router_aux_loss_coef / micro_total;
  for (auto& p : s.params) p.param.mutable_grad() = at::Tensor();
  std::vector<at::Tensor> acc(s.params.size());
  if (r.targets > 0 && local_targets > 0) {
    for (size_t i = 0; i < micro.size(); ++i) {
      double aux = 0;
      loss_sum += forward_backward(s.m, micro[i], static_cast<double>(r.targets), s.shards, s.param_tensors, seeds[i],
                                   aux_weight, &aux);
      aux_sum += aux;
      at::NoGradGuard ng;
      for (size_t j = 0; j < s.params.size(); ++j) {
        at::Tensor& g = s.params[j].param.mutable_grad();
        if (!g.defined()) continue;
        if (acc[j].defined()) {
          acc[j].add_(g);
        } else {
          acc[j] = g.to(acc_dtype, /*non_blocking=*/false, /*copy=*/true);
        }
        g = at::Tensor();
      }
    }
  }
  if (s.group) {
    // One sum over the ranks: the gradients in flat buckets, then the loss with the stop votes.
    for (size_t j = 0; j < acc.size(); ++j)
      if (!acc[j].defined())
        acc[j] = at::zeros(s.params[j].param.sizes(), s.params[j].param.options().dtype(acc_dtype));
    s.group->all_reduce_sum(acc);
    const std::vector<double> l = s.group->all_reduce_sum({loss_sum, stop_requested() ? 1.0 : 0.0, aux_sum});
    loss_sum = l[0];
    s.stop_agreed = l[1] > 0;
    aux_sum = l[2];
  }
  for (size_t j = 0; j < acc.size(); ++j)
    r.grads.push_back(acc[j].defined() ? acc[j].to(s.params[j].param.scalar_type()) : at::Tensor());
  r.loss = r.targets > 0 ? loss_sum / r.targets : NAN;
  if (s.m.router_aux_loss) r.aux_loss = aux_sum / micro_total;
  const auto& nonfinite = s.opt.faults.nonfinite_steps;
  if (std::find(nonfinite.begin(), nonfinite.end(), s.ts.global_step + 1) != nonfinite.end())
    for (auto& g : r.grads)
      if (g.defined()) g.fill_(NAN);
  {
    kernels::profile::Scope prof(kernels::profile::Part::optimizer);
    r.grad_norm = optim::clip_grad_norm_(r.grads, s.cfg.optim.max_grad_norm);
  }
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
      if (s.is_main())  // every rank of a distributed run takes the same decision; one says so
        std::fprintf(stderr,
                     "qlora: error: training diverged: %lld non-finite steps in a row (max_nonfinite_steps); "
                     "the last checkpoint holds the last finite state\n",
                     static_cast<long long>(ts.consecutive_nonfinite));
      return false;
    }
  } else {
    ts.consecutive_nonfinite = 0;
    at::NoGradGuard ng;
    kernels::profile::Scope prof(kernels::profile::Part::optimizer);
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
  if (s.m.router_aux_loss) sm.aux_loss = r.aux_loss;
  sm.tokens = r.targets;
  sm.tokens_per_s = r.tokens / std::max(1e-9, seconds_since(t_step));
  s.ts.elapsed_s = s.elapsed_before + seconds_since(s.t_loop);
  sm.elapsed_s = s.ts.elapsed_s;
  sm.memory_bytes = memory_in_use_peak(s.device);
  sm.skipped_steps = s.ts.skipped_steps;
  if (s.metrics) s.metrics->log_step(sm);
  s.hist.steps.push_back(sm);
  s.progress->update(sm);
}

// Rank 0 writes the checkpoint; in a distributed run every rank first checks that its state is
// rank 0's (so the one checkpoint holds every rank's weights, optimizer and dropout state).
void save(Session& s) {
  g_phase = "saving " + run::checkpoint_name(s.ts.global_step);
  check_same_state(s, "at step " + std::to_string(s.ts.global_step));
  if (s.is_main()) run::save_checkpoint(s.ckpt_dir(), s.cfg, s.m, *s.adamw, *s.loader, s.ts);
  s.last_saved = s.ts.global_step;
  g_last_checkpoint = (s.ckpt_dir() / run::checkpoint_name(s.last_saved)).string();
}

// The cadence after each step: eval every eval_steps (the last step's eval is finish's), a
// checkpoint every save_steps and on a stop request. True when the run stops here.
bool after_step(Session& s) {
  const int64_t step = s.ts.global_step;
  if (s.cfg.eval_steps > 0 && step % s.cfg.eval_steps == 0 && step < s.total_steps) run_eval(s, step);
  // A distributed run stops where every rank agreed to (the vote in compute_step).
  const bool stop = (s.group ? s.stop_agreed : stop_requested()) || step == s.opt.faults.stop_after_step;
  if ((s.cfg.save_steps > 0 && step % s.cfg.save_steps == 0) || stop) save(s);
  return stop;
}

enum class LoopEnd { Done, Stopped, Diverged };

// profiler_steps: the steps after the first profiler_steps_start are timed part by part
// (kernels/step_profile.h); rank 0 writes profile_breakdown.json into the run directory.
struct StepProfiler {
  int64_t first = 0, last = -1;  // global steps profiled (1-based, inclusive); none when last < first
  bool on = false;
  int64_t steps = 0, tokens = 0;
  std::vector<double> plain_s;  // wall time of the steps before, for the profiler's own overhead

  explicit StepProfiler(const config::TrainConfig& c) {
    if (c.profiler_steps <= 0) return;
    first = c.profiler_steps_start + 1;
    last = c.profiler_steps_start + c.profiler_steps;
  }
  void before_step(const Session& s) {
    if (!on && s.ts.global_step + 1 == first) {
      kernels::profile::begin(s.device);
      on = true;
    }
  }
  void after_step(Session& s, const StepResult& r, double seconds) {
    if (!on) {
      if (s.ts.global_step < first) plain_s.push_back(seconds);
      return;
    }
    ++steps;
    tokens += r.tokens;
    if (s.ts.global_step >= last) finish(s);
  }
  void finish(Session& s) {
    if (!on) return;
    on = false;
    const kernels::profile::Breakdown b = kernels::profile::end();
    if (!s.is_main() || steps == 0) return;
    const double step_s = b.wall_s / static_cast<double>(steps);
    nlohmann::json parts = nlohmann::json::object();
    double attributed = 0;
    for (size_t i = 0; i < b.seconds.size(); ++i) {
      parts[kernels::profile::part_name(static_cast<kernels::profile::Part>(i))] = b.seconds[i] / steps;
      attributed += b.seconds[i] / steps;
    }
    std::vector<double> plain = plain_s;
    std::sort(plain.begin(), plain.end());
    nlohmann::json j = {
        {"device", s.device.str()},
        {"steps_profiled", {first, first + steps - 1}},
        {"steps", steps},
        {"tokens_per_step", tokens / steps},
        {"step_s", step_s},
        {"parts", parts},
        {"parts_sum_s", attributed},
        {"threads", b.threads},
        {"unattributed_s", b.threads <= 1 ? nlohmann::json(step_s - attributed) : nlohmann::json(nullptr)},
        {"plain_step_s", plain.empty() ? nlohmann::json(nullptr) : nlohmann::json(plain[plain.size() / 2])},
        {"frames_per_step", b.frames / steps},
        {"note",
         "seconds per step, exclusive; the device is synchronized at every frame, so step_s exceeds plain_step_s "
         "(the median unprofiled step before); unattributed_s is host work between frames (data, bookkeeping); "
         "with threads > 1 (CPU row shards side by side) the parts are thread time and may sum past step_s"}};
    const stdfs::path f = s.run_dir / "profile_breakdown.json";
    fs::write_file_atomic(f, j.dump(1) + "\n");
    std::string line = "profile: steps " + std::to_string(first) + "-" + std::to_string(first + steps - 1) + ", " +
                       std::to_string(step_s) + " s/step:";
    for (auto& [k, v] : parts.items())
      if (v.get<double>() > 0)
        line += " " + k + " " + std::to_string(static_cast<int>(100 * v.get<double>() / attributed + 0.5)) + "%";
    s.progress->message(line + " (" + f.string() + ")");
  }
};

LoopEnd train_loop(Session& s) {
  StepProfiler prof(s.cfg);
  while (s.ts.global_step < s.total_steps) {
    const auto t_step = Clock::now();
    g_phase = "training step " + std::to_string(s.ts.global_step + 1);
    prof.before_step(s);
    const StepResult r = compute_step(s);
    if (!apply_step(s, r)) {
      prof.finish(s);
      return LoopEnd::Diverged;
    }
    prof.after_step(s, r, seconds_since(t_step));
    if (s.group) s.group->heartbeat(s.ts.global_step);
    log_step(s, r, t_step);
    if (after_step(s)) {
      prof.finish(s);
      return LoopEnd::Stopped;
    }
  }
  prof.finish(s);
  return LoopEnd::Done;
}

// ---- finish ------------------------------------------------------------------------------------

// The peak against the plan's prediction: on the CPU the peak RSS above the process's RSS at the
// start; on a GPU the caching allocator's peak of allocated bytes.
void report_peak(const Session& s) {
  const uint64_t peak = memory_in_use_peak(s.device);
  const uint64_t base = s.device.is_cuda() ? 0 : std::min(s.rss_at_start, peak);
  const uint64_t used = peak - base;
  const double dev = s.planned_peak ? 100.0 * (static_cast<double>(s.planned_peak) - static_cast<double>(used)) /
                                          static_cast<double>(std::max<uint64_t>(used, 1))
                                    : 0.0;
  std::printf("memory: peak %s (%llu bytes)%s; planned %s (%+.0f%%)\n", fs::format_bytes(used).c_str(),
              static_cast<unsigned long long>(used),
              s.device.is_cuda() ? " allocated on the GPU"
                                 : (" above the " + fs::format_bytes(base) + " the process held at the start").c_str(),
              fs::format_bytes(s.planned_peak).c_str(), dev);
}

void finish(Session& s, Clock::time_point t_start) {
  const int64_t step = s.ts.global_step;
  if (s.last_saved != step) save(s);
  if (!s.is_main()) return;  // the other ranks are done; rank 0 evaluates and reports
  run_eval(s, step);
  const stdfs::path plot = run::loss_plot_file(s.run_dir);
  fs::write_file_atomic(
      plot, loss_curve_svg(s.hist.steps, s.hist.evals, "qlora: " + stdfs::path(s.cfg.config_path).filename().string()));
  const optim::PagingStats ps = s.adamw->stats();
  report_peak(s);
  std::printf("done: %lld steps in %s (%lld skipped); optimizer paging: %s\n", static_cast<long long>(step),
              format_duration(seconds_since(t_start)).c_str(), static_cast<long long>(s.ts.skipped_steps),
              ps.to_string().c_str());
  std::printf("run directory: %s\n  config:     %s\n  metrics:    %s\n  loss plot:  %s\n  checkpoint: %s\n",
              s.run_dir.string().c_str(), run::config_file(s.run_dir).string().c_str(),
              run::metrics_file(s.run_dir).string().c_str(), plot.string().c_str(),
              (s.ckpt_dir() / run::checkpoint_name(step)).string().c_str());
}

// ---- out of memory ---------------------------------------------------------------------------

// The size an allocation failure reports: "N bytes" from the CPU allocator ("you tried to
// allocate N bytes"), "2.00 GiB" from CUDA's ("Tried to allocate 2.00 GiB"); empty if none.
std::string size_in_message(const std::string& m) {
  for (size_t at = m.find("allocate "); at != std::string::npos; at = m.find("allocate ", at + 1)) {
    const size_t b = at + 9;
    size_t e = b;
    while (e < m.size() && ((m[e] >= '0' && m[e] <= '9') || m[e] == '.')) ++e;
    if (e == b || e >= m.size() || m[e] != ' ') continue;
    size_t u = e + 1;
    while (u < m.size() && ((m[u] >= 'a' && m[u] <= 'z') || (m[u] >= 'A' && m[u] <= 'Z'))) ++u;
    if (u > e + 1) return m.substr(b, u - b);
  }
  return "";
}

// The exception in flight as an allocation failure: its message, or nullopt for anything else.
// LibTorch's CPU allocator throws c10::OutOfMemoryError (or a c10::Error saying it "can't
// allocate memory"); operator new throws std::bad_alloc.
std::optional<std::string> allocation_failure(std::exception_ptr ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const c10::OutOfMemoryError& e) {
    return std::string(e.what_without_backtrace());
  } catch (const c10::Error& e) {
    const std::string m = e.what_without_backtrace();
    if (m.find("can't allocate memory") != std::string::npos || m.find("not enough memory") != std::string::npos ||
        m.find("out of memory") != std::string::npos)
      return m;
  } catch (const std::bad_alloc&) { return std::string("std::bad_alloc"); } catch (...) {
  }
  return std::nullopt;
}

void report_out_of_memory(const std::string& what) {
  lift_process_memory_limit();
  const std::string size = size_in_message(what);
  std::string m = "qlora: error: out of memory while " + g_phase;
  if (!size.empty()) m += ": tried to allocate " + size;
  m += g_last_checkpoint.empty() ? "; no checkpoint was written"
                                 : "; the last checkpoint is intact: " + g_last_checkpoint;
  m += "; lower micro_batch_size or sequence_len, or set gradient_checkpointing: true\n";
  // one write: this may run from a terminate handler
  if (::write(STDERR_FILENO, m.data(), m.size()) < 0) {}
}

std::terminate_handler g_previous_terminate = nullptr;

// An allocation failure inside an OpenMP region cannot propagate and ends in std::terminate: it
// still gets the one-line message and exit code 1 instead of an abort.
[[noreturn]] void on_terminate() {
  lift_process_memory_limit();
  if (std::exception_ptr ep = std::current_exception()) {
    if (auto what = allocation_failure(ep)) {
      std::fflush(stdout);
      report_out_of_memory(*what);
      std::_Exit(1);
    }
  }
  if (g_previous_terminate) g_previous_terminate();
  std::abort();
}

// QLORA_TEST_MEMORY_LIMIT=SIZE (a test hook): the process may take SIZE more memory once the
// loop starts, so that an allocation in a step fails the way it does on a full machine.
void apply_test_memory_limit() {
  const char* v = std::getenv("QLORA_TEST_MEMORY_LIMIT");
  if (!v || !*v) return;
  const std::optional<uint64_t> b = parse_byte_size(v);
  if (!b) user_error("QLORA_TEST_MEMORY_LIMIT: expected a size like 64MB, got \"", v, "\"");
  if (!limit_process_memory(*b)) warn("QLORA_TEST_MEMORY_LIMIT: cannot limit memory in this build");
}

// A run on the CPU may not take more memory than the machine can give it (MemAvailable plus free
// swap, or the room under a cgroup limit): past that, an allocation fails and ends the run with the
// one-line message above, where the kernel's out-of-memory killer would end it with a silent
// SIGKILL. memory_check: false leaves the process unlimited.
void limit_to_available_memory(const Session& s) {
  if (!s.device.is_cpu() || !s.cfg.memory_check || std::getenv("QLORA_TEST_MEMORY_LIMIT")) return;
  const std::optional<HostMemory> h = host_memory_available();
  if (!h) return;
  limit_process_memory(h->available + (h->source == "MemAvailable" ? swap_free_bytes() : 0));
}

int train(Session& s, Clock::time_point t_start) {
  const config::TrainConfig& cfg = s.cfg;
  limit_to_available_memory(s);
  setup(s);  // every check; nothing is written before this returns
  if (s.is_main()) commit_run_dir(cfg);
  if (!s.resume_from.empty()) resume(s);
  if (s.last_saved >= 0) g_last_checkpoint = s.resume_from.string();
  // Step temporaries reuse their memory from step to step (kernels/host_cache.h); off again
  // when training returns, so export and merge hand their memory back as before.
  struct HostCacheScope {
    const char* env = std::getenv("QLORA_HOST_CACHE");
    bool on = !(env && std::string_view(env) == "0");
    HostCacheScope() {
      if (on) kernels::enable_host_cache();
    }
    ~HostCacheScope() {
      if (on) kernels::disable_host_cache();
    }
  } host_cache;
  g_phase = "evaluating";
  start_loop(s, s.resume_from);
  apply_test_memory_limit();

  const LoopEnd end = train_loop(s);
  if (end == LoopEnd::Diverged) return 1;
  s.progress->finish();
  if (end == LoopEnd::Stopped) {
    std::string again = "qlora train " + cfg.config_path + " --resume";
    if (!s.opt.launch_options.empty()) again += " " + s.opt.launch_options;
    if (s.opt.world && s.opt.launch_options.empty()) again = "the same torchrun command with " + again;
    std::printf("stopped at step %lld/%lld; checkpoint %s\nresume with: %s\n", static_cast<long long>(s.ts.global_step),
                static_cast<long long>(s.total_steps),
                (s.ckpt_dir() / run::checkpoint_name(s.ts.global_step)).string().c_str(), again.c_str());
    return 0;
  }
  finish(s, t_start);
  return 0;
}

// A distributed run's process group, before anything else: the device is cuda:LOCAL_RANK on
// CUDA, the backend ddp_backend (auto: gloo on the CPU, nccl on CUDA). Rank 0 prints the world.
void join_world(Session& s) {
  const dist::World& w = *s.opt.world;
  const config::TrainConfig& cfg = s.cfg;
  s.rank = w.rank;
  s.world_size = w.world_size;
  if (s.device.is_cuda() && w.local_world_size > 1) {
    if (cfg.device.starts_with("cuda:"))
      user_error(cfg.where("device"), ": device: ", cfg.device, " names one GPU, but ", w.local_world_size,
                 " processes run on this machine; use cuda (or auto): each rank takes cuda:LOCAL_RANK");
    const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
    if (w.local_rank >= gpus)
      user_error("LOCAL_RANK ", w.local_rank, ": this machine has ", gpus, " visible GPU", gpus == 1 ? "" : "s",
                 " for its ", w.local_world_size, " processes; each rank trains on cuda:LOCAL_RANK, so start at most ",
                 gpus, " processes per machine (--nproc-per-node)");
    s.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(w.local_rank));
  }
  std::string backend = cfg.ddp_backend;
  if (backend == "auto") backend = s.device.is_cuda() ? "nccl" : "gloo";
  if (backend == "nccl" && !s.device.is_cuda())
    user_error(cfg.where("ddp_backend"), ": ddp_backend: nccl needs CUDA, but this run trains on ", s.device.str(),
               "; use gloo or auto");
  if (!dist::backend_available(backend))
    user_error(cfg.where("ddp_backend"), ": ddp_backend: ", backend, " is not available in this build");
  s.group = dist::Group::connect(w, backend, s.device, std::chrono::seconds(cfg.ddp_timeout));
  if (s.is_main())
    std::printf("distributed: world size %d (%d node%s x %d process%s), backend %s, store %s%s, ddp_timeout %llds\n",
                w.world_size, w.num_nodes(), w.num_nodes() == 1 ? "" : "s", w.local_world_size,
                w.local_world_size == 1 ? "" : "es", backend.c_str(), s.group->store_address().c_str(),
                w.agent_store ? " (launcher's)" : " (hosted by rank 0)", static_cast<long long>(cfg.ddp_timeout));
  std::fflush(stdout);
}

}  // namespace

int run_training(const config::TrainConfig& cfg, const TrainOptions& opt) {
  const auto t_start = Clock::now();
  Session s(cfg, opt, model::resolve_device(cfg.device, cfg.where("device") + ": device"));
  s.rss_at_start = fs::proc_status_bytes("VmRSS:");
  at::manual_seed(cfg.seed);
  install_stop_handlers(/*merge_repeats=*/opt.world.has_value(), /*quiet=*/opt.world && opt.world->rank > 0);
  g_previous_terminate = std::set_terminate(on_terminate);
  try {
    if (opt.world) join_world(s);
    return train(s, t_start);
  } catch (const dist::CollectiveError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "qlora: error: %s%s\n", e.what(),
                 g_last_checkpoint.empty() ? "" : ("; the last checkpoint is intact: " + g_last_checkpoint).c_str());
    return 1;
  } catch (const UserError& e) {
    if (!s.group) throw;
    s.group->mark_failed(e.what());  // the other ranks name this one and why
    // A bad input every rank sees (the config, a checkpoint) is reported once, by rank 0.
    if (s.rank > 0 && s.group->failure_of(0, std::chrono::seconds(3)) == std::string(e.what())) return 2;
    throw;
  } catch (const std::exception& e) {
    if (s.group) s.group->mark_failed(e.what());  // the other ranks name this one and why
    lift_process_memory_limit();
    auto what = allocation_failure(std::current_exception());
    if (!what) throw;
    std::fflush(stdout);
    report_out_of_memory(*what);
    return 1;
  } catch (...) {
    lift_process_memory_limit();  // the message needs a little memory
    auto what = allocation_failure(std::current_exception());
    if (!what) throw;
    std::fflush(stdout);
    report_out_of_memory(*what);
    return 1;
  }
}

}  // namespace qlora::train
