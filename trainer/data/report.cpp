#include "trainer/data/report.h"

#include <algorithm>
#include <cmath>

#include "trainer/data/formats.h"

namespace qlora::data {

LengthStats length_stats(std::vector<int32_t> lengths) {
  LengthStats s;
  s.count = static_cast<int64_t>(lengths.size());
  if (lengths.empty()) return s;
  std::sort(lengths.begin(), lengths.end());
  auto at = [&](double f) {
    auto rank = static_cast<size_t>(std::ceil(f * static_cast<double>(lengths.size())));
    return static_cast<int64_t>(lengths[std::clamp<size_t>(rank, 1, lengths.size()) - 1]);
  };
  s.min = lengths.front();
  s.max = lengths.back();
  s.p50 = at(0.5);
  s.p90 = at(0.9);
  s.p99 = at(0.99);
  double sum = 0;
  for (int32_t l : lengths) sum += l;
  s.mean = sum / static_cast<double>(lengths.size());
  return s;
}

int64_t packed_rows(const std::vector<int64_t>& lengths, int64_t sequence_len) {
  int64_t rows = 0, row_len = 0;
  for (int64_t len : lengths) {
    if (rows == 0 || row_len + len > sequence_len) {
      ++rows;
      row_len = 0;
    }
    row_len += len;
  }
  return rows;
}

PartStats part_stats(const PackedData& d, const std::vector<int32_t>& lengths_before_truncation,
                     std::optional<int32_t> eos_id) {
  PartStats p;
  p.samples = d.num_samples();
  p.rows = d.num_rows();
  p.tokens = static_cast<int64_t>(d.input_ids.size());
  std::vector<int64_t> sample_len(static_cast<size_t>(p.samples));
  for (int64_t k = 0; k < p.samples; ++k) {
    const int64_t b = d.sample_begin[k], e = k + 1 < p.samples ? d.sample_begin[k + 1] : p.tokens;
    sample_len[k] = e - b;
    for (int64_t t = b + 1; t < e; ++t) {  // a sample's first token is never a target (loader.h)
      if (d.labels[t] == kIgnoreIndex) continue;
      ++p.supervised_tokens;
      p.eos_supervised += eos_id && d.labels[t] == *eos_id;
    }
  }
  p.supervised_share = p.tokens ? static_cast<double>(p.supervised_tokens) / static_cast<double>(p.tokens) : 0.0;
  const auto full = [&](int64_t rows) { return static_cast<double>(rows) * static_cast<double>(d.sequence_len); };
  p.packing_efficiency = p.rows ? static_cast<double>(p.tokens) / full(p.rows) : 0.0;
  p.rows_packed = packed_rows(sample_len, d.sequence_len);
  p.packing_efficiency_packed = p.rows_packed ? static_cast<double>(p.tokens) / full(p.rows_packed) : 0.0;
  p.lengths = length_stats(lengths_before_truncation);
  p.fingerprint = d.fingerprint;
  return p;
}

nlohmann::ordered_json to_json(const PartStats& p) {
  const LengthStats& l = p.lengths;
  return {
      {"samples", p.samples},
      {"rows", p.rows},
      {"tokens", p.tokens},
      {"supervised_tokens", p.supervised_tokens},
      {"supervised_share", p.supervised_share},
      {"supervised_eos", p.eos_supervised},
      {"packing_efficiency", p.packing_efficiency},
      {"rows_packed", p.rows_packed},
      {"packing_efficiency_packed", p.packing_efficiency_packed},
      {"length", {{"min", l.min}, {"p50", l.p50}, {"p90", l.p90}, {"p99", l.p99}, {"max", l.max}, {"mean", l.mean}}},
      {"fingerprint", p.fingerprint}};
}

std::vector<std::vector<TokenRun>> batch_samples(const Batch& batch) {
  std::vector<std::vector<TokenRun>> out;
  const at::Tensor ids = batch.input_ids.contiguous(), labels = batch.labels.contiguous(),
                   seg = batch.segment_ids.contiguous();
  const int64_t B = ids.size(0), T = ids.size(1);
  const int64_t* I = ids.data_ptr<int64_t>();
  const int64_t* L = labels.data_ptr<int64_t>();
  const int64_t* S = seg.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t segment = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t g = b * T + t;
      if (S[g] == 0) continue;  // padding
      if (S[g] != segment) {
        out.emplace_back();
        segment = S[g];
      }
      const bool sup = L[g] != kIgnoreIndex;
      std::vector<TokenRun>& runs = out.back();
      if (runs.empty() || runs.back().supervised != sup) runs.push_back(TokenRun{{}, {}, sup});
      runs.back().ids.push_back(static_cast<int32_t>(I[g]));
      runs.back().labels.push_back(static_cast<int32_t>(L[g]));
    }
  }
  return out;
}

}  // namespace qlora::data
