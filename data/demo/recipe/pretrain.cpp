// demo_pretrain: pretrains the embedded demo's small Llama base model from scratch on the generated
// corpus and writes it as a Hugging Face model directory (config.json + bf16 model.safetensors).
//
//   demo_pretrain --config data/demo/recipe/pretrain.json --corpus WORK/corpus.txt
//                 --tokenizer WORK/tokenizer.model --out DIR [--threads N] [--steps N]
//
// Full training (every weight), fp32, AdamW with decoupled weight decay, linear warmup then
// cosine decay, global-norm gradient clipping. Documents (corpus lines) are tokenized with
// libsentencepiece as [BOS] ids [EOS], shuffled each epoch and packed greedily into rows of
// seq_len tokens, each document attending only to itself with positions from 0 (rest padded,
// padding excluded from the loss). The last `val_lines` lines are
// held out for the validation loss. Deterministic for a given config and thread count.
//
// The decoder math lives in llama.h (shared with tests/demo, which checks it against
// transformers on the committed weights).
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <sentencepiece_processor.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/demo/recipe/llama.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/safetensors.h"

namespace {

namespace stdfs = std::filesystem;
using nlohmann::json;

// The "train" section of the recipe config.
struct TrainSettings {
  int64_t seq_len = 128;       // tokens per packed row
  int64_t batch_size = 32;     // rows per step
  int64_t steps = 1000;        // optimizer steps
  double lr = 3e-3;            // peak learning rate
  double min_lr_ratio = 0.1;   // cosine decays to lr * min_lr_ratio
  int64_t warmup_steps = 100;  // linear warmup from 0
  double weight_decay = 0.1;   // on matrices (linear, embedding) only, not on norms
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;    // global L2 norm
  uint64_t seed = 1234;      // init and shuffling
  int64_t val_lines = 2000;  // last lines of the corpus held out
  int64_t eval_every = 200;  // steps between validation losses (and at the end)
  int64_t log_every = 20;

  static TrainSettings from_json(const json& j) {
    TrainSettings s;
    s.seq_len = j.value("seq_len", s.seq_len);
    s.batch_size = j.value("batch_size", s.batch_size);
    s.steps = j.value("steps", s.steps);
    s.lr = j.value("lr", s.lr);
    s.min_lr_ratio = j.value("min_lr_ratio", s.min_lr_ratio);
    s.warmup_steps = j.value("warmup_steps", s.warmup_steps);
    s.weight_decay = j.value("weight_decay", s.weight_decay);
    s.beta1 = j.value("beta1", s.beta1);
    s.beta2 = j.value("beta2", s.beta2);
    s.eps = j.value("eps", s.eps);
    s.grad_clip = j.value("grad_clip", s.grad_clip);
    s.seed = j.value("seed", s.seed);
    s.val_lines = j.value("val_lines", s.val_lines);
    s.eval_every = j.value("eval_every", s.eval_every);
    s.log_every = j.value("log_every", s.log_every);
    return s;
  }
};

struct Args {
  stdfs::path config, corpus, tokenizer, out;
  int threads = 2;
  int64_t steps = -1;  // overrides train.steps when >= 0
};

Args parse_args(int argc, char** argv) {
  Args a;
  auto usage = [] {
    std::cerr << "usage: demo_pretrain --config FILE --corpus FILE --tokenizer FILE --out DIR "
                 "[--threads N] [--steps N]\n";
    std::exit(2);
  };
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) usage();
    std::string v = argv[++i];
    if (k == "--config")
      a.config = v;
    else if (k == "--corpus")
      a.corpus = v;
    else if (k == "--tokenizer")
      a.tokenizer = v;
    else if (k == "--out")
      a.out = v;
    else if (k == "--threads")
      a.threads = std::stoi(v);
    else if (k == "--steps")
      a.steps = std::stoll(v);
    else
      usage();
  }
  if (a.config.empty() || a.corpus.empty() || a.tokenizer.empty() || a.out.empty()) usage();
  return a;
}

