#include "trainer/data/loader.h"

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "trainer/common/error.h"
#include "trainer/data/formats.h"

namespace qlora::data {

Batch collate(const PackedData& data, const std::vector<int64_t>& rows, int64_t pad_to) {
  TORCH_CHECK(!rows.empty(), "collate: no rows");
  const int64_t B = static_cast<int64_t>(rows.size());
  int64_t T = pad_to;
  for (int64_t r : rows) T = std::max(T, data.row_begin[r + 1] - data.row_begin[r]);
  auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor ids = at::full({B, T}, static_cast<int64_t>(data.pad_id), opts);
  at::Tensor labels = at::full({B, T}, static_cast<int64_t>(kIgnoreIndex), opts);
  at::Tensor pos = at::zeros({B, T}, opts);
  at::Tensor seg = at::zeros({B, T}, opts);
  auto I = ids.accessor<int64_t, 2>();
  auto L = labels.accessor<int64_t, 2>();
  auto P = pos.accessor<int64_t, 2>();
  auto S = seg.accessor<int64_t, 2>();
  Batch b;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t begin = data.row_begin[rows[i]], end = data.row_begin[rows[i] + 1];
    // The samples of this row start at the sample_begin entries within [begin, end).
    auto sb = std::lower_bound(data.sample_begin.begin(), data.sample_begin.end(), begin);
    int64_t segment = 0, sample_start = begin;
    for (int64_t g = begin; g < end; ++g) {
      if (sb != data.sample_begin.end() && *sb == g) {
        ++segment;
        sample_start = g;
        ++sb;
      }
      const int64_t t = g - begin;
      I[i][t] = data.input_ids[g];
      // Nothing predicts a sample's first token from inside the sample.
      L[i][t] = g == sample_start ? kIgnoreIndex : data.labels[g];
      P[i][t] = g - sample_start;
      S[i][t] = segment;
      b.num_target_tokens += L[i][t] != kIgnoreIndex;
    }
    b.num_tokens += end - begin;
  }
  b.input_ids = ids;
  b.labels = labels;
  b.position_ids = pos;
  b.segment_ids = seg;
  return b;
}

nlohmann::json LoaderState::to_json() const {
  return {{"epoch", epoch},
          {"position", position},
          {"seed", seed},
          {"num_rows", num_rows},
          {"micro_batch_size", micro_batch_size},
          {"data_fingerprint", data_fingerprint}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  if (!j.is_object()) user_error("data cursor: expected an object");
  auto get = [&](const char* key) -> const nlohmann::json& {
    auto it = j.find(key);
    if (it == j.end()) user_error("data cursor: missing key \"", key, "\"");
    if (!it->is_number_integer()) user_error("data cursor: \"", key, "\": expected an integer");
    return *it;
  };
  LoaderState s;
  s.epoch = get("epoch").get<uint64_t>();
  s.position = get("position").get<int64_t>();
  s.seed = get("seed").get<uint64_t>();
  s.num_rows = get("num_rows").get<int64_t>();
  s.micro_batch_size = get("micro_batch_size").get<int64_t>();
  s.data_fingerprint = get("data_fingerprint").get<uint64_t>();
  if (s.position < 0 || s.position > s.num_rows) user_error("data cursor: \"position\" is outside the data");
  return s;
}

DataLoader::DataLoader(std::shared_ptr<const PackedData> data, int64_t micro_batch_size, uint64_t seed, bool shuffle,
                       bool pad_to_sequence_len)
    : data_(std::move(data)), shuffle_(shuffle), pad_to_sequence_len_(pad_to_sequence_len) {
  TORCH_CHECK(data_, "DataLoader: no data");
  if (micro_batch_size < 1) user_error("micro_batch_size: expected a positive integer, got ", micro_batch_size);
  if (data_->num_rows() == 0) user_error("data: no rows to load");
  state_.seed = seed;
  state_.num_rows = data_->num_rows();
  state_.micro_batch_size = micro_batch_size;
  state_.data_fingerprint = data_->fingerprint;
}

int64_t DataLoader::batches_per_epoch() const {
  return (state_.num_rows + state_.micro_batch_size - 1) / state_.micro_batch_size;
}

const std::vector<int64_t>& DataLoader::order() {
  if (order_epoch_ != state_.epoch) {
    if (shuffle_) {
      // One independent stream per epoch: the epoch index is mixed into the seed.
      uint64_t s = state_.seed ^ (0xD1B54A32D192ED03ull * (state_.epoch + 1));
      order_ = permutation(state_.num_rows, s);
    } else {
      order_.resize(state_.num_rows);
      for (int64_t i = 0; i < state_.num_rows; ++i) order_[i] = i;
    }
    order_epoch_ = state_.epoch;
  }
  return order_;
}

Batch DataLoader::next() {
  if (state_.position >= state_.num_rows) {
    ++state_.epoch;
    state_.position = 0;
  }
  const auto& ord = order();
  int64_t end = std::min(state_.position + state_.micro_batch_size, state_.num_rows);
  std::vector<int64_t> rows(ord.begin() + state_.position, ord.begin() + end);
  state_.position = end;
  return collate(*data_, rows, pad_to_sequence_len_ ? data_->sequence_len : 0);
}

void DataLoader::skip() {
  if (state_.position >= state_.num_rows) {
    ++state_.epoch;
    state_.position = 0;
  }
  state_.position = std::min(state_.position + state_.micro_batch_size, state_.num_rows);
}

void DataLoader::restore(const LoaderState& s) {
  if (s.num_rows != state_.num_rows)
    user_error("data cursor: saved for ", s.num_rows, " rows of training data, but the data now has ", state_.num_rows,
               " (dataset, tokenizer, sequence_len or packing changed?)");
  if (s.data_fingerprint != state_.data_fingerprint)
    user_error(
        "data cursor: saved for different training data (dataset files, tokenizer, sequence_len or packing "
        "changed), so the position cannot be restored");
  if (s.seed != state_.seed) user_error("data cursor: saved with seed ", s.seed, ", the run uses ", state_.seed);
  if (s.micro_batch_size != state_.micro_batch_size)
    user_error("data cursor: saved with micro_batch_size ", s.micro_batch_size, ", the run uses ",
               state_.micro_batch_size);
  state_ = s;
}

}  // namespace qlora::data
