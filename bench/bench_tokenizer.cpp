// Tokenization throughput, ours vs Hugging Face `tokenizers`, side by side in one run.
//
// bench_tokenizer_hf.py trains the test-style tokenizers (SentencePiece tokenizer.model, its
// tokenizer.json conversion, GPT-2, Llama 3, Qwen2 styles) and a ~4 MB multilingual corpus of
// dataset-like samples, then times HF's encode_batch on one thread and on all threads and dumps
// HF's ids. Here each of our tokenizers first proves it produces exactly HF's ids on the whole
// corpus, then is timed on one thread (a fresh tokenizer: cold cache; then warm) and with
// encode_batch on all OpenMP threads. Results: bench/results/tokenizer.json.
//
//   cmake --build build --target bench_tokenizer && build/bench/bench_tokenizer
#include <benchmark/benchmark.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "trainer/tokenizer/tokenizer.h"

namespace stdfs = std::filesystem;
using json = nlohmann::json;
namespace tok = qlora::tok;

namespace {

const char* kFixtures[] = {"sp_model", "sp_json", "gpt2", "llama3", "qwen2"};

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

std::string last_line(const std::string& s) {
  size_t e = s.find_last_not_of('\n');
  size_t b = s.rfind('\n', e);
  return s.substr(b == std::string::npos ? 0 : b + 1, e - (b == std::string::npos ? 0 : b + 1) + 1);
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double cpu_seconds() {  // CPU time of the whole process: robust to other load on a shared machine
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

struct Ours {
  double cold_s = 0, cold_cpu_s = 0, warm_s = 1e30, warm_cpu_s = 1e30, batch_s = 1e30;
  int64_t tokens = 0;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const stdfs::path src = QLORA_SOURCE_DIR;
  const std::string py = QLORA_BENCH_PYTHON;
  // QLORA_BENCH_WORK=<dir> keeps fixtures and HF timings in <dir> and reuses them (development).
  const char* keep = std::getenv("QLORA_BENCH_WORK");
  const stdfs::path work =
      keep ? stdfs::path(keep) : stdfs::temp_directory_path() / ("qlora_bench_tokenizer." + std::to_string(::getpid()));
  stdfs::create_directories(work);
  const std::string script = (src / "bench" / "bench_tokenizer_hf.py").string();
  const std::string env = "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ";
  json hf1, hfn;
  if (keep && stdfs::exists(work / "hf1.json")) {
    hf1 = json::parse(std::ifstream(work / "hf1.json"));
    hfn = json::parse(std::ifstream(work / "hfn.json"));
  } else {
    if (!stdfs::exists(work / "corpus.json"))
      std::cerr << sh(env + py + " " + script + " make " + work.string() + " 2>&1 | tail -1");
    hf1 = json::parse(last_line(sh(env + "RAYON_NUM_THREADS=1 " + py + " " + script + " time " + work.string())));
    hfn = json::parse(last_line(sh(env + py + " " + script + " time " + work.string())));
    std::ofstream(work / "hf1.json") << hf1.dump();
    std::ofstream(work / "hfn.json") << hfn.dump();
  }

  std::vector<std::string> samples;
  {
    std::ifstream f(work / "corpus.json");
    samples = json::parse(f).get<std::vector<std::string>>();
  }
  size_t bytes = 0;
  for (const auto& s : samples) bytes += s.size();

  std::map<std::string, Ours> ours;
  std::map<std::string, bool> same_ids;
  std::map<std::string, std::unique_ptr<tok::Tokenizer>> toks;
  for (const char* name : kFixtures) {
    Ours& o = ours[name];
    {  // cold: a fresh tokenizer, one pass
      auto t = tok::load_tokenizer(work / name);
      auto t0 = std::chrono::steady_clock::now();
      double c0 = cpu_seconds();
      for (const auto& s : samples) o.tokens += int64_t(t->encode(s, true).size());
      o.cold_s = seconds_since(t0);
      o.cold_cpu_s = cpu_seconds() - c0;
    }
    auto& t = toks[name] = tok::load_tokenizer(work / name);
    // Exactly HF's ids on the whole corpus before any timing counts.
    {
      std::vector<std::vector<int32_t>> all = t->encode_batch(samples, true);
      std::string mine;
      for (const auto& ids : all) mine += json(ids).dump() + "\n";
      std::ifstream f(work / (std::string(name) + ".hf_ids.txt"), std::ios::binary);
      std::string theirs((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      same_ids[name] = mine == theirs;
      if (!same_ids[name]) std::cerr << name << ": ids DIFFER from HF's\n";
    }
    benchmark::RegisterBenchmark((std::string(name) + "/ours_1thread").c_str(),
                                 [&o, &t, &samples](benchmark::State& st) {
                                   for (auto _ : st) {
                                     auto t0 = std::chrono::steady_clock::now();
                                     double c0 = cpu_seconds();
                                     int64_t n = 0;
                                     for (const auto& s : samples) n += int64_t(t->encode(s, true).size());
                                     o.warm_s = std::min(o.warm_s, seconds_since(t0));
                                     o.warm_cpu_s = std::min(o.warm_cpu_s, cpu_seconds() - c0);
                                     benchmark::DoNotOptimize(n);
                                     st.counters["tokens/s"] =
                                         benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
                                   }
                                 })
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string(name) + "/ours_batch").c_str(),
                                 [&o, &t, &samples](benchmark::State& st) {
                                   for (auto _ : st) {
                                     auto t0 = std::chrono::steady_clock::now();
                                     auto r = t->encode_batch(samples, true);
                                     o.batch_s = std::min(o.batch_s, seconds_since(t0));
                                     benchmark::DoNotOptimize(r.data());
                                   }
                                 })
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RunSpecifiedBenchmarks();

  json res;
  res["benchmark"] =
      "tokenization throughput: qlora::tok vs Hugging Face tokenizers (encode_batch of the backend "
      "tokenizer transformers' AutoTokenizer runs), add_special_tokens=true";
  res["command"] = "cmake --build build --target bench_tokenizer && build/bench/bench_tokenizer";
  res["machine"] = {{"cpu", cpu_model()},
                    {"cores", std::thread::hardware_concurrency()},
                    {"omp_threads", omp_get_max_threads()},
                    {"note",
                     "shared build machine (other builds running): wall-clock numbers are noisy, the "
                     "*_per_cpu_s ones (process CPU time, single-thread runs) are the steadier comparison"}};
  res["versions"] = {{"tokenizers", hf1["tokenizers"]}, {"transformers", hf1["transformers"]}};
  res["corpus"] = {{"samples", samples.size()},
                   {"bytes", bytes},
                   {"what",
                    "tests/python/tokcorpus.py document(seed=2024): 10-line samples mixing English, "
                    "accented Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai, CJK, kana, Hangul, "
                    "numbers, code, emoji"}};
  for (const char* name : kFixtures) {
    const Ours& o = ours[name];
    double hf1_tps = hf1["fixtures"][name]["tokens_per_s"], hfn_tps = hfn["fixtures"][name]["tokens_per_s"];
    double hf1_cpu_tps = hf1["fixtures"][name]["tokens_per_cpu_s"];
    double tok = double(o.tokens);
    res["fixtures"][name] = {
        {"tokens", o.tokens},
        {"same_ids_as_hf", same_ids[name]},
        {"ours_1thread_cold_tokens_per_s", tok / o.cold_s},
        {"ours_1thread_warm_tokens_per_s", tok / o.warm_s},
        {"hf_1thread_tokens_per_s", hf1_tps},
        {"speedup_1thread_warm", tok / o.warm_s / hf1_tps},
        {"speedup_1thread_cold", tok / o.cold_s / hf1_tps},
        {"ours_1thread_cold_tokens_per_cpu_s", tok / o.cold_cpu_s},
        {"ours_1thread_warm_tokens_per_cpu_s", tok / o.warm_cpu_s},
        {"hf_1thread_tokens_per_cpu_s", hf1_cpu_tps},
        {"speedup_1thread_cold_cpu", tok / o.cold_cpu_s / hf1_cpu_tps},
        {"ours_batch_tokens_per_s", tok / o.batch_s},
        {"hf_batch_tokens_per_s", hfn_tps},
        {"speedup_batch", tok / o.batch_s / hfn_tps},
        {"ours_1thread_warm_mb_per_s", double(bytes) / o.warm_s / 1e6},
    };
  }
  stdfs::create_directories(src / "bench" / "results");
  std::ofstream(src / "bench" / "results" / "tokenizer.json") << res.dump(2) << "\n";
  std::cout << res.dump(2) << "\n";
  if (!keep) stdfs::remove_all(work);
  bool all_same = true;
  for (auto& [k, v] : same_ids) all_same &= v;
  return all_same ? 0 : 1;
}
