#include "trainer/train/init_config.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/data/records.h"
#include "trainer/data/report.h"
#include "trainer/model/device.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/model/lora.h"
#include "trainer/model/summary.h"
#include "trainer/train/plan.h"
#include "trainer/train/preflight.h"

namespace qlora::train {

namespace {

// The dataset type of a file, from its first record's fields.
std::string detect_type(const std::string& path) {
  std::optional<data::Record> first;
  int64_t skipped = 0;
  data::read_records(path, false, &skipped, [&](std::vector<data::Record>& batch) {
    if (!first && !batch.empty()) first = std::move(batch.front());
  });
  if (!first) user_error(path, ": the dataset is empty");
  const auto& v = first->value;
  if (v.contains("messages")) return "chat";
  if (v.contains("instruction") && v.contains("output")) return "alpaca";
  if (v.contains("prompt") && v.contains("completion")) return "prompt_completion";
  if (v.contains("text")) return "text";
  std::string keys;
  for (auto it = v.begin(); it != v.end(); ++it) keys += (keys.empty() ? "\"" : ", \"") + it.key() + "\"";
  user_error(first->where,
             ": expected a record with \"messages\" (chat), \"instruction\" and \"output\" (alpaca), \"prompt\" and "
             "\"completion\" (prompt_completion) or \"text\" (text); it has ",
             keys.empty() ? "no field" : shorten(keys, 120));
}

// YAML scalars as plain or double-quoted text (paths may hold anything).
std::string yaml_string(const std::string& s) {
  bool plain = !s.empty();
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '.' || c == '_' || c == '-')) plain = false;
  if (plain && s != "true" && s != "false" && s != "null" && s != "yes" && s != "no") return s;
  std::string q = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

// One YAML line with its comment aligned at column 34.
class Writer {
 public:
  void line(const std::string& text, const std::string& comment = "") {
    os_ << text;
    if (!comment.empty()) os_ << std::string(text.size() < 33 ? 33 - text.size() : 1, ' ') << " # " << comment;
    os_ << "\n";
  }
  void comment(const std::string& text) {  // one "# " line per line of `text`
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);) os_ << "# " << l << "\n";
  }
  void blank() { os_ << "\n"; }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};

