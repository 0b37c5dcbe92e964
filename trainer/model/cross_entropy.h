// Causal-LM cross-entropy that never holds fp32 logits for all tokens at once.
#pragma once
#include <ATen/core/Tensor.h>

namespace qlora::model {

// A summed loss and the number of target tokens it sums over, so the trainer can normalize by
// the total target tokens of all micro-batches of an optimizer step (docs/formats.md §7).
struct LossSum {
  at::Tensor sum;    // float32 scalar, differentiable
  at::Tensor count;  // int64 scalar
  // Model::forward_loss with Model::router_aux_loss on a mixture of experts: the router's
  // load-balancing loss of the batch (float32 scalar, differentiable; not scaled by
  // router_aux_loss_coef), else undefined.
  at::Tensor aux;
};

// sum over rows i of  logsumexp(l_i) - l_i[targets_i],  l = hidden @ weight^T computed in
// hidden's dtype then cast to float32 (as transformers does), `chunk_tokens` rows at a time.
// hidden [N, H] (only rows that have a target), weight [V, H], targets int64 [N] in [0, V).
// With a frozen weight the forward also makes the gradient with respect to hidden from each
// chunk's logits (kept as [N, H] until backward scales it); with a trained weight (lm_head in
// lora_modules_to_save) backward recomputes each chunk's logits and also makes the weight's fp32
// gradient [V, H]. Memory beyond the inputs is one chunk of fp32 logits per lane (ce_chunks).
// softcap > 0: the logits are soft-capped first, l = softcap * tanh(l / softcap) (Gemma's
// final_logit_softcapping), in the forward and in the gradient.
at::Tensor chunked_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                     int64_t chunk_tokens, double softcap = 0);

// The plain version (all logits at once, autograd through at::cross_entropy): for tests and as
// the baseline the benchmarks compare against.
at::Tensor full_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                  double softcap = 0);

// How chunked_cross_entropy_sum splits N rows: `count` chunks of `tokens` rows (the last may be
// shorter), run `lanes` at a time. On the CPU outside a parallel region (one row shard: a
// micro-batch of one row) the chunks run side by side, one lane per thread, with the chunk size
// evened out so the lanes get about as many chunks each; the loss holds `lanes` chunks of logits
// at once.
struct CeChunks {
  int64_t tokens = 1, count = 0, lanes = 1;
};
CeChunks ce_chunks(int64_t n, int64_t chunk_tokens, int64_t lanes);
// The lanes the loss would use for hidden on this thread (CPU: the thread count outside a
// parallel region, else 1).
int64_t ce_lanes(const at::Tensor& hidden);

// Default chunk for a vocabulary: ~8 Mi fp32 logits per chunk (32 MiB), in [128, 4096] tokens
// (vocabularies over 64k get 128-token chunks of more than 32 MiB).
int64_t default_ce_chunk_tokens(int64_t vocab_size);

}  // namespace qlora::model
