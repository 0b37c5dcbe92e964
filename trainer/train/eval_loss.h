// Token loss over a whole dataset, the one definition `qlora train`'s evaluation and `qlora eval`
// share: every row in order, summed cross-entropy over all target tokens divided by their count
// (not a mean of per-batch means), no grad, no dropout.
#pragma once
#include <cstdint>
#include <memory>

#include "trainer/data/loader.h"
#include "trainer/model/model.h"

namespace qlora::train {

struct LossTotal {
  double sum = 0;       // summed token loss
  int64_t count = 0;    // target tokens
  double mean() const;  // sum / count (NaN when there are no targets)
};

LossTotal eval_loss(model::Model& m, const std::shared_ptr<const data::PackedData>& rows, int64_t batch_size);

}  // namespace qlora::train