std::string fixed(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

struct Plan {
  std::string model, data, type, chat_template, chat_note, output_dir;
  std::string length_note, checkpointing_note;
  std::vector<std::string> memory_note;
  int64_t sequence_len = 2048;
  int64_t samples = 0;  // training samples of the data (0: no data)
  int64_t micro_batch = 1;
  bool checkpointing = false;
  int64_t rank = 64;
  double dropout = 0.1;
  double billions = 0;
  std::vector<std::pair<std::string, std::string>> targets;  // name, "in -> out"
};

std::string render(const Plan& p, const model::ModelConfig& mc) {
  Writer w;
  const std::string params = p.billions >= 1 ? fixed(p.billions, 1) + "B" : fixed(p.billions * 1000, 1) + "M";
  w.comment("Training config for " + p.model + " (" + (mc.architecture.empty() ? mc.model_type : mc.architecture) +
            ", " + params + " parameters, " + std::to_string(mc.num_hidden_layers) +
            " layers), written by qlora init.");
  w.comment("Settings of the QLoRA paper (Dettmers et al. 2023): NF4 base weights with double quantization,");
  w.comment("LoRA on every linear layer with r 64 / alpha 16 / dropout 0.1 (0.05 above 13B parameters),");
  w.comment("learning rate 2e-4 (constant after a short warmup), max grad norm 0.3, paged AdamW 32-bit,");
  w.comment("16 sequences per optimizer step. Relative paths resolve against the directory qlora runs in.");
  w.comment("See what the model will learn from: qlora preprocess on this file (--show 3 prints samples).");
  if (p.data.empty()) {
    w.comment("NOT TRAINABLE AS WRITTEN: replace the placeholder dataset path below with your data (or run");
    w.comment("qlora init again with --data FILE, which also sets the dataset type and sequence_len).");
  }
  w.blank();
  w.line("base_model: " + yaml_string(p.model));
  w.line("adapter: qlora", "NF4 base weights, 16-bit LoRA adapters");
  w.line("quantization:");
  w.line("  quant_type: nf4");
  w.line("  double_quant: true", "the absmax statistics quantized too");
  w.line("  blocksize: 64");
  w.line("  compute_dtype: auto", "bf16 on a GPU (the paper's), fp32 on the CPU");
  w.blank();
  w.line("lora_r: " + std::to_string(p.rank),
         p.rank < 64 ? "64, the paper's, is above the smallest layer dimension" : "");
  w.line("lora_alpha: 16");
  w.line(std::string("lora_dropout: ") + (p.dropout < 0.1 ? "0.05" : "0.1"),
         p.dropout < 0.1 ? "the paper's for models above 13B" : "");
  w.line("lora_target_modules:", "every linear layer of a decoder layer (in -> out features)");
  for (const auto& [name, shape] : p.targets) w.line("  - " + name, shape);
  w.blank();
  if (!p.chat_note.empty()) w.comment(p.chat_note);
  if (!p.chat_template.empty()) w.line("chat_template: " + p.chat_template);
  w.line("datasets:");
  if (p.data.empty()) {
    w.line("  - path: REPLACE_WITH_YOUR_DATA.jsonl", "EDIT: your training data");
    w.line("    type: alpaca", "alpaca | chat | prompt_completion | text");
  } else {
    w.line("  - path: " + yaml_string(p.data));
    w.line("    type: " + p.type, "detected from the first record");
  }
  w.line("sequence_len: " + std::to_string(p.sequence_len), p.length_note);
  w.line("sample_packing: false", "true packs several samples per row (preprocess shows the gain)");
  w.line("train_on_inputs: false", "loss on the responses only");
  w.line("# val_set_size: 0.02", "hold out 2% for eval loss and perplexity");
  w.blank();
  for (const std::string& l : p.memory_note) w.comment(l);
  w.line("micro_batch_size: " + std::to_string(p.micro_batch));
  w.line("gradient_accumulation_steps: " + std::to_string(std::max<int64_t>(1, 16 / p.micro_batch)),
         "16 sequences per optimizer step");
  w.line(std::string("gradient_checkpointing: ") + (p.checkpointing ? "true" : "false"), p.checkpointing_note);
  if (p.samples > 0) {
    const int64_t per_step = p.micro_batch * std::max<int64_t>(1, 16 / p.micro_batch);
    const int64_t steps = (p.samples + per_step - 1) / per_step;
    w.line("max_steps: " + std::to_string(steps),
           "one epoch of the " + std::to_string(p.samples) + " samples (or num_epochs: N instead)");
  } else {
    w.line("num_epochs: 1");
  }
  w.line("learning_rate: 2.0e-4");
  w.line("lr_scheduler: constant");
  w.line("warmup_ratio: 0.03");
  w.line("weight_decay: 0.0");
  w.line("max_grad_norm: 0.3");
  w.line("optimizer: paged_adamw_32bit", "paged_adamw_8bit: about 1/4 of the state");
  w.line("optimizer_device_budget: auto", "state stays resident while it fits, pages otherwise");
  w.blank();
  w.line("device: auto");
  w.line("seed: 42");
  w.line("output_dir: " + yaml_string(p.output_dir));
  w.line("logging_steps: 10");
  w.line("save_steps: 500", "a checkpoint every 500 steps, and at the end");
  w.line("save_total_limit: 3");
  return w.str();
}

}  // namespace

MicroBatchChoice choose_micro_batch(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device) {
  MicroBatchChoice c;
  const std::optional<Budget> avail = memory_budget(device);
  config::TrainConfig t = cfg;
  auto estimate = [&](int64_t m, bool gc) {
    t.micro_batch_size = m;
    t.gradient_checkpointing = gc;
    return estimate_memory(t, mc, device).total();
  };
  if (!avail) {
    c.estimate = estimate(1, false);
    return c;
  }
  c.available = avail->bytes;
  c.source = avail->source;
  for (bool gc : {false, true})
    for (int64_t m : {16, 8, 4, 2, 1}) {
      const uint64_t e = estimate(m, gc);
      if (e <= c.available) {
        c.micro_batch_size = m;
        c.gradient_checkpointing = gc;
        c.estimate = e;
        return c;
      }
    }
  c.micro_batch_size = 1;
  c.gradient_checkpointing = true;
  c.fits = false;
  c.estimate = estimate(1, true);
  return c;
}

