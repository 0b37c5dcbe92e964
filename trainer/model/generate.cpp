#include "trainer/model/generate.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>

namespace qlora::model {

namespace {
// Picks the next token from float32 logits [vocab].
int32_t choose(const at::Tensor& logits, const GenerateOptions& opt, at::Generator& gen) {
  if (opt.temperature <= 0) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  at::Tensor l = logits / opt.temperature;
  if (opt.top_k > 0 && opt.top_k < l.size(0)) {
    auto kth = std::get<0>(l.topk(opt.top_k)).min();
    l = l.masked_fill(l < kth, -INFINITY);
  }
  at::Tensor probs = at::softmax(l, 0);
  if (opt.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(0, /*descending=*/true);
    at::Tensor cum = sorted.cumsum(0);
    // keep the smallest prefix whose mass reaches top_p (the first token always stays)
    at::Tensor drop = (cum - sorted) >= opt.top_p;
    sorted = sorted.masked_fill(drop, 0);
    probs = at::zeros_like(probs).scatter(0, idx, sorted);
  }
  return static_cast<int32_t>(at::multinomial(probs, 1, false, gen).item<int64_t>());
}
}  // namespace

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  at::NoGradGuard no_grad;
  const bool was_training = model.training;
  model.training = false;
  at::Generator gen = at::detail::createCPUGenerator(opt.seed);
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::vector<int32_t> out;
  // No KV cache yet: every step re-runs the whole sequence.
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    at::Tensor input = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).view({1, -1}).to(model.device);
    at::Tensor h = model.forward(input);
    at::Tensor logits = model.logits(h.select(1, h.size(1) - 1)).squeeze(0).to(at::kFloat).cpu();
    const int32_t next = choose(logits, opt, gen);
    out.push_back(next);
    if (on_token) on_token(next);
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), next) != opt.stop_ids.end()) break;
    ids.push_back(next);
  }
  model.training = was_training;
  return out;
}

}  // namespace qlora::model
