#include "trainer/data/dataset.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <exception>
#include <optional>

#include "trainer/common/error.h"
#include "trainer/data/formats.h"
#include "trainer/data/records.h"
#include "trainer/tokenizer/chat_template.h"

namespace qlora::data {

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform integer in [0, bound) without modulo bias (rejection).
uint64_t uniform(uint64_t& state, uint64_t bound) {
  uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t x;
  do { x = splitmix64(state); } while (x >= limit);
  return x % bound;
}

int64_t count_targets(const Sample& s) {
  // The first token is never a target (nothing precedes it), see Batch in loader.h.
  int64_t n = 0;
  for (size_t i = 1; i < s.labels.size(); ++i) n += s.labels[i] != kIgnoreIndex;
  return n;
}

struct FileResult {
  std::vector<Sample> samples;
  std::vector<int32_t> lengths;  // each kept sample's tokens before truncation
  int64_t records = 0, skipped = 0, truncated = 0, dropped = 0;
  int64_t dropped_truncated = 0;  // of `dropped`: trained tokens cut away by truncation
  int64_t no_eos = 0;             // kept whole, with no supervised EOS after supervised text:
  int64_t eos_masked = 0;         //   of those, an EOS right after supervised text is masked
};

// What a format trains when train_on_inputs is false, for messages about fully masked samples.
std::string masked_cause(const std::string& type, bool train_on_inputs) {
  if (train_on_inputs) return "train_on_inputs: true trains every token after the first, and these have only one";
  if (type == "chat")
    return "train_on_inputs: false trains only the assistant turns, and the chat template marks none in them";
  const char* part = type == "alpaca" ? "output" : type == "prompt_completion" ? "completion" : "text";
  return std::string("train_on_inputs: false trains only the ") + part +
         " and the EOS after it, and these have neither (the tokenizer has no EOS)";
}

FileResult load_file(const config::DatasetSpec& ds, const config::DataSpec& spec, const tok::Tokenizer& tk,
                     const tok::ChatTemplate* chat) {
  SampleBuilder builder(ds, spec, tk, chat);
  const std::optional<int32_t> eos = tk.special().eos_id;
  FileResult res;
  read_records(Source{ds.path, ds.split, ds.ds_type}, spec.skip_invalid, &res.skipped, [&](std::vector<Record>& batch) {
    const int64_t n = static_cast<int64_t>(batch.size());
    std::vector<Sample> built(n);
    std::vector<std::string> errors(n);
    std::vector<std::exception_ptr> internal(n);
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < n; ++i) {
      try {
        built[i] = builder.build(batch[i]);
      } catch (const UserError& e) { errors[i] = e.what(); } catch (...) {
        internal[i] = std::current_exception();
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      if (internal[i]) std::rethrow_exception(internal[i]);
      ++res.records;
      if (!errors[i].empty()) {
        if (!spec.skip_invalid) throw UserError(errors[i]);
        ++res.skipped;
        continue;
      }
      Sample& s = built[i];
      const auto full = static_cast<int64_t>(s.input_ids.size());
      bool had_targets = false;
      if (full > spec.sequence_len) {
        had_targets = count_targets(s) > 0;
        s.input_ids.resize(spec.sequence_len);
        s.labels.resize(spec.sequence_len);
        ++res.truncated;
      }
      if (count_targets(s) == 0) {
        ++res.dropped;
        res.dropped_truncated += had_targets;
        continue;
      }
      // Whether the model learns to stop: an EOS is supervised, and none that directly follows
      // supervised text is masked (a template that leaves it out of the assistant turn). Index 0
      // is never a target (count_targets). Truncated samples have no end to learn.
      if (full <= spec.sequence_len && eos) {
        bool supervised_eos = false, masked_after_text = false;
        for (size_t t = 1; t < s.labels.size(); ++t) {
          if (s.input_ids[t] != *eos) continue;
          if (s.labels[t] != kIgnoreIndex)
            supervised_eos = true;
          else if (s.labels[t - 1] != kIgnoreIndex)
            masked_after_text = true;
        }
        if (!supervised_eos || masked_after_text) {
          ++res.no_eos;
          res.eos_masked += masked_after_text;
        }
      }
      res.lengths.push_back(static_cast<int32_t>(std::min<int64_t>(full, INT32_MAX)));
      res.samples.push_back(std::move(s));
    }
  });
  if (res.records == 0 && res.skipped == 0) user_error(ds.path, ": the dataset is empty");
  if (res.records == 0) user_error(ds.path, ": no valid record (", res.skipped, " skipped as invalid)");
  if (res.samples.empty()) {
    std::string why;
    if (res.dropped_truncated)
      why = std::to_string(res.dropped_truncated) + " had every trained token truncated away at sequence_len " +
            std::to_string(spec.sequence_len) + " (raise sequence_len)";
    if (const int64_t masked = res.dropped - res.dropped_truncated; masked > 0)
      why += (why.empty() ? "" : "; ") + std::to_string(masked) + " have every token masked (" +
             masked_cause(canonical_type(ds.type, ds.path), spec.train_on_inputs) + ")";
    user_error(ds.path, ": no trainable tokens in its ", res.records - res.skipped, " samples: ", why);
  }
  return res;
}

// Greedy packing in the given order: a row takes samples while they fit in sequence_len.
std::shared_ptr<PackedData> pack(std::vector<Sample>& samples, bool packing, int64_t sequence_len, int32_t pad_id) {
  auto p = std::make_shared<PackedData>();
  p->pad_id = pad_id;
  p->sequence_len = sequence_len;
  size_t total = 0;
  for (const auto& s : samples) total += s.input_ids.size();
  p->input_ids.reserve(total);
  p->labels.reserve(total);
  p->sample_begin.reserve(samples.size());
  int64_t row_len = 0;
  for (auto& s : samples) {
    int64_t len = static_cast<int64_t>(s.input_ids.size());
    if (p->row_begin.empty() || !packing || row_len + len > sequence_len) {
      p->row_begin.push_back(static_cast<int64_t>(p->input_ids.size()));
      row_len = 0;
    }
    p->sample_begin.push_back(static_cast<int64_t>(p->input_ids.size()));
    p->input_ids.insert(p->input_ids.end(), s.input_ids.begin(), s.input_ids.end());
    p->labels.insert(p->labels.end(), s.labels.begin(), s.labels.end());
    row_len += len;
    std::vector<int32_t>().swap(s.input_ids);
    std::vector<int32_t>().swap(s.labels);
  }
  p->row_begin.push_back(static_cast<int64_t>(p->input_ids.size()));
  // FNV-1a over everything a batch is made of, so a resumed run can tell it has the same data.
  uint64_t h = 0xCBF29CE484222325ull;
  auto mix = [&h](uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      h ^= (v >> (8 * k)) & 0xFF;
      h *= 0x100000001B3ull;
    }
  };
  for (size_t i = 0; i < p->input_ids.size(); ++i)
    mix((static_cast<uint64_t>(static_cast<uint32_t>(p->input_ids[i])) << 32) | static_cast<uint32_t>(p->labels[i]));
  for (int64_t b : p->row_begin) mix(static_cast<uint64_t>(b));
  for (int64_t b : p->sample_begin) mix(static_cast<uint64_t>(b));
  p->fingerprint = h;
  return p;
}

}  // namespace

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) std::swap(idx[i], idx[uniform(state, static_cast<uint64_t>(i) + 1)]);
  return idx;
}