std::string init_config_text(const InitOptions& o) {
  const model::ModelConfig mc = model::read_model_config(o.model);
  const std::unique_ptr<tok::Tokenizer> tk = model::load_base_tokenizer(o.model);
  Plan p;
  p.model = o.model;
  p.data = o.data;
  const model::ModelSummary sum = model::summarize(mc);
  p.billions = static_cast<double>(sum.total_parameters) / 1e9;
  p.dropout = p.billions > 13.0 ? 0.05 : 0.1;
  const std::filesystem::path mp(o.model);
  std::string name = (mp.extension() == ".gguf" ? mp.stem() : mp.filename()).string();  // runs/NAME-qlora
  if (name.empty()) name = mp.parent_path().filename().string();
  for (char& ch : name)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_')) ch = '_';
  p.output_dir = "runs/" + (name.empty() ? std::string("qlora") : name) + "-qlora";

  // LoRA targets: what lora_target_linear adapts on this architecture, named explicitly.
  config::LoraConfig all;
  all.target_linear = true;
  const std::vector<model::LinearSpec> specs = model::layer_linears(mc);
  for (const std::string& t : model::resolve_lora_targets(all, mc)) {
    const model::LinearSpec* s = model::find_linear(specs, t);
    p.targets.emplace_back(t, s ? std::to_string(s->in) + " -> " + std::to_string(s->out) : "");
    if (s) p.rank = std::min({p.rank, s->in, s->out});  // a rank above a layer's dimensions is refused
  }

  // The chat template.
  const bool own = !tk->chat_template().empty();
  const std::string origin = tk->chat_template_origin();
  const int64_t max_pos = mc.max_position_embeddings;
  if (!o.data.empty()) {
    p.type = detect_type(o.data);
    if (p.type == "chat" && !own) {
      p.chat_template = "chatml";
      p.chat_note =
          "The tokenizer ships no chat template: chatml stands in for it.\nSet the one the model was "
          "trained with, if any.";
    }
    config::DataSpec spec;
    config::DatasetSpec ds;
    ds.path = o.data;
    ds.type = p.type;
    spec.datasets = {ds};
    spec.sequence_len = INT32_MAX;  // nothing truncated: the lengths as they are
    spec.chat_template = p.chat_template;
    const data::Datasets d = data::build_datasets(spec, *tk);
    const data::LengthStats l = data::length_stats(d.stats.train_lengths);
    int64_t len = std::max<int64_t>(64, (l.p99 + 63) / 64 * 64);
    const bool capped = max_pos > 0 && len > max_pos;
    if (capped) len = max_pos;
    p.sequence_len = len;
    p.samples = d.stats.train_samples;
    p.length_note =
        std::to_string(l.count) + " samples: p99 " + std::to_string(l.p99) + " tokens, max " + std::to_string(l.max) +
        (capped ? "; max_position_embeddings " + std::to_string(max_pos) : "; p99 rounded up to a multiple of 64");
  } else {
    p.sequence_len = max_pos > 0 ? std::min<int64_t>(max_pos, 2048) : 2048;
    p.length_note = max_pos > 0 && max_pos < 2048 ? "max_position_embeddings" : "at most 2048 without --data";
  }
  if (p.chat_note.empty())
    p.chat_note = own ? "Chat data (type: chat) is rendered with the tokenizer's own chat template:\n" + origin + "."
                      : "The tokenizer ships no chat template: chat data needs chat_template: (chatml, llama3, ...).";

  // The micro-batch: render once to get the config our loader reads, estimate, render again.
  const at::Device device = model::resolve_device("auto");
  const config::TrainConfig cfg = config::parse_config(render(p, mc), "the generated config");
  const MicroBatchChoice mb = choose_micro_batch(cfg, mc, device);
  p.micro_batch = mb.micro_batch_size;
  p.checkpointing = mb.gradient_checkpointing;
  if (mb.available == 0) {
    p.memory_note = {"micro_batch_size: the memory available could not be read; the estimate for 1 is " +
                     fs::format_bytes(mb.estimate) + "."};
  } else {
    const std::string used = fs::format_bytes(mb.estimate), avail = fs::format_bytes(mb.available);
    if (mb.fits)
      p.memory_note = {"micro_batch_size: the largest of 1, 2, 4, 8, 16 whose memory estimate fits " + device.str() +
                           " when this was written:",
                       "about " + used + " of " + avail + " available (" + mb.source + ")."};
    else
      p.memory_note = {"micro_batch_size: not even 1 fits " + device.str() + " when this was written: about " + used,
                       "with gradient checkpointing, " + avail + " available (" + mb.source +
                           "); training refuses it (memory_check)."};
  }
  p.checkpointing_note = !mb.gradient_checkpointing ? "true: less activation memory, more compute"
                         : mb.fits                  ? "needed to fit: each layer recomputed in backward"
                                                    : "the least activation memory";
  const std::string text = render(p, mc);
  config::parse_config(text, "the generated config");  // what is written is what the loader reads
  return text;
}

}  // namespace qlora::train
