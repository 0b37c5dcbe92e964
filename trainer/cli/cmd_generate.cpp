// qlora generate: text from a model (optionally with a trained adapter), streamed to stdout token
// by token. --prompt TEXT: one completion of the raw text (tokenized with the tokenizer's special
// tokens, BOS as transformers adds it). --chat: the tokenizer's chat template (or the one the
// adapter was trained with) over a conversation read line by line from stdin; with --prompt, one
// user message. Only generated text goes to stdout; load and speed lines go to stderr.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "trainer/cli/commands.h"
#include "trainer/cli/inference.h"
#include "trainer/common/error.h"
#include "trainer/model/generate.h"
#include "trainer/tokenizer/chat_template.h"

namespace qlora::cli {

namespace {

struct Generated {
  std::string text;
  int64_t tokens = 0;
  bool stopped = false;  // ended at a stop id (not at max_new_tokens)
};

// Generates from `prompt`, printing text as it becomes final, then a newline.
Generated stream(model::Model& m, const tok::Tokenizer& tk, const std::vector<int32_t>& prompt,
                 const model::GenerateOptions& go) {
  model::TextStream ts(tk, /*skip_special_tokens=*/true);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> out = model::generate(m, prompt, go, [&](int32_t id) {
    std::string piece = ts.push(id);
    if (!piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
  });
  std::string rest = ts.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Generated g;
  g.text = ts.text();
  g.tokens = static_cast<int64_t>(out.size());
  g.stopped = !out.empty() && std::find(go.stop_ids.begin(), go.stop_ids.end(), out.back()) != go.stop_ids.end();
  std::fprintf(stderr, "qlora: %lld prompt + %lld new tokens in %.2f s (%.1f tokens/s)%s\n",
               static_cast<long long>(prompt.size()), static_cast<long long>(g.tokens), s, s > 0 ? g.tokens / s : 0.0,
               g.stopped ? "" : ", stopped at --max-new-tokens");
  return g;
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  if (!a.chat && a.prompt.empty()) user_error("generate: give --prompt TEXT or --chat");
  if (a.max_new_tokens < 1) user_error("--max-new-tokens: expected at least 1, got ", a.max_new_tokens);
  if (a.temperature < 0) user_error("--temperature: expected >= 0, got ", a.temperature);
  if (a.top_k < 0) user_error("--top-k: expected >= 0, got ", a.top_k);
  if (!(a.top_p > 0 && a.top_p <= 1)) user_error("--top-p: expected a value in (0, 1], got ", a.top_p);

  InferenceModel im = load_inference_model(a.model, a.adapter, a.device, a.load_in_4bit);
  std::fprintf(stderr, "qlora: %s\n", im.description.c_str());
  const tok::Tokenizer& tk = *im.tokenizer;
  model::GenerateOptions go;
  go.max_new_tokens = a.max_new_tokens;
  go.temperature = a.temperature;
  go.top_k = a.top_k;
  go.top_p = a.top_p;
  go.seed = a.seed;
  if (!a.ignore_eos) go.stop_ids = model::stop_ids_of(im.model_dir, im.model.config, &tk);

  if (!a.chat) {
    std::vector<int32_t> prompt = tk.encode(a.prompt, /*add_special_tokens=*/true);
    if (prompt.empty()) user_error("--prompt: tokenizes to no tokens");
    stream(im.model, tk, prompt, go);
    return 0;
  }

  // Chat: the template the adapter was trained with, else the tokenizer's own.
  const std::string choice = im.train ? im.train->data.chat_template : std::string();
  tok::ChatTemplate tmpl = tok::ChatTemplate::resolve(choice, tk);
  tok::ChatTemplate::Vars extra;
  if (im.train)
    for (const auto& [key, text] : im.train->data.chat_template_kwargs) {
      nlohmann::ordered_json v = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
      extra[key] = v.is_discarded() ? jinja::Value(text) : jinja::Value::from_json(v);
    }
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  auto reply_to = [&](const std::string& user) {
    messages.push_back({{"role", "user"}, {"content", user}});
    std::string text = tmpl.render(jinja::Value::from_json(messages), /*add_generation_prompt=*/true, extra);
    // The rendered text holds the special tokens the template writes: no second BOS.
    std::vector<int32_t> prompt = tk.encode(text, /*add_special_tokens=*/false);
    Generated g = stream(im.model, tk, prompt, go);
    messages.push_back({{"role", "assistant"}, {"content", g.text}});
  };
  if (!a.prompt.empty()) {
    reply_to(a.prompt);
    return 0;
  }
  std::fprintf(stderr, "qlora: chat: one message per line; /reset starts over; end with Ctrl-D\n");
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    if (line == "/reset") {
      messages = nlohmann::ordered_json::array();
      continue;
    }
    reply_to(line);
  }
  return 0;
}

}  // namespace qlora::cli
