// The resumable loader: epochs over the rows of a PackedData in a per-epoch permutation drawn
// from (seed, epoch), micro-batches collated into tensors. Its exact position is a small state
// that checkpoints save and restore; after a restore the next batches are the ones an
// uninterrupted run would have produced.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "trainer/data/dataset.h"

namespace qlora::data {

struct Batch {
  at::Tensor input_ids;  // int64 [B, T]; padding is the pad id (else EOS)
  // int64 [B, T], the HF convention: labels[b, t] is the target of the prediction made at t - 1
  // (the loss compares logits[:, :-1] with labels[:, 1:]); -100 = ignored (prompt, padding). The
  // first token of every sample is -100, so no prediction crosses a packed-sample boundary.
  at::Tensor labels;
  at::Tensor position_ids;  // int64 [B, T]: 0, 1, ... restarting at every sample; 0 on padding
  // int64 [B, T]: 1, 2, ... for the samples of a row, 0 on padding. Causal attention stays inside
  // a sample: query i sees key j iff j <= i and segment_ids[i] == segment_ids[j] (block-diagonal).
  at::Tensor segment_ids;
  int64_t num_target_tokens = 0;  // count of labels != -100; normalize the loss by the sum over
                                  // the micro-batches of an optimizer step
  int64_t num_tokens = 0;         // non-padding tokens
};

// Collates rows of `data` (row indices) into a batch, right-padded to the longest row, or to
// pad_to when larger.
Batch collate(const PackedData& data, const std::vector<int64_t>& rows, int64_t pad_to = 0);

// Where the loader is: checkpoints save it (to_json) and restore it.
struct LoaderState {
  uint64_t epoch = 0;    // current epoch, from 0
  int64_t position = 0;  // rows of this epoch's order already served
  // What the position refers to, checked on restore.
  uint64_t seed = 0;
  int64_t num_rows = 0;
  int64_t micro_batch_size = 0;
  uint64_t data_fingerprint = 0;  // PackedData::fingerprint

  nlohmann::json to_json() const;
  // UserError "data cursor: ..." naming a missing or mistyped key.
  static LoaderState from_json(const nlohmann::json& j);
  bool operator==(const LoaderState&) const = default;
};

class DataLoader {
 public:
  // shuffle false: rows in order every epoch (evaluation).
  DataLoader(std::shared_ptr<const PackedData> data, int64_t micro_batch_size, uint64_t seed, bool shuffle = true,
             bool pad_to_sequence_len = false);

  // The next micro-batch. An epoch's last batch may be smaller; the next call starts the next
  // epoch with a new permutation.
  Batch next();
  // Moves past the micro-batch next() would return, without collating it (the micro-batches of a
  // global batch that other ranks train).
  void skip();

  int64_t batches_per_epoch() const;
  uint64_t epoch() const { return state_.epoch; }
  const LoaderState& state() const { return state_; }
  // UserError when the state was saved for different data, seed or micro_batch_size.
  void restore(const LoaderState& state);

 private:
  const std::vector<int64_t>& order();  // this epoch's permutation of the rows

  std::shared_ptr<const PackedData> data_;
  bool shuffle_;
  bool pad_to_sequence_len_;
  LoaderState state_;
  std::vector<int64_t> order_;
  uint64_t order_epoch_ = UINT64_MAX;
};

}  // namespace qlora::data