std::string DataStats::summary() const {
  std::ostringstream os;
  os << "data: " << records << " records";
  if (skipped_invalid) os << ", " << skipped_invalid << " invalid skipped";
  if (truncated) os << ", " << truncated << " truncated to sequence_len";
  if (dropped_no_targets) os << ", " << dropped_no_targets << " without trained tokens dropped";
  if (no_eos) os << ", " << no_eos << " without a trained EOS";
  os << "; train " << train_samples << " samples in " << train_rows << " rows (" << train_tokens << " tokens, "
     << train_target_tokens << " trained)";
  if (val_samples) os << "; validation " << val_samples << " samples in " << val_rows << " rows";
  return os.str();
}

Datasets build_datasets(const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                        const std::function<void(const std::string&)>& log,
                        const std::function<void(const std::string&)>& warn) {
  auto warn_line = [&warn](const std::string& w) {
    if (warn)
      warn(w);
    else
      std::fprintf(stderr, "qlora: warning: %s\n", w.c_str());
  };
  if (spec.datasets.empty()) user_error("datasets: no training dataset given");
  if (spec.sequence_len < 2) user_error("sequence_len: expected at least 2, got ", spec.sequence_len);
  if (!(spec.val_set_size >= 0.0 && spec.val_set_size < 1.0))
    user_error("val_set_size: expected a fraction in [0, 1), got ", spec.val_set_size);
  for (const auto* list : {&spec.datasets, &spec.test_datasets})
    for (const auto& ds : *list) canonical_type(ds.type, ds.path);

  std::optional<tok::ChatTemplate> chat;
  auto chat_for = [&](const config::DatasetSpec& ds) -> const tok::ChatTemplate* {
    if (canonical_type(ds.type, ds.path) != "chat") return nullptr;
    if (!chat) chat.emplace(tok::ChatTemplate::resolve(spec.chat_template, tokenizer));
    return &*chat;
  };

  Datasets out;
  DataStats& st = out.stats;
  std::vector<int32_t> lengths;  // of the samples load_all returns
  auto load_all = [&](const std::vector<config::DatasetSpec>& list) {
    std::vector<Sample> all;
    for (const auto& ds : list) {
      FileResult r = load_file(ds, spec, tokenizer, chat_for(ds));
      st.records += r.records;
      st.skipped_invalid += r.skipped;
      st.truncated += r.truncated;
      st.dropped_no_targets += r.dropped;
      st.dropped_truncated += r.dropped_truncated;
      st.no_eos += r.no_eos;
      if (log && r.skipped) log(ds.path + ": skipped " + std::to_string(r.skipped) + " invalid records");
      if (log && r.truncated)
        log(ds.path + ": truncated " + std::to_string(r.truncated) + " samples longer than sequence_len " +
            std::to_string(spec.sequence_len));
      const int64_t built = r.records - r.skipped;
      if (r.dropped)
        warn_line(ds.path + ": " + std::to_string(r.dropped) + " of " + std::to_string(built) +
                  " samples have no supervised token (dropped): " + std::to_string(r.dropped_truncated) +
                  " had every trained token truncated away at sequence_len " + std::to_string(spec.sequence_len) +
                  ", " + std::to_string(r.dropped - r.dropped_truncated) + " have every token masked");
      if (r.no_eos) {
        const tok::SpecialTokens& sp = tokenizer.special();
        const bool chat_masks = canonical_type(ds.type, ds.path) == "chat" && !spec.train_on_inputs;
        const int64_t never = r.no_eos - r.eos_masked;
        std::string why;
        if (never)
          why = std::to_string(never) + " supervise none" +
                (chat_masks ? " (their last message is not the assistant's)" : std::string());
        if (r.eos_masked)
          why += (why.empty() ? "" : ", ") + std::to_string(r.eos_masked) +
                 " mask the EOS right after supervised text" +
                 (chat_masks ? " (the chat template leaves it out of the assistant turn)" : std::string());
        warn_line(ds.path + ": " + std::to_string(r.no_eos) + " of " + std::to_string(built) +
                  " samples have no supervised EOS token (\"" + sp.eos_token + "\", id " + std::to_string(*sp.eos_id) +
                  ") after their supervised text, so the model does not learn to stop there: " + why);
      }
      for (auto& s : r.samples) all.push_back(std::move(s));
      lengths.insert(lengths.end(), r.lengths.begin(), r.lengths.end());
    }
    return all;
  };

  std::vector<Sample> train = load_all(spec.datasets);
  std::vector<int32_t> train_lengths = std::move(lengths);
  lengths.clear();
  std::vector<Sample> val = load_all(spec.test_datasets);
  st.val_lengths = std::move(lengths);

  // Deterministic shuffle, then the validation split by ratio (when no test_datasets).
  std::vector<int64_t> order = permutation(static_cast<int64_t>(train.size()), spec.seed);
  std::vector<Sample> shuffled;
  shuffled.reserve(train.size());
  st.train_lengths.reserve(train.size());
  for (int64_t i : order) {
    shuffled.push_back(std::move(train[i]));
    st.train_lengths.push_back(train_lengths[i]);
  }
  train = std::move(shuffled);
  if (spec.test_datasets.empty() && spec.val_set_size > 0.0) {
    auto n_val = static_cast<size_t>(std::ceil(spec.val_set_size * static_cast<double>(train.size())));
    if (n_val >= train.size())
      user_error("val_set_size: ", spec.val_set_size, " of ", train.size(), " samples leaves nothing to train on");
    val.assign(std::make_move_iterator(train.begin()), std::make_move_iterator(train.begin() + n_val));
    train.erase(train.begin(), train.begin() + n_val);
    st.val_lengths.assign(st.train_lengths.begin(), st.train_lengths.begin() + static_cast<int64_t>(n_val));
    st.train_lengths.erase(st.train_lengths.begin(), st.train_lengths.begin() + static_cast<int64_t>(n_val));
  }

  const tok::SpecialTokens& sp = tokenizer.special();
  int32_t pad_id = sp.pad_id ? *sp.pad_id : sp.eos_id ? *sp.eos_id : 0;
  st.train_samples = static_cast<int64_t>(train.size());
  st.val_samples = static_cast<int64_t>(val.size());
  for (const auto& s : train) {
    st.train_tokens += static_cast<int64_t>(s.input_ids.size());
    st.train_target_tokens += count_targets(s);
  }
  out.train = pack(train, spec.sample_packing, spec.sequence_len, pad_id);
  out.val = pack(val, spec.sample_packing, spec.sequence_len, pad_id);
  st.train_rows = out.train->num_rows();
  st.val_rows = out.val->num_rows();
  if (log) log(st.summary());
  return out;
}

}  // namespace qlora::data
