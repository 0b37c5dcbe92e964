// Shared fixtures of the model suite: tiny random checkpoints generated once per process by
// transformers (tests/python/model_ref.py), and helpers to talk to the reference script.
#pragma once
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/common/harness.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/model.h"

namespace stdfs = std::filesystem;

namespace qlora::test {

// tests/python/model_ref.py kept running ("serve") for the whole test process: importing torch
// and transformers costs ~10 s per Python start on the shared CI machines; one start serves
// every request. Requests go as JSON argument lists on its stdin; replies come back on its fd 3.
class ModelRef {
 public:
  static ModelRef& get() {
    static ModelRef r;
    return r;
  }
  // Runs one model_ref.py command; ADD_FAILURE with its output when it fails.
  ProcResult call(const std::vector<std::string>& args) {
    std::lock_guard<std::mutex> lock(mu_);
    ProcResult res;
    std::string line = nlohmann::json(args).dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), to_) != line.size() || std::fflush(to_) != 0) {
      ADD_FAILURE() << "model_ref.py server is gone";
      return res;
    }
    std::string reply;
    int c;
    while ((c = std::fgetc(from_)) != EOF && c != '\n') reply.push_back(static_cast<char>(c));
    if (reply.empty()) {
      ADD_FAILURE() << "model_ref.py server died";
      return res;
    }
    auto j = nlohmann::json::parse(reply);
    res.code = j["code"].get<int>();
    res.output = j["output"].get<std::string>();
    if (res.code != 0) {
      std::string cmd;
      for (const auto& a : args) cmd += " " + a;
      ADD_FAILURE() << "model_ref.py" << cmd << " failed:\n" << res.output;
    }
    return res;
  }
  ~ModelRef() {
    if (to_) std::fclose(to_);  // EOF on stdin: the server exits
    if (from_) std::fclose(from_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }

 private:
  ModelRef() {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe failed");
    const std::string script = (source_dir() / "tests/python/model_ref.py").string();
    // Reference libraries must never reach for a model hub (set before fork: the child only execs).
    ::setenv("HF_HUB_OFFLINE", "1", 1);
    ::setenv("TRANSFORMERS_OFFLINE", "1", 1);
    ::setenv("TOKENIZERS_PARALLELISM", "false", 1);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 3);
      for (int fd : {in[0], in[1], out[0], out[1]})
        if (fd != 0 && fd != 3) ::close(fd);
      ::execl(QLORA_TEST_PYTHON, QLORA_TEST_PYTHON, script.c_str(), "serve", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    ::signal(SIGPIPE, SIG_IGN);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
  }
  std::mutex mu_;
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

inline ProcResult model_ref(const std::vector<std::string>& args) { return ModelRef::get().call(args); }

// DIR with one tiny model per family (see model_ref.py "make").
inline const stdfs::path& model_fixtures() {
  static const stdfs::path dir = [] {
    stdfs::path d = temp_dir("model_fixtures");
    ProcResult r = model_ref({"make", d.string()});
    if (r.code != 0) throw std::runtime_error("model_ref.py make failed:\n" + r.output);
    return d;
  }();
  return dir;
}

// A bitsandbytes 4-bit checkpoint of the llama fixture, made by transformers + bitsandbytes.
inline const stdfs::path& bnb_fixture() {
  static const stdfs::path dir = [] {
    stdfs::path d = model_fixtures() / "llama_bnb";
    ProcResult r = model_ref({"bnb", (model_fixtures() / "llama").string(), d.string()});
    if (r.code != 0) throw std::runtime_error("model_ref.py bnb failed:\n" + r.output);
    return d;
  }();
  return dir;
}

// A fixture model in fp32 with LoRA `lc` (the base in NF4 when `quantize`), seeded like the trainer.
inline model::Model load_fixture(const std::string& family, bool quantize, const config::LoraConfig& lc,
                                 uint64_t seed = 42) {
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  o.quantize = quantize;
  o.lora = lc;
  o.seed = seed;
  return model::load_model(model_fixtures() / family, o);
}

inline const std::vector<std::string>& families() {
  static const std::vector<std::string> f = {"llama",  "mistral", "qwen2",   "qwen3",     "phi3",
                                             "gemma2", "gemma3",  "mixtral", "qwen2_moe", "qwen3_moe"};
  return f;
}

// A batch: row 0 one sequence of T tokens; row 1 two packed samples (T/2 - 1 and the rest) with
// positions restarting at 0 and the first label of each sample and a few others masked.
struct Batch {
  at::Tensor input_ids, position_ids, segment_ids, labels;
};

inline Batch make_batch(int64_t vocab, int64_t T = 12, uint64_t seed = 7) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  Batch b;
  b.input_ids = at::randint(vocab, {2, T}, g, at::kLong);
  b.segment_ids = at::zeros({2, T}, at::kLong);
  b.position_ids = at::arange(T, at::kLong).repeat({2, 1});
  const int64_t cut = T / 2 - 1;
  b.segment_ids[1].slice(0, cut).fill_(1);
  b.position_ids[1].slice(0, cut).copy_(at::arange(T - cut, at::kLong));
  b.labels = b.input_ids.clone();
  b.labels[0][3] = -100;
  b.labels[1][0] = -100;
  b.labels[1][cut] = -100;
  b.labels[1][cut + 2] = -100;
  return b;
}

inline void write_batch(const Batch& b, const stdfs::path& p) {
  io::SafetensorsWriter w;
  w.add("input_ids", b.input_ids);
  w.add("position_ids", b.position_ids);
  w.add("segment_ids", b.segment_ids);
  w.add("labels", b.labels);
  w.write(p);
}

inline void write_tensors(const std::map<std::string, at::Tensor>& ts, const stdfs::path& p) {
  io::SafetensorsWriter w;
  for (const auto& [k, v] : ts) w.add(k, v.detach().contiguous().cpu());
  w.write(p);
}

inline std::map<std::string, at::Tensor> read_tensors(const stdfs::path& p) {
  io::SafetensorsFile f(p);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = f.tensor(t.name).clone();
  return out;
}

// max |a - b| / max |b|
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.detach().to(at::kDouble).cpu(), y = b.detach().to(at::kDouble).cpu();
  EXPECT_EQ(x.sizes(), y.sizes());
  if (x.sizes() != y.sizes()) return 1e30;
  const double den = y.abs().max().item<double>();
  const double num = (x - y).abs().max().item<double>();
  return den == 0 ? num : num / den;
}

}  // namespace qlora::test