using Doc = std::vector<int32_t>;

std::vector<Doc> read_corpus(const stdfs::path& path, const sentencepiece::SentencePieceProcessor& sp,
                             const demo::LlamaConfig& c) {
  std::ifstream in(path);
  if (!in) qlora::user_error(path.string(), ": cannot open");
  std::vector<Doc> docs;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    Doc d{int32_t(c.bos_token_id)};
    std::vector<int> ids;
    auto st = sp.Encode(line, &ids);
    if (!st.ok()) qlora::user_error(path.string(), ":", docs.size() + 1, ": ", st.ToString());
    d.insert(d.end(), ids.begin(), ids.end());
    d.push_back(int32_t(c.eos_token_id));
    docs.push_back(std::move(d));
  }
  return docs;
}

// Rows of packed documents: each document keeps to itself (attention only within it, positions
// restarting at 0), exactly as it would look alone, so the model sees what fine-tuning and
// generation will show it: [BOS] text... at positions 0, 1, ...
struct Packed {
  at::Tensor ids;        // [N, T] token ids, pad_id after the last document
  at::Tensor labels;     // [N, T] = ids, -100 on padding and on each document's BOS (not predictable)
  at::Tensor positions;  // [N, T] position within the document
  at::Tensor doc;        // [N, T] document index within the row, -1 on padding

  // position_ids and the attention mask [B, T, T] (causal, same document) of rows [b, e).
  std::pair<at::Tensor, at::Tensor> attention(int64_t b, int64_t e) const {
    auto d = doc.slice(0, b, e);
    const int64_t T = d.size(1);
    auto same = d.unsqueeze(2).eq(d.unsqueeze(1));
    auto causal = at::ones({T, T}, at::kBool).tril();
    return {positions.slice(0, b, e), same.logical_and(causal)};
  }
};

// Packs docs (in the given order) greedily into rows of T tokens. A doc longer than T is cut.
Packed pack(const std::vector<Doc>& docs, const std::vector<size_t>& order, int64_t T, int64_t pad_id) {
  std::vector<std::vector<size_t>> rows(1);  // doc indices per row
  int64_t used = 0;
  for (size_t i : order) {
    const int64_t n = std::min<int64_t>(docs[i].size(), T);
    if (used + n > T) {
      rows.emplace_back();
      used = 0;
    }
    rows.back().push_back(i);
    used += n;
  }
  const int64_t N = rows.size();
  Packed p{at::full({N, T}, pad_id, at::kLong), at::full({N, T}, -100, at::kLong), at::zeros({N, T}, at::kLong),
           at::full({N, T}, -1, at::kLong)};
  auto pi = p.ids.accessor<int64_t, 2>();
  auto pl = p.labels.accessor<int64_t, 2>();
  auto pp = p.positions.accessor<int64_t, 2>();
  auto pd = p.doc.accessor<int64_t, 2>();
  for (int64_t r = 0; r < N; ++r) {
    int64_t t = 0;
    for (size_t k = 0; k < rows[r].size(); ++k) {
      const Doc& d = docs[rows[r][k]];
      const int64_t n = std::min<int64_t>(d.size(), T);
      for (int64_t j = 0; j < n; ++j, ++t) {
        pi[r][t] = d[j];
        pl[r][t] = j == 0 ? -100 : d[j];
        pp[r][t] = j;
        pd[r][t] = k;
      }
    }
  }
  return p;
}

// Fisher-Yates with a standard-specified engine, so the order is the same on every platform.
std::vector<size_t> shuffled(size_t n, std::mt19937_64& rng) {
  std::vector<size_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = i;
  for (size_t i = n; i > 1; --i) std::swap(p[i - 1], p[rng() % i]);
  return p;
}

