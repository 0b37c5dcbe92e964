// train::forward_backward (trainer/train/step.h): a micro-batch cut into row shards that threads
// run side by side gives the loss and LoRA gradients of the whole batch run at once (to float
// rounding), the same bits every time for a given shard count (dropout included), and
// accumulates into .grad over calls like backward().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "tests/model/fixtures.h"
#include "trainer/model/model.h"
#include "trainer/train/step.h"

using namespace qlora;

namespace {

model::Model load_llama(double dropout) {
  config::LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = dropout;
  c.target_linear = true;
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  o.lora = c;
  model::Model m = model::load_model(test::model_fixtures() / "llama", o);
  // Non-zero B (PEFT's zero init would make every A gradient vanish).
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  std::map<std::string, at::Tensor> v;
  for (auto& p : m.lora_parameters())
    if (p.name.find("lora_B") != std::string::npos) v[p.name] = 0.3 * at::randn(p.param.sizes(), g, at::kFloat);
  m.load_lora_weights(v, "test", /*strict=*/false);
  m.training = true;
  return m;
}

// 5 rows (shards of uneven size), right padding of different lengths, prompt labels masked.
data::Batch make_batch(int64_t vocab) {
  const int64_t B = 5, T = 12;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(17);
  data::Batch b;
  b.input_ids = at::randint(vocab, {B, T}, g, at::kLong);
  b.position_ids = at::arange(T, at::kLong).repeat({B, 1});
  b.segment_ids = at::ones({B, T}, at::kLong);
  b.labels = b.input_ids.clone();
  const int64_t len[B] = {12, 9, 7, 11, 5}, prompt[B] = {4, 3, 2, 5, 2};
  for (int64_t r = 0; r < B; ++r) {
    b.labels[r].slice(0, 0, prompt[r]).fill_(-100);
    b.labels[r].slice(0, len[r]).fill_(-100);
    b.segment_ids[r].slice(0, len[r]).fill_(0);
    b.position_ids[r].slice(0, len[r]).fill_(0);
  }
  b.num_target_tokens = (b.labels != -100).sum().item<int64_t>();
  return b;
}

std::vector<at::Tensor> params_of(const model::Model& m) {
  std::vector<at::Tensor> ps;
  for (auto& p : m.lora_parameters()) ps.push_back(p.param);
  return ps;
}

std::vector<at::Tensor> take_grads(const std::vector<at::Tensor>& ps) {
  std::vector<at::Tensor> g;
  for (const auto& p : ps) {
    g.push_back(p.grad().clone());
    p.mutable_grad() = at::Tensor();
  }
  return g;
}

}  // namespace

TEST(ShardedStep, EqualsWholeBatchAndIsDeterministic) {
  const int saved = at::get_num_threads();
  at::set_num_threads(2);
  {
    model::Model m = load_llama(0.0);
    data::Batch b = make_batch(m.config.vocab_size);
    const double denom = static_cast<double>(b.num_target_tokens);
    std::vector<at::Tensor> ps = params_of(m);
    const double whole = train::forward_backward(m, b, denom, 1, ps, 7);
    std::vector<at::Tensor> g1 = take_grads(ps);
    for (int64_t shards : {2, 3, 5, 8}) {
      SCOPED_TRACE(shards);
      const double split = train::forward_backward(m, b, denom, shards, ps, 7);
      EXPECT_NEAR(split, whole, 1e-5 * std::abs(whole));
      std::vector<at::Tensor> gs = take_grads(ps);
      for (size_t i = 0; i < ps.size(); ++i) EXPECT_LE(test::rel_err(gs[i], g1[i]), 1e-5) << i;
    }
    // Two calls accumulate, as backward() does.
    train::forward_backward(m, b, denom, 3, ps, 7);
    train::forward_backward(m, b, denom, 3, ps, 7);
    std::vector<at::Tensor> g2 = take_grads(ps);
    for (size_t i = 0; i < ps.size(); ++i) EXPECT_LE(test::rel_err(g2[i], 2 * g1[i]), 1e-5) << i;
  }
  {
    // With dropout: the same seed gives the same bits, another seed other bits; the dropout is
    // really on.
    model::Model m = load_llama(0.2);
    data::Batch b = make_batch(m.config.vocab_size);
    const double denom = static_cast<double>(b.num_target_tokens);
    std::vector<at::Tensor> ps = params_of(m);
    std::vector<std::vector<at::Tensor>> runs;
    for (uint64_t seed : {7, 7, 8}) {
      train::forward_backward(m, b, denom, 3, ps, seed);
      runs.push_back(take_grads(ps));
    }
    for (size_t i = 0; i < ps.size(); ++i) EXPECT_TRUE(at::equal(runs[0][i], runs[1][i])) << i;
    bool any_differs = false;
    for (size_t i = 0; i < ps.size(); ++i) any_differs = any_differs || !at::equal(runs[0][i], runs[2][i]);
    EXPECT_TRUE(any_differs);
    m.training = false;
    train::forward_backward(m, b, denom, 3, ps, 7);
    std::vector<at::Tensor> off = take_grads(ps);
    double max_diff = 0;
    for (size_t i = 0; i < ps.size(); ++i) max_diff = std::max(max_diff, test::rel_err(runs[0][i], off[i]));
    EXPECT_GT(max_diff, 1e-2);
  }
  at::set_num_threads(saved);
}
