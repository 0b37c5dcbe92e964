// Datasets for training: read the files, build samples (tokenize, mask), truncate, shuffle by
// seed, split off validation, pack into rows of at most sequence_len tokens.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainer/config/data_spec.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::data {

// A read-only array of token ids or labels: owned, or a view of a mapped scratch file (streaming)
// that `keep` holds alive.
class TokenArray {
 public:
  using value_type = int32_t;
  using const_iterator = const int32_t*;
  using iterator = const int32_t*;
  TokenArray() = default;
  explicit TokenArray(std::vector<int32_t> v) : own_(std::move(v)) {}
  TokenArray(const int32_t* data, size_t n, std::shared_ptr<const void> keep)
      : view_(data), view_n_(n), keep_(std::move(keep)), mapped_(true) {}
  const int32_t* data() const { return mapped_ ? view_ : own_.data(); }
  size_t size() const { return mapped_ ? view_n_ : own_.size(); }
  bool empty() const { return size() == 0; }
  bool mapped() const { return mapped_; }
  int32_t operator[](size_t i) const { return data()[i]; }
  const int32_t* begin() const { return data(); }
  const int32_t* end() const { return data() + size(); }
  // The owned storage, to fill (not for a mapped array).
  std::vector<int32_t>& owned() { return own_; }
  friend bool operator==(const TokenArray& a, const TokenArray& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  std::vector<int32_t> own_;
  const int32_t* view_ = nullptr;
  size_t view_n_ = 0;
  std::shared_ptr<const void> keep_;
  bool mapped_ = false;
};

// Rows of samples laid end to end: one sample per row, or with sample_packing several whole
// samples per row (never more than sequence_len tokens).
struct PackedData {
  TokenArray input_ids, labels;       // every row, concatenated; labels -100 = not trained
  std::vector<int64_t> row_begin;     // row r is [row_begin[r], row_begin[r + 1])
  std::vector<int64_t> sample_begin;  // each sample's first token (global index), ascending
  int32_t pad_id = 0;                 // the tokenizer's pad, else its EOS, else 0
  int64_t sequence_len = 0;
  uint64_t fingerprint = 0;  // hash of the rows (ids, labels, boundaries)
  int64_t num_rows() const { return row_begin.empty() ? 0 : static_cast<int64_t>(row_begin.size()) - 1; }
  int64_t num_samples() const { return static_cast<int64_t>(sample_begin.size()); }
};

struct DataStats {
  int64_t records = 0;             // records read from the training files (and test_datasets)
  int64_t skipped_invalid = 0;     // malformed records skipped (skip_invalid)
  int64_t truncated = 0;           // samples longer than sequence_len, cut to it
  int64_t dropped_no_targets = 0;  // samples left without a trained token, dropped
  int64_t dropped_truncated = 0;   // of those, samples whose trained tokens truncation cut away
  int64_t no_eos = 0;              // samples kept whole without a supervised EOS after supervised text
  int64_t train_samples = 0, val_samples = 0;
  int64_t train_rows = 0, val_rows = 0;
  int64_t train_tokens = 0, train_target_tokens = 0;
  // Tokens of each kept sample before truncation, in the order of PackedData's samples.
  std::vector<int32_t> train_lengths, val_lengths;
  std::string summary() const;  // one line for the log
};

struct Datasets {
  std::shared_ptr<const PackedData> train;
  std::shared_ptr<const PackedData> val;  // no rows when there is no validation data
  DataStats stats;
};

// Builds train and validation data from `spec`. Bad input is a UserError naming the file and
// line (or the spec key); truncations and skipped records are counted and reported to `log`.
// A dataset none of whose tokens is trained is a UserError naming the file and the cause
// (truncation, or masking); samples dropped for having no trained token, and samples kept whole
// with no supervised EOS after their supervised text (no EOS label at all, or a masked EOS right
// after supervised text: the model would not learn to stop) are counted and warned about on
// stderr ("qlora: warning: FILE: ...").
// Records are tokenized on the OpenMP threads; the result does not depend on their number.
// Streaming (spec.streaming, or data files above kStreamingAutoBytes): the tokenized samples and
// the packed rows go to scratch files in spec.scratch_dir (else default_scratch_dir()) instead of
// memory, and the rows are a read-only mapping of them; memory then grows with the number of
// samples (about 28 bytes each), not with their tokens, and the result is the same bit for bit.
// `warn` gets the one-line data warnings (samples dropped, samples without a supervised EOS)
// without the "qlora: warning: " prefix; without it they go to stderr with it.
Datasets build_datasets(const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                        const std::function<void(const std::string&)>& log = nullptr,
                        const std::function<void(const std::string&)>& warn = nullptr);

// Data files larger than this in all turn streaming on when the config does not set it.
inline constexpr uint64_t kStreamingAutoBytes = uint64_t{1} << 30;

// Whether build_datasets streams for `spec`: spec.streaming, else whether the data files exceed
// kStreamingAutoBytes (a directory counts its split's files; a Parquet file counts its
// uncompressed data, a gzip'd one four times its size).
bool streams(const config::DataSpec& spec);

// The permutation of [0, n) for `seed` (Fisher-Yates on splitmix64; the same on every platform).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

}  // namespace qlora::data
