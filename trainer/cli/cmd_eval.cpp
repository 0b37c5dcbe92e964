// qlora eval: loss and perplexity of a model (optionally with a trained adapter) on a dataset.
// The file goes through the training data pipeline (trainer/data: same formats, tokenization,
// BOS/EOS and prompt masking, truncation to --sequence-len), one sample per row, right-padded
// batches. Loss = summed cross-entropy over the target tokens / their count (transformers'
// labels with -100 on masked and padded positions); perplexity = exp(loss).
#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "trainer/cli/commands.h"
#include "trainer/cli/inference.h"
#include "trainer/common/error.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/train/eval_loss.h"

namespace qlora::cli {

int run_eval(const EvalArgs& a) {
  if (a.sequence_len < 2) user_error("--sequence-len: expected at least 2, got ", a.sequence_len);
  if (a.batch_size < 1) user_error("--batch-size: expected at least 1, got ", a.batch_size);
  InferenceModel im = load_inference_model(a.model, a.adapter, a.device, a.load_in_4bit);
  model::Model& m = im.model;

  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.path = a.data;
  ds.type = a.type;
  spec.datasets = {ds};
  spec.sequence_len = a.sequence_len;
  if (im.train) {  // the adapter's own template choices and masking
    spec.chat_template = im.train->data.chat_template;
    spec.chat_template_kwargs = im.train->data.chat_template_kwargs;
    spec.train_on_inputs = im.train->data.train_on_inputs;
  }
  std::vector<std::string> notes;  // printed once the data is known to be good
  data::Datasets d = data::build_datasets(spec, *im.tokenizer, [&](const std::string& s) { notes.push_back(s); });
  std::fprintf(stderr, "qlora: %s\n", im.description.c_str());
  for (const auto& s : notes) std::fprintf(stderr, "qlora: %s\n", s.c_str());
  if (d.train->num_rows() == 0) user_error(a.data, ": no samples with target tokens");

  const auto t0 = std::chrono::steady_clock::now();
  const train::LossTotal lt = train::eval_loss(m, d.train, a.batch_size);
  const int64_t count = lt.count;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double loss = lt.mean();
  const double ppl = std::exp(loss);
  if (a.json) {
    nlohmann::ordered_json j = {{"loss", loss},
                                {"perplexity", ppl},
                                {"target_tokens", count},
                                {"samples", d.stats.train_samples},
                                {"truncated", d.stats.truncated},
                                {"data", a.data},
                                {"model", im.model_dir.string()},
                                {"adapter", a.adapter},
                                {"seconds", s}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("loss %.6f perplexity %.4f (%lld target tokens, %lld samples, %.1f s)\n", loss, ppl,
                static_cast<long long>(count), static_cast<long long>(d.stats.train_samples), s);
  }
  return 0;
}

}  // namespace qlora::cli
