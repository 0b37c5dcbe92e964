#include "trainer/train/eval_loss.h"

#include <ATen/core/grad_mode.h>

#include <cmath>

namespace qlora::train {

double LossTotal::mean() const { return count > 0 ? sum / static_cast<double>(count) : NAN; }

LossTotal eval_loss(model::Model& m, const std::shared_ptr<const data::PackedData>& rows, int64_t batch_size) {
  at::NoGradGuard no_grad;
  const bool was_training = m.training, was_aux = m.router_aux_loss;
  m.training = false;
  m.router_aux_loss = false;  // the eval loss is the token cross-entropy only
  LossTotal t;
  data::DataLoader loader(rows, batch_size, /*seed=*/0, /*shuffle=*/false);
  const int64_t n = loader.batches_per_epoch();
  for (int64_t i = 0; i < n; ++i) {
    data::Batch b = loader.next();
    model::LossSum l = m.forward_loss(b.input_ids.to(m.device), b.labels.to(m.device), b.position_ids.to(m.device),
                                      b.segment_ids.to(m.device), b.segment_ids.to(m.device) != 0);
    t.sum += l.sum.item<double>();
    t.count += l.count.item<int64_t>();
  }
  m.training = was_training;
  m.router_aux_loss = was_aux;
  return t;
}

}  // namespace qlora::train
