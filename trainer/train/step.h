// Forward and backward of one micro-batch, split into row shards that run side by side.
//
// With shards > 1 (the trainer passes its CPU thread count; 1 on a GPU), the micro-batch's rows
// are cut into `shards` runs of consecutive rows, and each OpenMP thread runs forward_loss and
// backward for its shards with single-threaded kernels inside (nested parallel regions run
// inline): data parallelism inside the step, which keeps two or more cores busy on models whose
// matrices are too small for intra-op threads to pay. The micro-batch's LoRA dropout comes from
// a generator seeded with `dropout_seed` (the trainer draws one seed per micro-batch of the
// global batch, the same on every rank of a distributed run); with shards, each shard's
// generator is seeded from it in shard order, and the shards' gradients are added in shard
// order: for a given thread count the result is deterministic (bit-identical runs and resumes),
// and it equals the unsharded step to float rounding (tests/train).
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "trainer/data/loader.h"
#include "trainer/model/model.h"

namespace qlora::train {

// Runs the micro-batch, adds d(loss_sum / denom)/dp into every params[i].grad() (accumulating
// over calls, as backward() does) and returns the summed token loss of the micro-batch.
// With the model's router_aux_loss on (a mixture of experts), the objective is
// loss_sum / denom + aux_weight * aux, aux the micro-batch's router load-balancing loss over all
// its rows (so the micro-batch runs as one shard: the loss is not a sum over rows), written to
// *aux_out when given (0 for a micro-batch without a target token).
double forward_backward(model::Model& m, const data::Batch& b, double denom, int64_t shards,
                        const std::vector<at::Tensor>& params, uint64_t dropout_seed, double aux_weight = 0,
                        double* aux_out = nullptr);

}  // namespace qlora::train
