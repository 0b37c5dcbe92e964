// The prepared-data cache (dataset_prepared_path): the data stage of a run that prepares the
// data and writes the cache entry, of the next run that loads it, and of a run without the cache,
// on a large generated chat dataset (not committed: written at bench time). Each run is its own
// process, so that its peak RSS is its own; the data stage is what `qlora train` does before the
// model: load the tokenizer, hash its files and the data (the key), then prepare or load.
// Results: bench/results/prepared_cache.json.
//
//   cmake --build build --target bench_prepared_cache && build/bench/bench_prepared_cache [RECORDS]
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "trainer/common/fs.h"
#include "trainer/data/dataset.h"
#include "trainer/data/prepared.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/tokenizer/tokenizer.h"

namespace stdfs = std::filesystem;
using json = nlohmann::json;
using namespace qlora;

namespace {

const stdfs::path kTokenizer = stdfs::path(QLORA_SOURCE_DIR) / "data/demo/model";  // SentencePiece

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Two-turn conversations of ordinary words: a question of 8-40 words, an answer of 10-80.
void write_chat(const stdfs::path& file, int64_t records) {
  static const char* words[] = {
      "the",    "model",  "learns", "from",    "data",   "which", "is",     "tokenized", "once",   "and",
      "packed", "into",   "rows",   "of",      "tokens", "a",     "second", "run",       "loads",  "them",
      "again",  "date",   "June",   "April",   "number", "seven", "twelve", "convert",   "give",   "words",
      "short",  "answer", "why",    "how",     "when",   "where", "table",  "river",     "market", "window",
      "green",  "quick",  "slowly", "between", "after",  "under", "before", "system",    "memory", "cache"};
  const uint64_t n_words = sizeof words / sizeof words[0];
  uint64_t s = 12345;
  std::ofstream o(file);
  auto text = [&](int lo, int hi) {
    const int n = lo + static_cast<int>(splitmix64(s) % static_cast<uint64_t>(hi - lo + 1));
    std::string t;
    for (int i = 0; i < n; ++i) {
      if (i) t += ' ';
      t += words[splitmix64(s) % n_words];
    }
    return t;
  };
  for (int64_t r = 0; r < records; ++r) {
    const json rec = {{"messages",
                       {{{"role", "user"}, {"content", text(8, 40) + "?"}},
                        {{"role", "assistant"}, {"content", text(10, 80) + "."}}}}};
    o << rec.dump() << "\n";
  }
}

config::DataSpec spec_for(const stdfs::path& data) {
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.path = data.string();
  ds.type = "chat";
  spec.datasets.push_back(ds);
  spec.chat_template = "chatml";
  spec.sequence_len = 512;
  spec.sample_packing = true;
  spec.val_set_size = 0.01;
  return spec;
}

// One run's data stage, in this process: prints one JSON line.
int child(const stdfs::path& data, const std::string& cache) {
  const uint64_t base_rss = fs::proc_status_bytes("VmRSS:");
  const auto t0 = std::chrono::steady_clock::now();
  auto tk = tok::load_tokenizer(kTokenizer);
  std::vector<std::string> log;
  const auto keep = [&](const std::string& l) { log.push_back(l); };
  data::Datasets d;
  if (cache.empty()) {
    d = data::build_datasets(spec_for(data), *tk, keep);
  } else {
    d = data::prepare_datasets(spec_for(data), *tk, model::base_tokenizer_digest(kTokenizer), cache, keep,
                               [](const std::string& w) { std::fprintf(stderr, "qlora: warning: %s\n", w.c_str()); });
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s\n", json({{"data_stage_s", s},
                            {"rss_before_bytes", base_rss},
                            {"peak_rss_bytes", fs::peak_rss_bytes()},
                            {"train_tokens", d.stats.train_tokens},
                            {"train_rows", d.train->num_rows()},
                            {"fingerprint", d.train->fingerprint},
                            {"log", log}})
                          .dump()
                          .c_str());
  return 0;
}

json run_child(const std::string& self, const stdfs::path& data, const std::string& cache) {
  const std::string cmd = self + " --child " + data.string() + " '" + cache + "'";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (::pclose(p) != 0) throw std::runtime_error("failed: " + cmd + "\n" + out);
  const size_t e = out.find_last_not_of('\n'), b = out.rfind('\n', e);
  return json::parse(out.substr(b == std::string::npos ? 0 : b + 1));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--child") return child(argv[2], argv[3]);
  const int64_t records = argc > 1 ? std::stoll(argv[1]) : 300000;
  const stdfs::path dir = stdfs::temp_directory_path() / ("qlora_bench_prepared_" + std::to_string(::getpid()));
  stdfs::create_directories(dir);
  const stdfs::path data = dir / "chat.jsonl";
  write_chat(data, records);
  const std::string cache = (dir / "prepared").string();
  const std::string self = stdfs::canonical("/proc/self/exe").string();

  json runs = json::object();
  runs["without_cache"] = run_child(self, data, "");
  runs["first_run_builds_and_writes"] = run_child(self, data, cache);
  runs["second_run_loads"] = run_child(self, data, cache);
  runs["third_run_loads"] = run_child(self, data, cache);
  uint64_t entry_bytes = 0;
  for (const auto& e : stdfs::directory_iterator(cache)) entry_bytes += stdfs::file_size(e.path());
  const auto& first = runs["first_run_builds_and_writes"];
  const auto& second = runs["second_run_loads"];
  bool same = true;
  for (const auto& [name, r] : runs.items()) same = same && r["fingerprint"] == first["fingerprint"];
  const double saving = first["data_stage_s"].get<double>() / second["data_stage_s"].get<double>();
  json doc = {{"benchmark", "prepared-data cache (dataset_prepared_path): data stage with and without the cache entry"},
              {"command", "cmake --build build --target bench_prepared_cache && build/bench/bench_prepared_cache " +
                              std::to_string(records)},
              {"machine", {{"cpu", cpu_model()}, {"threads", omp_get_max_threads()}}},
              {"data",
               {{"records", records},
                {"kind", "chat, two turns of generated words (user 8-40, assistant 10-80 words)"},
                {"tokenizer", "data/demo/model (SentencePiece)"},
                {"chat_template", "chatml"},
                {"sequence_len", 512},
                {"sample_packing", true},
                {"val_set_size", 0.01},
                {"jsonl_bytes", stdfs::file_size(data)},
                {"cache_entry_bytes", entry_bytes}}},
              {"note",
               "each run is a fresh process; data_stage_s: tokenizer load, key (SHA-256 of the tokenizer files and the "
               "data file), then build (and write) or load; peak_rss_bytes: VmHWM of that process"},
              {"same_fingerprint_every_run", same},
              {"first_over_second_data_stage", saving},
              {"runs", runs}};
  for (auto& [name, r] : doc["runs"].items()) r.erase("log");
  std::cout << doc.dump(2) << std::endl;
  stdfs::create_directories(stdfs::path(QLORA_SOURCE_DIR) / "bench/results");
  std::ofstream(stdfs::path(QLORA_SOURCE_DIR) / "bench/results/prepared_cache.json") << doc.dump(2) << "\n";
  stdfs::remove_all(dir);
  return same ? 0 : 1;
}
