// What prepared data holds, for `qlora preprocess` and `qlora init`: token counts, the share of
// supervised (trained) tokens, rows and packing efficiency, the distribution of sample lengths,
// and the samples of a batch as runs of supervised and masked tokens.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"

namespace qlora::data {

// Nearest-rank percentiles (the smallest length with at least p% of the samples at or below it).
struct LengthStats {
  int64_t count = 0, min = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  double mean = 0;
};
LengthStats length_stats(std::vector<int32_t> lengths);

// Rows that greedy packing in the given order makes of samples this long (as sample_packing does).
int64_t packed_rows(const std::vector<int64_t>& lengths, int64_t sequence_len);

// One of train / validation.
struct PartStats {
  int64_t samples = 0, rows = 0;
  int64_t tokens = 0;             // after truncation
  int64_t supervised_tokens = 0;  // labels the loss trains (never a sample's first token)
  int64_t eos_supervised = 0;     // of those, EOS tokens
  double supervised_share = 0;    // supervised_tokens / tokens
  // tokens / (rows x sequence_len): the share of a full-length batch that is real tokens.
  double packing_efficiency = 0;
  int64_t rows_packed = 0;  // rows with sample_packing (equal to rows when it is on)
  double packing_efficiency_packed = 0;
  LengthStats lengths;       // tokens per sample before truncation
  uint64_t fingerprint = 0;  // PackedData::fingerprint (what a resumed run checks)
};
PartStats part_stats(const PackedData& data, const std::vector<int32_t>& lengths_before_truncation,
                     std::optional<int32_t> eos_id);
nlohmann::ordered_json to_json(const PartStats& p);

// A run of consecutive tokens of one sample that are all supervised or all masked.
struct TokenRun {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  // -100 where masked
  bool supervised = false;
};
// The samples of a collated batch (rows split at segment boundaries, padding left out), each as
// its runs, with the labels exactly as the loss sees them.
std::vector<std::vector<TokenRun>> batch_samples(const Batch& batch);

}  // namespace qlora::data
