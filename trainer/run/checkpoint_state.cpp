#include "trainer/run/checkpoint_state.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <system_error>

#include "trainer/common/error.h"
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

namespace {

using nlohmann::json;

constexpr int64_t kMaxCounter = int64_t{1} << 48;  // above this a step or row count is not real

// Thrown (and caught below) while checking one file of a checkpoint.
[[noreturn]] void bad(const stdfs::path& file, const std::string& what) {
  throw UserError(file.string() + ": " + what);
}

json parse_json_file(const stdfs::path& f) {
  try {
    return json::parse(fs::read_file(f));
  } catch (const json::exception& e) { bad(f, "not valid JSON (" + json_error_text(e) + ")"); }
}

const json& member(const json& j, const char* key, const stdfs::path& f, const std::string& prefix = "") {
  if (!j.is_object()) bad(f, prefix + "expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) bad(f, prefix + key + ": missing");
  return *it;
}

// A JSON integer in [lo, hi].
int64_t int_in(const json& v, const std::string& key, const stdfs::path& f, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(f, key + ": expected an integer, got " + v.dump().substr(0, 40));
  if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(hi) : v.get<int64_t>() > hi)
    bad(f, key + ": " + v.dump() + " is out of range (at most " + std::to_string(hi) + ")");
  if (!v.is_number_unsigned() && v.get<int64_t>() < lo)
    bad(f, key + ": " + v.dump() + " is out of range (at least " + std::to_string(lo) + ")");
  return v.is_number_unsigned() ? static_cast<int64_t>(v.get<uint64_t>()) : v.get<int64_t>();
}

// The first non-finite element of a float tensor, as "NaN at element 17", or "" if all are finite.
std::string nonfinite_at(const at::Tensor& t) {
  if (!at::isFloatingType(t.scalar_type()) || t.numel() == 0) return "";
  const at::Tensor bad_mask = at::logical_not(at::isfinite(t.reshape({-1})));
  if (!bad_mask.any().item<bool>()) return "";
  const int64_t i = bad_mask.nonzero().select(1, 0)[0].item<int64_t>();
  const double v = t.reshape({-1})[i].item<double>();
  return std::string(std::isnan(v) ? "NaN" : "Inf") + " at element " + std::to_string(i);
}

std::string shape_str(at::IntArrayRef s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// trainer_state.json: the counters and the loader position, checked for range and consistency.
// `accum`: the config's gradient_accumulation_steps.
struct ParsedTrainerState {
  TrainerState ts;
  data::LoaderState loader;
  int64_t micro_batch_offset = 0;
};

// Micro-batches the loader has served at `s` since the run began.
__int128 micro_batches_served(const data::LoaderState& s) {
  const int64_t per_epoch = (s.num_rows + s.micro_batch_size - 1) / s.micro_batch_size;
  return static_cast<__int128>(s.epoch) * per_epoch + (s.position + s.micro_batch_size - 1) / s.micro_batch_size;
}

ParsedTrainerState parse_trainer_state(const stdfs::path& f, int64_t accum) {
  const json j = parse_json_file(f);
  ParsedTrainerState p;
  TrainerState& ts = p.ts;
  ts.global_step = int_in(member(j, "global_step", f), "global_step", f, 0, kMaxCounter);
  if (j.contains("skipped_steps")) ts.skipped_steps = int_in(j["skipped_steps"], "skipped_steps", f, 0, ts.global_step);
  if (j.contains("consecutive_nonfinite"))
    ts.consecutive_nonfinite = int_in(j["consecutive_nonfinite"], "consecutive_nonfinite", f, 0, ts.skipped_steps);
  if (j.contains("elapsed_s")) {
    const json& e = j["elapsed_s"];
    if (!e.is_number() || !std::isfinite(e.get<double>()) || e.get<double>() < 0)
      bad(f, "elapsed_s: expected a non-negative number of seconds, got " + e.dump().substr(0, 40));
    ts.elapsed_s = e.get<double>();
  }
  if (j.contains("micro_batch_offset"))
    p.micro_batch_offset = int_in(j["micro_batch_offset"], "micro_batch_offset", f, -kMaxCounter, kMaxCounter);
  if (j.contains("world_size")) ts.world_size = int_in(j["world_size"], "world_size", f, 1, 1 << 20);
  const json& l = member(j, "loader", f);
  if (!l.is_object()) bad(f, "loader: expected an object");
  // Range first (LoaderState reads unsigned fields, where a negative number would wrap).
  for (const char* k : {"epoch", "seed", "data_fingerprint"}) {
    const json& v = member(l, k, f, "loader.");
    if (!v.is_number_unsigned()) bad(f, std::string("loader.") + k + ": expected a non-negative integer");
  }
  int_in(member(l, "epoch", f, "loader."), "loader.epoch", f, 0, kMaxCounter);
  const int64_t rows = int_in(member(l, "num_rows", f, "loader."), "loader.num_rows", f, 1, kMaxCounter);
  const int64_t mbs = int_in(member(l, "micro_batch_size", f, "loader."), "loader.micro_batch_size", f, 1, kMaxCounter);
  const int64_t pos = int_in(member(l, "position", f, "loader."), "loader.position", f, 0, rows);
  if (pos % mbs != 0 && pos != rows)
    bad(f, "loader.position: " + std::to_string(pos) + " is not a batch boundary (micro_batch_size " +
               std::to_string(mbs) + ", " + std::to_string(rows) + " rows)");
  try {
    p.loader = data::LoaderState::from_json(l);
  } catch (const UserError& e) { bad(f, e.what()); }
  // Every optimizer step drew gradient_accumulation_steps x world_size micro-batches (the offset
  // records a change of either on an earlier resume).
  const __int128 served = micro_batches_served(p.loader);
  const __int128 expected = static_cast<__int128>(ts.global_step) * accum * ts.world_size + p.micro_batch_offset;
  if (served != expected)
    bad(f, "global_step " + std::to_string(ts.global_step) + " disagrees with the data position (loader.epoch " +
               std::to_string(p.loader.epoch) + ", loader.position " + std::to_string(pos) + " of " +
               std::to_string(rows) + " rows: " + std::to_string(static_cast<int64_t>(served)) +
               " micro-batches served, expected " + std::to_string(static_cast<int64_t>(expected)) +
               " with gradient_accumulation_steps " + std::to_string(accum) +
               (ts.world_size > 1 ? " x world_size " + std::to_string(ts.world_size) : std::string()) + ")");
  return p;
}

// A tensor of a checkpoint safetensors file with the expected dtype and shape, finite.
at::Tensor expect_tensor(const io::SafetensorsFile& sf, const std::string& name, at::ScalarType dt,
                         at::IntArrayRef shape) {
  if (!sf.contains(name)) bad(sf.path(), name + ": missing");
  at::Tensor t = sf.tensor(name);
  if (t.scalar_type() != dt || t.sizes() != shape)
    bad(sf.path(), name + ": " + c10::toString(t.scalar_type()) + " " + shape_str(t.sizes()) + ", expected " +
                       c10::toString(dt) + " " + shape_str(shape));
  const std::string nf = nonfinite_at(t);
  if (!nf.empty()) bad(sf.path(), name + ": non-finite values (" + nf + ")");
  return t;
}

void no_extra_tensors(const io::SafetensorsFile& sf, const std::set<std::string>& expected) {
  for (const auto& t : sf.tensors())
    if (!expected.count(t.name)) bad(sf.path(), shorten(t.name) + ": unexpected tensor");
}

struct OptParam {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool is8bit = false;
};

void check_contents(const stdfs::path& ckpt) {
  // config.yaml (the optimizer kind and accumulation the other files must agree with).
  const config::TrainConfig cfg = read_checkpoint_config(ckpt);
  // manifest.json's step (the manifest itself was verified against the files).
  const stdfs::path mf = ckpt / kManifestFile;
  const int64_t step = int_in(member(parse_json_file(mf), "step", mf), "step", mf, 0, kMaxCounter);

  const stdfs::path tf = ckpt / kTrainerStateFile;
  const ParsedTrainerState pts = parse_trainer_state(tf, cfg.gradient_accumulation_steps);
  if (pts.ts.global_step != step)
    bad(tf, "global_step " + std::to_string(pts.ts.global_step) + " disagrees with the manifest's step " +
                std::to_string(step));

  // optimizer.json
  const stdfs::path oj = ckpt / kOptimizerStateFile;
  const json o = parse_json_file(oj);
  const json& fmt = member(o, "format", oj);
  if (!fmt.is_string() || fmt.get<std::string>() != "qlora.adamw.v1")
    bad(oj, "format: expected \"qlora.adamw.v1\", got " + fmt.dump().substr(0, 40));
  const int64_t opt_step = int_in(member(o, "step", oj), "step", oj, 0, kMaxCounter);
  if (opt_step != pts.ts.global_step - pts.ts.skipped_steps)
    bad(oj, "step " + std::to_string(opt_step) + " disagrees with " + kTrainerStateFile + " (global_step " +
                std::to_string(pts.ts.global_step) + " less " + std::to_string(pts.ts.skipped_steps) +
                " skipped steps)");
  const json& s8 = member(o, "state_8bit", oj);
  if (!s8.is_boolean()) bad(oj, "state_8bit: expected true or false");
  const bool want8 = cfg.optim.optimizer == "adamw_8bit";
  if (s8.get<bool>() != want8)
    bad(oj, std::string("state_8bit: ") + (s8.get<bool>() ? "true" : "false") + ", but config.yaml's optimizer is " +
                cfg.optim.optimizer);
  const int64_t min8 = int_in(member(o, "min_8bit_size", oj), "min_8bit_size", oj, 0, kMaxCounter);
  const json& jp = member(o, "params", oj);
  if (!jp.is_array() || jp.empty()) bad(oj, "params: expected a non-empty array");
  std::vector<OptParam> params;
  std::set<std::string> names;
  for (size_t i = 0; i < jp.size(); ++i) {
    const std::string k = "params[" + std::to_string(i) + "]";
    const json& e = jp[i];
    const json& n = member(e, "name", oj, k + ".");
    const json& sh = member(e, "shape", oj, k + ".");
    const json& st = member(e, "state", oj, k + ".");
    OptParam p;
    if (!n.is_string() || n.get<std::string>().empty()) bad(oj, k + ".name: expected a tensor name");
    p.name = n.get<std::string>();
    if (!names.insert(p.name).second) bad(oj, k + ".name: \"" + shorten(p.name) + "\" appears twice");
    if (!io::parse_peft_lora_key(p.name))
      bad(oj, k + ".name: \"" + shorten(p.name) + "\" is not a LoRA parameter name");
    // LoRA matrices are [rows, columns]; DoRA's magnitudes [rows].
    const size_t dims = io::parse_peft_lora_key(p.name)->which == 'M' ? 1 : 2;
    if (!sh.is_array() || sh.size() != dims)
      bad(oj, k + (dims == 2 ? ".shape: expected [rows, columns]" : ".shape: expected [rows]"));
    for (const json& d : sh) p.shape.push_back(int_in(d, k + ".shape", oj, 1, kMaxCounter));
    if (static_cast<__int128>(p.shape[0]) * p.shape.back() > kMaxCounter) bad(oj, k + ".shape: too large");
    p.numel = dims == 2 ? p.shape[0] * p.shape[1] : p.shape[0];
    if (!st.is_string() || (st.get<std::string>() != "fp32" && st.get<std::string>() != "8bit"))
      bad(oj, k + ".state: expected \"fp32\" or \"8bit\"");
    p.is8bit = st.get<std::string>() == "8bit";
    const bool should8 = want8 && p.numel >= min8;
    if (p.is8bit != should8)
      bad(oj, k + ".state: \"" + st.get<std::string>() + "\", but the optimizer keeps " + (should8 ? "8bit" : "fp32") +
                  " state for this parameter");
    params.push_back(std::move(p));
  }

  // optimizer.safetensors: exactly the tensors optimizer.json calls for.
  const io::SafetensorsFile of(ckpt / kOptimizerTensorsFile);
  std::set<std::string> expected;
  std::map<std::string, at::Tensor> masters;
  for (const OptParam& p : params) {
    masters[p.name] = expect_tensor(of, p.name + ".master", at::kFloat, p.shape);
    const int64_t blocks = (p.numel + 255) / 256;
    std::vector<std::pair<std::string, at::Tensor>> nonneg;
    expected.insert(p.name + ".master");
    if (p.is8bit) {
      expect_tensor(of, p.name + ".state1", at::kByte, p.shape);
      expect_tensor(of, p.name + ".state2", at::kByte, p.shape);
      nonneg.emplace_back("absmax1", expect_tensor(of, p.name + ".absmax1", at::kFloat, {blocks}));
      nonneg.emplace_back("absmax2", expect_tensor(of, p.name + ".absmax2", at::kFloat, {blocks}));
      for (const char* s : {".state1", ".state2", ".absmax1", ".absmax2"}) expected.insert(p.name + s);
    } else {
      expect_tensor(of, p.name + ".exp_avg", at::kFloat, p.shape);
      nonneg.emplace_back("exp_avg_sq", expect_tensor(of, p.name + ".exp_avg_sq", at::kFloat, p.shape));
      for (const char* s : {".exp_avg", ".exp_avg_sq"}) expected.insert(p.name + s);
    }
    for (const auto& [what, t] : nonneg)
      if (t.numel() && t.min().item<float>() < 0) bad(of.path(), p.name + "." + what + ": negative values");
  }
  no_extra_tensors(of, expected);

  // The adapter: adapter_config.json, and exactly the optimizer's parameters, equal to its masters.
  const io::PeftAdapterConfig pc = io::read_peft_adapter_config(ckpt);
  const io::SafetensorsFile af(ckpt / kAdapterWeightsFile);
  for (const OptParam& p : params) {
    const at::Tensor t = expect_tensor(af, p.name, at::kFloat, p.shape);
    const io::PeftLoraKey key = *io::parse_peft_lora_key(p.name);
    // The stacked expert adapters (target_parameters) hold r per expert.
    const bool expert = !pc.target_parameters.empty() &&
                        (key.module.ends_with(".mlp.experts") || key.module.ends_with(".mlp.experts.base_layer"));
    if (key.which == 'M' && !pc.use_dora)
      bad(af.path(), p.name + ": a DoRA magnitude, but " + kAdapterConfigFile + " says use_dora false");
    int64_t r = key.which == 'A' ? p.shape[0] : key.which == 'B' ? p.shape[1] : pc.r;
    if (expert && r % pc.r == 0) r = pc.r;
    if (r != pc.r)
      bad(af.path(),
          p.name + ": rank " + std::to_string(r) + ", but " + kAdapterConfigFile + " says r " + std::to_string(pc.r));
    const std::string module = key.module.substr(key.module.rfind('.') + 1);
    const auto& tm = pc.target_modules;
    if (!expert && std::find(tm.begin(), tm.end(), "all-linear") == tm.end() &&
        std::find(tm.begin(), tm.end(), module) == tm.end())
      bad(af.path(), p.name + ": module " + module + " is not among " + kAdapterConfigFile + "'s target_modules");
    if (!at::equal(t, masters.at(p.name)))
      bad(af.path(), p.name + ": differs from the optimizer's master weight in " + kOptimizerTensorsFile);
  }
  no_extra_tensors(af, names);

  // rng_state.safetensors: two CPU generator states.
  const io::SafetensorsFile rf(ckpt / kRngStateFile);
  const int64_t gen_bytes = at::make_generator<at::CPUGeneratorImpl>(0).get_state().numel();
  for (const char* g : {"dropout_generator", "cpu_generator"}) {
    at::Tensor t = expect_tensor(rf, g, at::kByte, {gen_bytes});
    try {
      at::make_generator<at::CPUGeneratorImpl>(0).set_state(t.clone());
    } catch (const c10::Error&) { bad(rf.path(), std::string(g) + ": not a valid CPU generator state"); }
  }
  no_extra_tensors(rf, {"dropout_generator", "cpu_generator"});
}

}  // namespace

namespace {

stdfs::path write_checkpoint(const stdfs::path& checkpoints_dir, const config::TrainConfig& cfg, const model::Model& m,
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
  pc.use_dora = cfg.lora.use_dora;
  // As PEFT saves a PiSSA/OLoRA/LoftQ adapter before conversion: PEFT reruns the method on the
  // original base when it loads it (`qlora export --format peft` converts or carries the base).
  pc.init_lora_weights = cfg.lora.init_lora_weights;
  pc.loftq_iter = cfg.lora.loftq_iter;
  pc.target_modules = m.lora_target_modules();
  pc.target_parameters = m.lora_target_parameters;
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
  // Micro-batches served beyond global_step * gradient_accumulation_steps: non-zero only after a
  // resume changed gradient_accumulation_steps (checked on restore).
  const int64_t offset =
      static_cast<int64_t>(micro_batches_served(loader.state()) -
                           static_cast<__int128>(ts.global_step) * cfg.gradient_accumulation_steps * ts.world_size);
  if (offset != 0) j["micro_batch_offset"] = offset;
  if (ts.world_size > 1) j["world_size"] = ts.world_size;
  fs::write_file_atomic(w.path() / kTrainerStateFile, j.dump(2) + "\n");
  fs::write_file_atomic(config_file(w.path()), config::to_yaml(cfg));
  w.commit(cfg.save_total_limit);
  return w.final_path();
}

// A failed write (full disk, permissions) names the checkpoint the user will look for, not the
// temporary folder it was staged in (".checkpoint-000120.tmp-PID-N", removed again by now).
[[noreturn]] void rethrow_naming_checkpoint(const stdfs::path& final_path, std::string what) {
  const std::string name = final_path.filename().string();
  const std::string staged = "." + name + ".tmp-";
  for (size_t p; (p = what.find(staged)) != std::string::npos;) {
    const size_t end = what.find_first_of("/: ", p);
    what.replace(p, (end == std::string::npos ? what.size() : end) - p, name);
  }
  what = first_line(what);
  if (what.starts_with(final_path.string())) user_error(what, " (checkpoint not written)");
  user_error(final_path.string(), ": cannot write this checkpoint (", what, ")");
}

}  // namespace

stdfs::path save_checkpoint(const stdfs::path& checkpoints_dir, const config::TrainConfig& cfg, const model::Model& m,
                            const optim::AdamW& opt, const data::DataLoader& loader, const TrainerState& ts) {
  const std::string name = checkpoint_name(ts.global_step);
  try {
    return write_checkpoint(checkpoints_dir, cfg, m, opt, loader, ts);
  } catch (const UserError& e) {
    rethrow_naming_checkpoint(checkpoints_dir / name, e.what());
  } catch (const std::system_error& e) { rethrow_naming_checkpoint(checkpoints_dir / name, e.what()); }
}

std::optional<std::string> check_checkpoint_contents(const stdfs::path& ckpt) {
  try {
    check_contents(ckpt);
  } catch (const UserError& e) { return std::string(e.what()); } catch (const std::exception& e) {
    // Anything a malformed file provokes deeper down (a JSON type error, a torch check) is still
    // the checkpoint's fault: report it as such, never as an internal error.
    return ckpt.string() + ": malformed checkpoint (" + first_line(e.what()) + ")";
  }
  return std::nullopt;
}

std::optional<std::string> check_checkpoint(const stdfs::path& ckpt) {
  if (auto why = verify_checkpoint(ckpt)) return ckpt.string() + ": " + *why;
  return check_checkpoint_contents(ckpt);
}

TrainerState restore_checkpoint(const stdfs::path& ckpt, model::Model& m, optim::AdamW& opt,
                                const std::vector<at::Tensor>& params, data::DataLoader& loader) {
  if (auto why = check_checkpoint_contents(ckpt)) user_error(*why);
  const config::TrainConfig saved = read_checkpoint_config(ckpt);
  const ParsedTrainerState pts = parse_trainer_state(ckpt / kTrainerStateFile, saved.gradient_accumulation_steps);
  // The loader position against the data, and the optimizer state against the model's LoRA
  // parameters; each validates before it changes anything, the loader is put back if the
  // optimizer refuses.
  const data::LoaderState before = loader.state();
  try {
    loader.restore(pts.loader);
  } catch (const UserError& e) { user_error((ckpt / kTrainerStateFile).string(), ": ", e.what()); }
  optim::OptimizerState os;
  {
    io::SafetensorsFile of(ckpt / kOptimizerTensorsFile);
    for (const auto& t : of.tensors()) os.tensors[t.name] = of.tensor(t.name).clone();
  }
  os.json = fs::read_file(ckpt / kOptimizerStateFile);
  try {
    opt.load_state_dict(os);
  } catch (const UserError& e) {
    loader.restore(before);
    user_error((ckpt / kOptimizerTensorsFile).string(), ": ", e.what(),
               " (not the model this checkpoint was saved from?)");
  }
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
  return pts.ts;
}

TrainerState read_trainer_state(const stdfs::path& ckpt) {
  const config::TrainConfig saved = read_checkpoint_config(ckpt);
  return parse_trainer_state(ckpt / kTrainerStateFile, saved.gradient_accumulation_steps).ts;
}

config::TrainConfig read_checkpoint_config(const stdfs::path& ckpt) {
  const stdfs::path f = config_file(ckpt);
  return config::parse_config(fs::read_file(f), f.string());
}

}  // namespace qlora::run
