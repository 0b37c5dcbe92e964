#include "trainer/train/step.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>

#include "trainer/model/lora.h"

namespace qlora::train {

namespace {

model::LossSum shard_loss(model::Model& m, const data::Batch& b, int64_t r0, int64_t r1, at::Generator* gen) {
  const at::Device d = m.device;
  auto rows = [&](const at::Tensor& t) { return t.slice(0, r0, r1).to(d); };
  const at::Tensor seg = rows(b.segment_ids);
  return m.forward_loss(rows(b.input_ids), rows(b.labels), rows(b.position_ids), seg, seg != 0, gen);
}

}  // namespace

double forward_backward(model::Model& m, const data::Batch& b, double denom, int64_t shards,
                        const std::vector<at::Tensor>& params, uint64_t dropout_seed, double aux_weight,
                        double* aux_out) {
  const int64_t rows = b.input_ids.size(0);
  shards = std::clamp<int64_t>(shards, 1, std::max<int64_t>(rows, 1));
  if (aux_out) *aux_out = 0;
  if (m.router_aux_loss && m.config.is_moe()) shards = 1;
  at::Generator micro_gen = at::make_generator<at::CPUGeneratorImpl>(dropout_seed);
  if (shards == 1) {
    model::LossSum l = shard_loss(m, b, 0, rows, &micro_gen);
    at::Tensor objective = l.sum / denom;
    if (l.aux.defined()) {
      objective = objective + l.aux * aux_weight;
      if (aux_out) *aux_out = l.aux.item<double>();
    }
    objective.backward();
    return l.sum.item<double>();
  }
  std::vector<at::Generator> gens;
  for (int64_t s = 0; s < shards; ++s)
    gens.push_back(at::make_generator<at::CPUGeneratorImpl>(model::dropout_seed(&micro_gen)));
  std::vector<std::vector<at::Tensor>> grads(shards);
  std::vector<double> loss(shards, 0.0);
  // One task per shard; kernels called inside run single-threaded (nested regions run inline).
  // An exception in a shard is rethrown here by at::parallel_for.
  at::parallel_for(0, shards, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      at::AutoGradMode grad_on(true);  // worker threads do not inherit the caller's thread-local state
      model::LossSum l = shard_loss(m, b, rows * s / shards, rows * (s + 1) / shards, &gens[s]);
      loss[s] = l.sum.item<double>();
      grads[s] = torch::autograd::grad({l.sum / denom}, params, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    }
  });
  at::NoGradGuard no_grad;
  double total = 0;
  for (int64_t s = 0; s < shards; ++s) total += loss[s];
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor g;
    for (int64_t s = 0; s < shards; ++s) {
      const at::Tensor& gs = grads[s][i];
      if (!gs.defined()) continue;
      g = g.defined() ? g.add_(gs) : gs;
    }
    if (!g.defined()) continue;
    at::Tensor& acc = params[i].mutable_grad();
    if (acc.defined()) {
      acc.add_(g);
    } else {
      acc = g;
    }
  }
  return total;
}

}  // namespace qlora::train
