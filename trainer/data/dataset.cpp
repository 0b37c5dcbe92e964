#include "trainer/data/dataset.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>

#include "trainer/common/error.h"
#include "trainer/data/arrow_source.h"
#include "trainer/data/data_files.h"
#include "trainer/data/formats.h"
#include "trainer/data/records.h"
#include "trainer/data/scratch.h"
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

// Kept samples, end to end: each sample's ids, then its labels. In memory, or (streaming) in a
// scratch file read back sample by sample; either way about 8 bytes of memory per sample.
class SampleStore {
 public:
  explicit SampleStore(const std::filesystem::path* scratch_dir) {
    if (scratch_dir) file_ = std::make_unique<ScratchFile>(*scratch_dir, "tokenized samples");
  }
  void add(const Sample& s) {
    const size_t n = s.input_ids.size();
    if (file_) {
      file_->append(s.input_ids.data(), n * sizeof(int32_t));
      file_->append(s.labels.data(), n * sizeof(int32_t));
    } else {
      mem_.insert(mem_.end(), s.input_ids.begin(), s.input_ids.end());
      mem_.insert(mem_.end(), s.labels.begin(), s.labels.end());
    }
    begin_.push_back(begin_.back() + static_cast<int64_t>(2 * n));
  }
  int64_t size() const { return static_cast<int64_t>(begin_.size()) - 1; }
  int64_t length(int64_t k) const { return (begin_[k + 1] - begin_[k]) / 2; }
  int64_t total_tokens() const { return begin_.back() / 2; }
  // Sample k's ids and labels (valid until the next call).
  std::pair<const int32_t*, const int32_t*> get(int64_t k) {
    const int64_t n = length(k);
    if (!file_) return {mem_.data() + begin_[k], mem_.data() + begin_[k] + n};
    buf_.resize(static_cast<size_t>(2 * n));
    file_->read_at(static_cast<uint64_t>(begin_[k]) * sizeof(int32_t), buf_.data(), buf_.size() * sizeof(int32_t));
    return {buf_.data(), buf_.data() + n};
  }

 private:
  std::vector<int64_t> begin_{0};  // in int32 units
  std::vector<int32_t> mem_, buf_;
  std::unique_ptr<ScratchFile> file_;
};

struct FileResult {
  std::vector<int32_t> lengths;  // each kept sample's tokens before truncation
  int64_t kept = 0;
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
                     const tok::ChatTemplate* chat, SampleStore& store) {
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
      store.add(s);
      ++res.kept;
    }
  });
  if (res.records == 0 && res.skipped == 0) user_error(ds.path, ": the dataset is empty");
  if (res.records == 0) user_error(ds.path, ": no valid record (", res.skipped, " skipped as invalid)");
  if (res.kept == 0) {
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

// Where packed tokens go: vectors, or (streaming) two scratch files mapped at the end.
class TokenSink {
 public:
  TokenSink(const std::filesystem::path* scratch_dir, size_t total) {
    if (scratch_dir) {
      ids_file_ = std::make_unique<ScratchFile>(*scratch_dir, "packed rows");
      labels_file_ = std::make_unique<ScratchFile>(*scratch_dir, "packed rows");
    } else {
      ids_.reserve(total);
      labels_.reserve(total);
    }
  }
  void put(const int32_t* ids, const int32_t* labels, size_t n) {
    if (ids_file_) {
      ids_file_->append(ids, n * sizeof(int32_t));
      labels_file_->append(labels, n * sizeof(int32_t));
    } else {
      ids_.insert(ids_.end(), ids, ids + n);
      labels_.insert(labels_.end(), labels, labels + n);
    }
  }
  void finish(PackedData& p) {
    if (!ids_file_) {
      p.input_ids = TokenArray(std::move(ids_));
      p.labels = TokenArray(std::move(labels_));
      return;
    }
    const size_t n = ids_file_->size() / sizeof(int32_t);
    auto ids = ids_file_->map(), labels = labels_file_->map();
    p.input_ids = TokenArray(static_cast<const int32_t*>(ids.get()), n, ids);
    p.labels = TokenArray(static_cast<const int32_t*>(labels.get()), n, labels);
  }

 private:
  std::vector<int32_t> ids_, labels_;
  std::unique_ptr<ScratchFile> ids_file_, labels_file_;
};

// Greedy packing of the store's samples `order`, in that order: a row takes samples while they
// fit in sequence_len. Adds the samples' tokens and trained tokens to *tokens and *targets.
std::shared_ptr<PackedData> pack(SampleStore& store, const std::vector<int64_t>& order, bool packing,
                                 int64_t sequence_len, int32_t pad_id, const std::filesystem::path* scratch_dir,
                                 int64_t* tokens = nullptr, int64_t* targets = nullptr) {
  auto p = std::make_shared<PackedData>();
  p->pad_id = pad_id;
  p->sequence_len = sequence_len;
  size_t total = 0;
  for (int64_t k : order) total += static_cast<size_t>(store.length(k));
  TokenSink sink(scratch_dir, total);
  p->sample_begin.reserve(order.size());
  // FNV-1a over everything a batch is made of, so a resumed run can tell it has the same data.
  uint64_t h = 0xCBF29CE484222325ull;
  auto mix = [&h](uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      h ^= (v >> (8 * k)) & 0xFF;
      h *= 0x100000001B3ull;
    }
  };
  int64_t at = 0, row_len = 0;
  for (int64_t k : order) {
    const int64_t len = store.length(k);
    if (p->row_begin.empty() || !packing || row_len + len > sequence_len) {
      p->row_begin.push_back(at);
      row_len = 0;
    }
    p->sample_begin.push_back(at);
    const auto [ids, labels] = store.get(k);
    sink.put(ids, labels, static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i)
      mix((static_cast<uint64_t>(static_cast<uint32_t>(ids[i])) << 32) | static_cast<uint32_t>(labels[i]));
    if (targets)  // the first token is never a target (count_targets)
      for (int64_t i = 1; i < len; ++i) *targets += labels[i] != kIgnoreIndex;
    if (tokens) *tokens += len;
    at += len;
    row_len += len;
  }
  p->row_begin.push_back(at);
  for (int64_t b : p->row_begin) mix(static_cast<uint64_t>(b));
  for (int64_t b : p->sample_begin) mix(static_cast<uint64_t>(b));
  p->fingerprint = h;
  sink.finish(*p);
  return p;
}

}  // namespace

