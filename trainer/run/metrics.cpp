#include "trainer/run/metrics.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/run/tensorboard.h"

namespace qlora::run {

MetricsLog::MetricsLog(const std::filesystem::path& path, bool append) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) user_error(path.string(), ": cannot open for writing");
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::attach_tensorboard(std::unique_ptr<TensorBoardWriter> tb) { tb_ = std::move(tb); }

std::string tensorboard_tag(const std::string& key) {
  if (key.starts_with("eval_")) return "eval/" + key.substr(5);
  if (key == "lr") return "train/learning_rate";
  if (key == "tokens_per_s") return "train/tokens_per_second";
  if (key == "elapsed_s") return "train/elapsed_seconds";
  return "train/" + key;
}

namespace {
// The line, and with TensorBoard on each of its numbers (but the step) as a scalar at its step;
// a non-finite one, null in the line, is left out there too.
void put(std::FILE* f, TensorBoardWriter* tb, const nlohmann::json& j) {
  std::string s = j.dump() + "\n";
  std::fwrite(s.data(), 1, s.size(), f);
  std::fflush(f);
  if (!tb || j.contains("event")) return;
  const int64_t step = j.value("step", int64_t{0});
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "step" && it.value().is_number() && std::isfinite(it.value().get<double>()))
      tb->add_scalar(tensorboard_tag(it.key()), step, it.value().get<double>());  // NaN: null in the line
  tb->flush();
}
}  // namespace

void MetricsLog::log_step(const StepMetrics& m) {
  nlohmann::json j = {{"step", m.step},
                      {"epoch", m.epoch},
                      {"loss", m.loss},
                      {"lr", m.lr},
                      {"grad_norm", m.grad_norm},
                      {"tokens", m.tokens},
                      {"tokens_per_s", m.tokens_per_s},
                      {"elapsed_s", m.elapsed_s},
                      {"memory_bytes", m.memory_bytes},
                      {"skipped_steps", m.skipped_steps}};
  if (m.aux_loss) j["aux_loss"] = *m.aux_loss;
  put(f_, tb_.get(), j);
}

void MetricsLog::log_eval(const EvalMetrics& m) {
  nlohmann::json j = {
      {"step", m.step}, {"eval_loss", m.loss}, {"eval_perplexity", m.perplexity}, {"eval_tokens", m.tokens}};
  if (m.accuracy) j["eval_accuracy"] = *m.accuracy;
  put(f_, tb_.get(), j);
}

void MetricsLog::log_event(const std::string& event, const std::string& json_fields) {
  nlohmann::json j = json_fields.empty() ? nlohmann::json::object() : nlohmann::json::parse(json_fields);
  j["event"] = event;
  put(f_, tb_.get(), j);
}

MetricsHistory truncate_metrics(const std::filesystem::path& path, int64_t step) {
  MetricsHistory h;
  if (!std::filesystem::exists(path)) return h;
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
      h.steps.push_back(m);
    } else if (j.contains("eval_loss") && j["eval_loss"].is_number()) {
      EvalMetrics e;
      e.step = s;
      e.loss = j["eval_loss"].get<double>();
      h.evals.push_back(e);
    }
  }
  fs::write_file_atomic(path, kept);
  return h;
}

}  // namespace qlora::run
