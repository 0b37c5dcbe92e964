#include "trainer/model/cross_entropy.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <vector>

namespace qlora::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// fp32 logits of a chunk, soft-capped when softcap > 0.
at::Tensor chunk_logits(const at::Tensor& hidden, const at::Tensor& weight, double softcap) {
  at::Tensor logits = at::matmul(hidden, weight.t()).to(at::kFloat);
  if (softcap > 0) logits = at::tanh(logits / softcap) * softcap;
  return logits;
}

struct ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk, double softcap) {
    const int64_t n = hidden.size(0);
    // With a frozen weight (the usual case: lm_head is not trained) the gradient of the summed
    // loss with respect to hidden is made here, from the logits already in hand: d(sum)/dhidden
    // = (softmax(l) - onehot(y)) W, which backward only scales by the incoming gradient. That
    // saves recomputing every chunk's logits (a third of the lm_head's products) and a pass over
    // them; what is kept is dh [N, H], no bigger than hidden.
    const bool fused = hidden.requires_grad() && !weight.requires_grad();
    at::Tensor dh = fused ? at::empty_like(hidden) : at::Tensor();
    const CeChunks plan = ce_chunks(n, chunk, ce_lanes(hidden));
    const at::Tensor hd = hidden.detach(), wd = weight.detach();
    std::vector<at::Tensor> partial(static_cast<size_t>(plan.count));
    auto run_chunk = [&](int64_t c) {
      const int64_t s = c * plan.tokens, e = std::min(n, s + plan.tokens);
      at::Tensor logits = at::matmul(hd.slice(0, s, e), wd.t()).to(at::kFloat);  // [c, V]
      // tanh(l / softcap) when capped
      at::Tensor t;
      if (softcap > 0) {
        t = at::tanh(logits / softcap);
        logits = t * softcap;
      }
      at::Tensor lse = at::logsumexp(logits, 1);
      const at::Tensor y = targets.slice(0, s, e).unsqueeze(1);
      at::Tensor picked = logits.gather(1, y).squeeze(1);
      partial[c] = (lse - picked).sum();
      if (!fused) return;
      // softmax in place: exp(l - lse), then - onehot(y)
      at::Tensor p = logits.sub_(lse.unsqueeze(1)).exp_();
      p.scatter_add_(1, y, at::full(y.sizes(), -1.0, p.options()));
      if (softcap > 0) p.mul_(1 - t.square_());  // d(c tanh(l / c))/dl = 1 - tanh²
      dh.slice(0, s, e).copy_(at::matmul(p.to(hidden.scalar_type()), wd));
    };
    if (plan.lanes > 1) {
      // Lanes side by side, each with its own run of chunks and single-threaded products (as the
      // row shards run): ahead of one chunk at a time with the products split over the threads.
      // Grad mode is per thread: the workers' ops must not record a graph either.
      at::parallel_for(0, plan.count, 1, [&](int64_t c0, int64_t c1) {
        at::NoGradGuard no_grad;
        for (int64_t c = c0; c < c1; ++c) run_chunk(c);
      });
    } else {
      for (int64_t c = 0; c < plan.count; ++c) run_chunk(c);
    }
    // Summed in chunk order, whatever ran where.
    at::Tensor total = at::zeros({}, hidden.options().dtype(at::kFloat));
    for (const at::Tensor& v : partial) total.add_(v);
    if (fused) {
      ctx->save_for_backward({dh});
    } else {
      ctx->save_for_backward({hidden, weight, targets});
    }
    ctx->saved_data["fused"] = fused;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["softcap"] = softcap;
    return total;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["fused"].toBool()) {
      at::Tensor dh = saved[0];
      return {dh.mul(grad_outputs[0].to(dh.scalar_type())), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const at::Tensor& hidden = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& targets = saved[2];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const double softcap = ctx->saved_data["softcap"].toDouble();
    at::Tensor g = grad_outputs[0].to(at::kFloat);
    at::Tensor dh = at::empty_like(hidden);
    // The output weight's gradient (a trainable lm_head): the chunks' products summed in fp32.
    const bool want_dw = ctx->needs_input_grad(1);
    at::Tensor dw = want_dw ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat)) : at::Tensor();
    const int64_t n = hidden.size(0);
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t e = std::min(n, s + chunk);
      at::Tensor logits = at::matmul(hidden.slice(0, s, e), weight.t()).to(at::kFloat);
      at::Tensor t;  // tanh(l / softcap) when capped
      if (softcap > 0) {
        t = at::tanh(logits / softcap);
        logits = t * softcap;
      }
      // d/dlogits (lse - l[y]) = softmax(l) - onehot(y)
      at::Tensor p = at::softmax(logits, 1);
      logits = at::Tensor();
      at::Tensor y = targets.slice(0, s, e).unsqueeze(1);
      p.scatter_add_(1, y, at::full(y.sizes(), -1.0, p.options()));
      if (softcap > 0) p.mul_(1 - t.square_());  // d(c tanh(l / c))/dl = 1 - tanh²
      p.mul_(g);
      const at::Tensor pc = p.to(hidden.scalar_type());
      dh.slice(0, s, e).copy_(at::matmul(pc, weight));
      if (want_dw) dw.add_(at::matmul(pc.t(), hidden.slice(0, s, e)));
    }
    return {dh, want_dw ? dw.to(weight.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor chunked_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                     int64_t chunk_tokens, double softcap) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "chunked_cross_entropy_sum: expected hidden [N, H] and weight [V, H]");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "chunked_cross_entropy_sum: targets must be [N]");
  TORCH_CHECK(chunk_tokens > 0, "chunked_cross_entropy_sum: chunk_tokens must be positive");
  return ChunkedCrossEntropy::apply(hidden, weight, targets.to(at::kLong), chunk_tokens, softcap);
}

at::Tensor full_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                  double softcap) {
  at::Tensor logits = chunk_logits(hidden, weight, softcap);
  return at::cross_entropy_loss(logits, targets.to(at::kLong), /*weight=*/{}, at::Reduction::Sum);
}

int64_t ce_lanes(const at::Tensor& hidden) {
  return hidden.is_cpu() && !at::in_parallel_region() ? std::max(1, at::get_num_threads()) : 1;
}

CeChunks ce_chunks(int64_t n, int64_t chunk_tokens, int64_t lanes) {
  CeChunks c;
  chunk_tokens = std::max<int64_t>(chunk_tokens, 1);
  const int64_t count = std::max<int64_t>(1, (n + chunk_tokens - 1) / chunk_tokens);
  c.lanes = std::clamp<int64_t>(lanes, 1, count);
  if (c.lanes == 1) {
    c.tokens = chunk_tokens;
    c.count = n > 0 ? count : 0;
    return c;
  }
  // A multiple of the lanes' count of chunks, all of one size (rounding may leave fewer).
  const int64_t even = (count + c.lanes - 1) / c.lanes * c.lanes;
  c.tokens = (n + even - 1) / even;
  c.count = (n + c.tokens - 1) / c.tokens;
  c.lanes = std::min(c.lanes, c.count);
  return c;
}

int64_t default_ce_chunk_tokens(int64_t vocab_size) {
  const int64_t budget = int64_t{1} << 23;
  // At least 128 rows: with fewer, the lm_head's products lose a fifth of their rate (a 152k
  // vocabulary's 55-row chunks: the loss part of a 1B step 8.6-11.5 -> 7.5-8.4 s at 128, for
  // 150 MB more peak memory).
  return std::clamp<int64_t>(budget / std::max<int64_t>(vocab_size, 1), 128, 4096);
}

}  // namespace qlora::model
