// qlora preprocess CONFIG [--set key=value ...] [--show N] [--ids] [--json]
// Tokenizes, masks and packs the config's datasets exactly as `qlora train` does (same config
// loading, tokenizer and data pipeline; no model weights, nothing written) and reports what
// training will learn from: counts, supervised tokens, rows, packing efficiency, sample lengths,
// and the first samples of the training order with their supervised tokens marked.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "trainer/cli/commands.h"
#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/data/report.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/tokenizer/chat_template.h"
#include "trainer/train/preflight.h"

namespace qlora::cli {

namespace {

using ojson = nlohmann::ordered_json;

using train::located;

// The datasets of a training run, as `qlora train` prepares them (through dataset_prepared_path
// when the config sets it). The one place this command makes them.
data::Datasets prepare_datasets(const config::TrainConfig& cfg, const tok::Tokenizer& tk, const std::string& tok_path,
                                const std::function<void(const std::string&)>& log) {
  return train::prepare_run_data(cfg, tk, tok_path, log);
}

std::string percent(double share) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", 100.0 * share);
  return b;
}

// A text histogram of sample lengths: up to 10 equal-width bins from the shortest to the longest.
void print_histogram(const std::vector<int32_t>& lengths, int64_t sequence_len) {
  if (lengths.empty()) return;
  const auto [lo_it, hi_it] = std::minmax_element(lengths.begin(), lengths.end());
  const int64_t lo = *lo_it, hi = *hi_it;
  const int64_t width = std::max<int64_t>(1, (hi - lo + 10) / 10);
  const int64_t bins = (hi - lo) / width + 1;
  std::vector<int64_t> count(static_cast<size_t>(bins), 0);
  for (int32_t l : lengths) ++count[static_cast<size_t>((l - lo) / width)];
  const int64_t most = *std::max_element(count.begin(), count.end());
  for (int64_t b = 0; b < bins; ++b) {
    const int64_t from = lo + b * width, to = from + width - 1;
    const auto bar = static_cast<size_t>((count[b] * 40 + most - 1) / most);
    std::printf("    %7lld-%-7lld %-40s %lld%s\n", static_cast<long long>(from), static_cast<long long>(to),
                std::string(count[b] ? bar : 0, '#').c_str(), static_cast<long long>(count[b]),
                to > sequence_len ? (from > sequence_len ? "  (truncated)" : "  (partly truncated)") : "");
  }
}

void print_part(const char* name, const data::PartStats& p, const std::vector<int32_t>& lengths,
                const config::DataSpec& spec) {
  std::printf("%s: %lld samples in %lld rows, %lld tokens, %lld supervised (%s), %lld of them EOS\n", name,
              static_cast<long long>(p.samples), static_cast<long long>(p.rows), static_cast<long long>(p.tokens),
              static_cast<long long>(p.supervised_tokens), percent(p.supervised_share).c_str(),
              static_cast<long long>(p.eos_supervised));
  std::printf("  packing efficiency %s (tokens / rows x sequence_len %lld)", percent(p.packing_efficiency).c_str(),
              static_cast<long long>(spec.sequence_len));
  if (spec.sample_packing)
    std::printf(", sample_packing: true\n");
  else
    std::printf("; with sample_packing: %lld rows, %s\n", static_cast<long long>(p.rows_packed),
                percent(p.packing_efficiency_packed).c_str());
  const data::LengthStats& l = p.lengths;
  std::printf(
      "  sample length in tokens (before truncation): min %lld, p50 %lld, p90 %lld, p99 %lld, max %lld, "
      "mean %.1f\n",
      static_cast<long long>(l.min), static_cast<long long>(l.p50), static_cast<long long>(l.p90),
      static_cast<long long>(l.p99), static_cast<long long>(l.max), l.mean);
  print_histogram(lengths, spec.sequence_len);
}

// The first `n` samples of the training order: the rows of the first epoch in the order the
// loader serves them (same seed), each collated as the loss sees it.
std::vector<std::pair<int64_t, std::vector<data::TokenRun>>> first_samples(
    const std::shared_ptr<const data::PackedData>& train, uint64_t seed, int64_t n) {
  std::vector<std::pair<int64_t, std::vector<data::TokenRun>>> out;
  if (n <= 0 || train->num_rows() == 0) return out;
  data::DataLoader loader(train, /*micro_batch_size=*/1, seed, /*shuffle=*/true);
  for (int64_t r = 0; r < train->num_rows() && static_cast<int64_t>(out.size()) < n; ++r) {
    const data::Batch b = loader.next();
    for (auto& s : data::batch_samples(b)) {
      if (static_cast<int64_t>(out.size()) == n) break;
      out.emplace_back(r, std::move(s));
    }
  }
  return out;
}

}  // namespace

