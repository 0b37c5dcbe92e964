// Dataset preparation throughput (read, render, tokenize, mask, pack), ours vs transformers.
//
// bench_data_hf.py trains a Llama 3 style tokenizer, writes synthetic chat (system + 3 turns) and
// alpaca datasets and times transformers tokenizing and masking them on one thread (chat:
// apply_chat_template with return_assistant_tokens_mask on a {% generation %}-tagged Llama 3.1
// template; alpaca: tokenizer with offsets). Here build_datasets prepares the same files with the
// published (untagged) Llama 3.1 template, on one thread and on all OpenMP threads.
// Results: bench/results/data.json.
//
//   cmake --build build --target bench_data && build/bench/bench_data
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "tests/tokenizer/published_templates.h"
#include "trainer/data/dataset.h"
#include "trainer/tokenizer/tokenizer.h"

namespace stdfs = std::filesystem;
using json = nlohmann::json;
using namespace qlora;

namespace {

std::string sh(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen " + cmd);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (::pclose(p) != 0) throw std::runtime_error("failed: " + cmd + "\n" + out);
  return out;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

double time_build(const config::DataSpec& spec, const tok::Tokenizer& tk, int threads, int64_t* tokens) {
  int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto t0 = std::chrono::steady_clock::now();
  data::Datasets d = data::build_datasets(spec, tk);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  omp_set_num_threads(saved);
  *tokens = d.stats.train_tokens;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  stdfs::path dir = stdfs::temp_directory_path() / ("qlora_bench_data_" + std::to_string(::getpid()));
  stdfs::create_directories(dir);
  std::ofstream(dir / "template.jinja") << test::templates::kLlama31;
  std::ofstream(dir / "tagged.jinja") << test::templates::tagged::kLlama31;
  std::string out = sh(std::string("HF_HUB_OFFLINE=1 ") + QLORA_BENCH_PYTHON + " " + QLORA_SOURCE_DIR +
                       "/bench/bench_data_hf.py " + dir.string());
  size_t e = out.find_last_not_of('\n'), b = out.rfind('\n', e);
  json hf = json::parse(out.substr(b == std::string::npos ? 0 : b + 1, e + 1 - (b == std::string::npos ? 0 : b + 1)));
  auto tk = tok::load_tokenizer(hf["tokenizer"].get<std::string>());
  int threads = omp_get_max_threads();

  json results = json::object();
  for (const char* kind : {"chat", "alpaca"}) {
    config::DataSpec spec;
    config::DatasetSpec ds;
    ds.path = hf[kind]["path"];
    ds.type = kind;
    spec.datasets.push_back(ds);
    spec.sequence_len = 1 << 20;  // no truncation: the same tokens as transformers
    spec.chat_template = test::templates::kLlama31;
    int64_t tokens = 0;
    double one = time_build(spec, *tk, 1, &tokens);
    double all = time_build(spec, *tk, threads, &tokens);
    double hf_s = hf[kind]["hf_s"];
    results[kind] = {{"records", hf[kind]["records"]},
                     {"tokens_ours", tokens},
                     {"tokens_hf", hf[kind]["tokens"]},
                     {"hf_1thread_s", hf_s},
                     {"ours_1thread_s", one},
                     {"ours_all_threads_s", all},
                     {"ours_1thread_tokens_per_s", tokens / one},
                     {"ours_all_threads_tokens_per_s", tokens / all},
                     {"hf_1thread_tokens_per_s", hf[kind]["tokens"].get<double>() / hf_s},
                     {"speedup_1thread", hf_s / one}};
  }
  json doc = {{"benchmark", "dataset preparation (read, chat template, tokenize, mask, pack) vs transformers"},
              {"command", "cmake --build build --target bench_data && build/bench/bench_data"},
              {"machine", {{"cpu", cpu_model()}, {"threads", threads}}},
              {"note",
               "ours: build_datasets (records read, rendered, tokenized whole, masked by prefix "
               "tokenization, packed); hf: tokenize+mask only, one thread"},
              {"results", results}};
  std::cout << doc.dump(2) << std::endl;
  stdfs::create_directories(stdfs::path(QLORA_SOURCE_DIR) / "bench/results");
  std::ofstream(stdfs::path(QLORA_SOURCE_DIR) / "bench/results/data.json") << doc.dump(2) << "\n";
  stdfs::remove_all(dir);
  return 0;
}