bool streams(const config::DataSpec& spec) {
  if (spec.streaming) return *spec.streaming;
  uint64_t bytes = 0;
  for (const auto* list : {&spec.datasets, &spec.test_datasets})
    for (const auto& ds : *list) {
      std::vector<DataFile> files;
      try {
        files = resolve_data_files(Source{ds.path, ds.split, ds.ds_type});
      } catch (const UserError&) { continue; }  // reading it says what is wrong
      for (const DataFile& f : files) {
        std::error_code ec;
        const uint64_t on_disk = std::filesystem::file_size(f.path, ec);
        if (ec) continue;
        // Compressed files count as the data they hold: Parquet's footer says how much; gzip'd
        // JSON is taken at 4x (text compresses about that much).
        if (f.kind == FileKind::parquet)
          bytes += std::max(on_disk, parquet_data_bytes(f.path));
        else
          bytes += f.gzip ? 4 * on_disk : on_disk;
      }
    }
  return bytes > kStreamingAutoBytes;
}

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
  const bool streaming = streams(spec);
  const std::filesystem::path scratch =
      spec.scratch_dir.empty() ? default_scratch_dir() : std::filesystem::path(spec.scratch_dir);
  const std::filesystem::path* scratch_dir = streaming ? &scratch : nullptr;
  if (streaming && log)
    log("data: streaming through scratch files in " + scratch.string() +
        (spec.streaming ? "" : " (the data files exceed 1 GiB; streaming: false keeps them in memory)"));
  std::vector<int32_t> lengths;  // of the samples load_all stores
  auto load_all = [&](const std::vector<config::DatasetSpec>& list, SampleStore& store) {
    for (const auto& ds : list) {
      FileResult r = load_file(ds, spec, tokenizer, chat_for(ds), store);
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
      lengths.insert(lengths.end(), r.lengths.begin(), r.lengths.end());
    }
  };

  SampleStore train_store(scratch_dir), val_store(spec.test_datasets.empty() ? nullptr : scratch_dir);
  load_all(spec.datasets, train_store);
  std::vector<int32_t> train_lengths = std::move(lengths);
  lengths.clear();
  load_all(spec.test_datasets, val_store);
  st.val_lengths = std::move(lengths);

  // Deterministic shuffle, then the validation split by ratio (when no test_datasets).
  std::vector<int64_t> order = permutation(train_store.size(), spec.seed);
  std::vector<int64_t> val_order;
  if (spec.test_datasets.empty() && spec.val_set_size > 0.0) {
    auto n_val = static_cast<size_t>(std::ceil(spec.val_set_size * static_cast<double>(order.size())));
    if (n_val >= order.size())
      user_error("val_set_size: ", spec.val_set_size, " of ", order.size(), " samples leaves nothing to train on");
    val_order.assign(order.begin(), order.begin() + static_cast<int64_t>(n_val));
    order.erase(order.begin(), order.begin() + static_cast<int64_t>(n_val));
    for (int64_t k : val_order) st.val_lengths.push_back(train_lengths[k]);
  } else {
    val_order.resize(static_cast<size_t>(val_store.size()));
    for (size_t k = 0; k < val_order.size(); ++k) val_order[k] = static_cast<int64_t>(k);
  }
  st.train_lengths.reserve(order.size());
  for (int64_t k : order) st.train_lengths.push_back(train_lengths[k]);
  std::vector<int32_t>().swap(train_lengths);

  const tok::SpecialTokens& sp = tokenizer.special();
  int32_t pad_id = sp.pad_id ? *sp.pad_id : sp.eos_id ? *sp.eos_id : 0;
  st.train_samples = static_cast<int64_t>(order.size());
  st.val_samples = static_cast<int64_t>(val_order.size());
  out.train = pack(train_store, order, spec.sample_packing, spec.sequence_len, pad_id, scratch_dir, &st.train_tokens,
                   &st.train_target_tokens);
  SampleStore& val_source = spec.test_datasets.empty() ? train_store : val_store;
  out.val = pack(val_source, val_order, spec.sample_packing, spec.sequence_len, pad_id,
                 val_order.empty() ? nullptr : scratch_dir);
  st.train_rows = out.train->num_rows();
  st.val_rows = out.val->num_rows();
  if (log) log(st.summary());
  return out;
}

}  // namespace qlora::data