int run_preprocess(const PreprocessArgs& a) {
  if (a.show < 0) user_error("--show: expected a non-negative count, got ", a.show);
  const config::TrainConfig cfg = config::load_config(a.config, a.set);
  const std::string tok_path = cfg.tokenizer.empty() ? cfg.base_model : cfg.tokenizer;
  const std::unique_ptr<tok::Tokenizer> tk = model::load_base_tokenizer(tok_path);
  if (!cfg.data.chat_template.empty())
    located(cfg, [&] { return tok::ChatTemplate::resolve(cfg.data.chat_template, *tk); });
  std::vector<std::string> notes;
  const data::Datasets d = located(cfg, [&] {
    return prepare_datasets(cfg, *tk, tok_path, [&](const std::string& l) {
      if (!l.starts_with("data: ")) notes.push_back(l);  // the summary line: this command says more
    });
  });
  const data::DataStats& st = d.stats;
  const tok::SpecialTokens& sp = tk->special();
  const data::PartStats train = data::part_stats(*d.train, st.train_lengths, sp.eos_id);
  const bool has_val = d.val->num_samples() > 0;
  const data::PartStats val = data::part_stats(*d.val, st.val_lengths, sp.eos_id);
  const auto shown = first_samples(d.train, cfg.seed, a.show);

  if (a.json) {
    ojson j = {{"config", a.config},
               {"tokenizer", tok_path},
               {"sequence_len", cfg.data.sequence_len},
               {"sample_packing", cfg.data.sample_packing},
               {"records", st.records},
               {"skipped_invalid", st.skipped_invalid},
               {"truncated", st.truncated},
               {"dropped_no_supervised", st.dropped_no_targets},
               {"dropped_truncated", st.dropped_truncated},
               {"no_supervised_eos", st.no_eos},
               {"eos_id", sp.eos_id ? ojson(*sp.eos_id) : ojson(nullptr)},
               {"pad_id", d.train->pad_id},
               {"train", data::to_json(train)},
               {"validation", has_val ? data::to_json(val) : ojson(nullptr)}};
    if (a.show > 0) {
      ojson samples = ojson::array();
      for (const auto& [row, runs] : shown) {
        ojson rs = ojson::array();
        for (const data::TokenRun& r : runs)
          rs.push_back({{"supervised", r.supervised}, {"text", tk->decode(r.ids, false)}, {"ids", r.ids}});
        samples.push_back({{"row", row + 1}, {"runs", rs}});
      }
      j["samples"] = samples;
    }
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }

  for (const std::string& n : notes) std::fprintf(stderr, "qlora: %s\n", n.c_str());
  std::printf("tokenizer: %s (EOS %s, pad id %d%s)\n", tok_path.c_str(),
              sp.eos_id ? ("\"" + sp.eos_token + "\" id " + std::to_string(*sp.eos_id)).c_str() : "none",
              static_cast<int>(d.train->pad_id), sp.eos_id && *sp.eos_id == d.train->pad_id ? ", the EOS" : "");
  std::printf(
      "records: %lld read, %lld invalid skipped, %lld truncated to sequence_len %lld, %lld dropped without a "
      "supervised token (%lld of them by truncation), %lld without a supervised EOS\n",
      static_cast<long long>(st.records), static_cast<long long>(st.skipped_invalid),
      static_cast<long long>(st.truncated), static_cast<long long>(cfg.data.sequence_len),
      static_cast<long long>(st.dropped_no_targets), static_cast<long long>(st.dropped_truncated),
      static_cast<long long>(st.no_eos));
  print_part("train", train, st.train_lengths, cfg.data);
  if (has_val) print_part("validation", val, st.val_lengths, cfg.data);

  if (!shown.empty()) {
    const char* no_color = std::getenv("NO_COLOR");
    const bool color = ::isatty(STDOUT_FILENO) && !(no_color && *no_color);
    const std::string open = color ? "\033[1;32m" : "[[", close = color ? "\033[0m" : "]]";
    std::printf("\nsupervised tokens are %s; the training order's first %zu samples:\n",
                color ? "in green" : "between [[ and ]]", shown.size());
    for (size_t i = 0; i < shown.size(); ++i) {
      const auto& [row, runs] = shown[i];
      int64_t n = 0, sup = 0;
      for (const data::TokenRun& r : runs) {
        n += static_cast<int64_t>(r.ids.size());
        sup += r.supervised ? static_cast<int64_t>(r.ids.size()) : 0;
      }
      std::printf("\n--- sample %zu (in row %lld of the first epoch, %lld tokens, %lld supervised) ---\n", i + 1,
                  static_cast<long long>(row + 1), static_cast<long long>(n), static_cast<long long>(sup));
      std::string text;
      for (const data::TokenRun& r : runs) {
        const std::string t = tk->decode(r.ids, false);
        text += r.supervised ? open + t + close : t;
      }
      std::printf("%s\n", text.c_str());
      if (a.ids) {
        std::string ids = "ids:";
        for (const data::TokenRun& r : runs)
          for (int32_t id : r.ids) ids += r.supervised ? " " + std::to_string(id) : " (" + std::to_string(id) + ")";
        std::printf("%s\n", ids.c_str());
      }
    }
  }
  return 0;
}

}  // namespace qlora::cli
