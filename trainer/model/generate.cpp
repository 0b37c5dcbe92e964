#include "trainer/model/generate.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::model {

int32_t choose_token(const at::Tensor& logits, const GenerateOptions& opt, at::Generator& gen) {
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

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  TORCH_CHECK(!prompt.empty(), "generate: empty prompt");
  at::NoGradGuard no_grad;
  const bool was_training = model.training;
  model.training = false;
  at::Generator gen = at::detail::createCPUGenerator(opt.seed);
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::vector<int32_t> out;
  KVCache cache;
  cache.reserve = static_cast<int64_t>(prompt.size()) + opt.max_new_tokens;
  std::vector<int32_t> pending = ids;  // tokens not yet in the cache
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    at::Tensor h;
    if (opt.use_cache) {
      at::Tensor input = at::tensor(std::vector<int64_t>(pending.begin(), pending.end()), at::kLong).view({1, -1});
      h = model.forward_cached(input.to(model.device), cache);
    } else {
      at::Tensor input = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).view({1, -1});
      h = model.forward(input.to(model.device));
    }
    at::Tensor logits = model.logits(h.select(1, h.size(1) - 1)).squeeze(0).to(at::kFloat).cpu();
    const int32_t next = choose_token(logits, opt, gen);
    out.push_back(next);
    if (on_token) on_token(next);
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), next) != opt.stop_ids.end()) break;
    ids.push_back(next);
    pending = {next};
  }
  model.training = was_training;
  return out;
}

namespace {
void add_ids(const nlohmann::json& j, std::vector<int32_t>& out) {
  if (j.is_number_integer()) out.push_back(j.get<int32_t>());
  if (j.is_array())
    for (const auto& x : j)
      if (x.is_number_integer()) out.push_back(x.get<int32_t>());
}
}  // namespace

std::vector<int32_t> stop_ids_of(const std::filesystem::path& model_dir, const ModelConfig& config,
                                 const tok::Tokenizer* tokenizer) {
  std::vector<int32_t> ids;
  for (int64_t e : config.eos_token_ids) ids.push_back(static_cast<int32_t>(e));
  const auto gc = model_dir / "generation_config.json";
  if (std::filesystem::is_regular_file(gc)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(fs::read_file(gc));
    } catch (const nlohmann::json::exception& e) { user_error(gc.string(), ": not valid JSON: ", json_error_text(e)); }
    if (j.is_object() && j.contains("eos_token_id")) add_ids(j["eos_token_id"], ids);
  }
  if (tokenizer && tokenizer->special().eos_id) ids.push_back(*tokenizer->special().eos_id);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

namespace {
// True when `s` ends with U+FFFD (EF BF BD): a piece whose bytes are not complete yet.
bool ends_incomplete(const std::string& s) { return s.ends_with("\xEF\xBF\xBD"); }
}  // namespace

std::string TextStream::push(int32_t id) {
  ids_.push_back(id);
  // A byte-fallback piece (<0xNN>) joins the bytes around it; if the run turns out not to be valid
  // UTF-8, the decoder replaces every byte of it (ASCII ones too) with U+FFFD. Wait for the run to end.
  const std::string piece = tok_.id_to_token(id);
  if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>') return {};
  std::string all = tok_.decode(ids_, skip_special_);
  if (ends_incomplete(all)) return {};
  // Normally the old text is a prefix of the new one. Should decoding more ids re-shape earlier
  // text, what was printed cannot be taken back: print past its length.
  std::string fresh = all.size() > printed_.size() ? all.substr(printed_.size()) : std::string();
  printed_ = std::move(all);
  return fresh;
}

std::string TextStream::flush() {
  std::string all = tok_.decode(ids_, skip_special_);
  std::string fresh = all.size() > printed_.size() ? all.substr(printed_.size()) : std::string();
  printed_ = std::move(all);
  return fresh;
}

}  // namespace qlora::model