double lr_at(const TrainSettings& s, int64_t step) {  // step counts from 0
  if (step < s.warmup_steps) return s.lr * double(step + 1) / double(s.warmup_steps);
  const double t = double(step - s.warmup_steps) / double(std::max<int64_t>(1, s.steps - s.warmup_steps));
  const double min_lr = s.lr * s.min_lr_ratio;
  return min_lr + 0.5 * (s.lr - min_lr) * (1.0 + std::cos(M_PI * std::min(1.0, t)));
}

// AdamW with decoupled weight decay (PyTorch's torch.optim.AdamW update).
struct AdamW {
  struct State {
    at::Tensor m, v;
    bool decay;
  };
  std::map<std::string, State> state;
  int64_t t = 0;

  explicit AdamW(const demo::Weights& w) {
    for (const auto& [n, p] : w) state[n] = {at::zeros_like(p), at::zeros_like(p), n.find("norm") == std::string::npos};
  }
  void step(demo::Weights& w, const TrainSettings& s, double lr) {
    c10::NoGradGuard ng;
    ++t;
    const double bc1 = 1.0 - std::pow(s.beta1, t), bc2 = 1.0 - std::pow(s.beta2, t);
    for (auto& [n, p] : w) {
      State& st = state.at(n);
      const at::Tensor& g = p.grad();
      if (st.decay && s.weight_decay > 0) p.mul_(1.0 - lr * s.weight_decay);
      st.m.mul_(s.beta1).add_(g, 1.0 - s.beta1);
      st.v.mul_(s.beta2).addcmul_(g, g, 1.0 - s.beta2);
      auto denom = (st.v / bc2).sqrt_().add_(s.eps);
      p.addcdiv_(st.m, denom, -lr / bc1);
    }
  }
};

double clip_grad_norm(demo::Weights& w, double max_norm) {
  c10::NoGradGuard ng;
  double sq = 0;
  for (auto& [n, p] : w) sq += p.grad().pow(2).sum().item<double>();
  const double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm)
    for (auto& [n, p] : w) p.mutable_grad().mul_(max_norm / (norm + 1e-6));
  return norm;
}

double eval_loss(const demo::Weights& w, const demo::LlamaConfig& c, const Packed& val, int64_t batch) {
  c10::NoGradGuard ng;
  double sum = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < val.ids.size(0); b += batch) {
    const int64_t e = std::min(b + batch, val.ids.size(0));
    auto y = val.labels.slice(0, b, e);
    auto [pos, allowed] = val.attention(b, e);
    const int64_t n = y.slice(1, 1, y.size(1)).ne(-100).sum().item<int64_t>();
    sum += demo::causal_lm_loss(demo::llama_logits(w, c, val.ids.slice(0, b, e), pos, allowed), y).item<double>() * n;
    count += n;
  }
  return sum / std::max<int64_t>(1, count);
}

void export_hf(const demo::Weights& w, const demo::LlamaConfig& c, const stdfs::path& out) {
  stdfs::create_directories(out);
  qlora::io::SafetensorsWriter writer;
  for (const auto& [n, p] : w) writer.add(n, p.detach().to(at::kBFloat16).contiguous());
  writer.write(out / "model.safetensors");
  qlora::fs::write_file_atomic(out / "config.json", c.to_hf_json().dump(2) + "\n");
  json gen = {{"bos_token_id", c.bos_token_id},
              {"eos_token_id", c.eos_token_id},
              {"pad_token_id", c.pad_token_id},
              {"do_sample", false}};
  qlora::fs::write_file_atomic(out / "generation_config.json", gen.dump(2) + "\n");
}

int run(const Args& args) {
  const json cfg = json::parse(qlora::fs::read_file(args.config));
  const demo::LlamaConfig c = demo::LlamaConfig::from_hf_json(cfg.at("model"));
  TrainSettings s = TrainSettings::from_json(cfg.at("train"));
  if (args.steps >= 0) s.steps = args.steps;
  at::set_num_threads(args.threads);
  at::manual_seed(s.seed);
  std::mt19937_64 rng(s.seed);

  sentencepiece::SentencePieceProcessor sp;
  if (auto st = sp.Load(args.tokenizer.string()); !st.ok())
    qlora::user_error(args.tokenizer.string(), ": ", st.ToString());
  if (sp.GetPieceSize() != c.vocab_size)
    qlora::user_error(args.config.string(), ": model.vocab_size ", c.vocab_size, " but the tokenizer has ",
                      sp.GetPieceSize(), " pieces");

  auto docs = read_corpus(args.corpus, sp, c);
  if (int64_t(docs.size()) <= s.val_lines) qlora::user_error(args.corpus.string(), ": too few lines");
  std::vector<Doc> val(docs.end() - s.val_lines, docs.end());
  docs.resize(docs.size() - s.val_lines);
  std::vector<size_t> val_order(val.size());
  for (size_t i = 0; i < val.size(); ++i) val_order[i] = i;
  const Packed val_rows = pack(val, val_order, s.seq_len, c.pad_token_id);
  int64_t ntok = 0;
  for (const auto& d : docs) ntok += d.size();

  demo::Weights w = demo::llama_init(c);
  int64_t nparam = 0;
  for (auto& [n, p] : w) {
    p.set_requires_grad(true);
    nparam += p.numel();
  }
  AdamW opt(w);
  std::printf("demo_pretrain: %.2fM parameters, %zu train docs (%lld tokens), %zu val docs, %d threads\n", nparam / 1e6,
              docs.size(), (long long)ntok, val.size(), args.threads);

  Packed rows;  // the current epoch's packed rows
  int64_t row = 0, epoch = 0;
  auto t0 = std::chrono::steady_clock::now();
  double loss_acc = 0;
  int64_t loss_n = 0, tok_seen = 0;
  for (int64_t step = 0; step < s.steps; ++step) {
    if (!rows.ids.defined() || row + s.batch_size > rows.ids.size(0)) {  // new epoch
      rows = pack(docs, shuffled(docs.size(), rng), s.seq_len, c.pad_token_id);
      row = 0;
      ++epoch;
    }
    auto x = rows.ids.slice(0, row, row + s.batch_size), y = rows.labels.slice(0, row, row + s.batch_size);
    auto [pos, allowed] = rows.attention(row, row + s.batch_size);
    row += s.batch_size;

    auto loss = demo::causal_lm_loss(demo::llama_logits(w, c, x, pos, allowed), y);
    loss.backward();
    const double gnorm = clip_grad_norm(w, s.grad_clip);
    const double lr = lr_at(s, step);
    opt.step(w, s, lr);
    for (auto& [n, p] : w) p.mutable_grad().reset();

    loss_acc += loss.item<double>();
    ++loss_n;
    tok_seen += y.ne(-100).sum().item<int64_t>();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if ((step + 1) % s.log_every == 0 || step + 1 == s.steps) {
      std::printf("step %lld/%lld epoch %lld loss %.4f lr %.2e gnorm %.2f tokens %lld %.0f tok/s %.0fs\n",
                  (long long)(step + 1), (long long)s.steps, (long long)epoch, loss_acc / loss_n, lr, gnorm,
                  (long long)tok_seen, tok_seen / secs, secs);
      std::fflush(stdout);
      loss_acc = 0;
      loss_n = 0;
    }
    if ((step + 1) % s.eval_every == 0 || step + 1 == s.steps) {
      std::printf("step %lld val_loss %.4f\n", (long long)(step + 1), eval_loss(w, c, val_rows, s.batch_size));
      std::fflush(stdout);
      export_hf(w, c, args.out);  // also a snapshot: a stopped run leaves its latest weights
    }
  }
  std::printf("demo_pretrain: wrote %s\n", args.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const qlora::UserError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
