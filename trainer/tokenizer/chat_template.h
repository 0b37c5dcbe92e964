// Chat templates: a model's own Jinja `chat_template` (or a built-in one for models that ship
// none) rendered like transformers' apply_chat_template(messages, tokenize=False, ...), and the
// byte spans of the assistant turns that training learns.
//
// The rendered text already holds every special token the model expects (BOS included, when the
// template writes it): it is tokenized WITHOUT adding special tokens again (see trainer/data).
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trainer/jinja/template.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::tok {

class ChatTemplate {
 public:
  using Vars = jinja::Template::Context;
  using Span = std::pair<size_t, size_t>;  // byte range [begin, end) of the rendered text

  // `source` is Jinja text; `origin` names it in messages. bos_token/eos_token/pad_token/
  // unk_token come from `special` (only those the tokenizer has, as HF's special_tokens_map).
  ChatTemplate(std::string_view source, std::string origin, const SpecialTokens& special);

  // DataSpec::chat_template: "" = the tokenizer's own (UserError when it ships none), the name of
  // one of the tokenizer's named templates (e.g. "tool_use"), a built-in name (chatml, llama3,
  // mistral, qwen2_5, gemma), or Jinja text (anything containing "{{" or "{%").
  static ChatTemplate resolve(const std::string& choice, const Tokenizer& tokenizer);
  static std::optional<std::string> builtin_source(std::string_view name);
  static std::vector<std::string> builtin_names();

  // apply_chat_template(messages, tokenize=False, add_generation_prompt=...). `messages` is a
  // list of dicts (role, content, and whatever else the template reads: tool_calls, ...); `extra`
  // adds variables (tools, date_string, ...). Template errors, raise_exception included, are
  // UserError "<origin> line N: ...".
  std::string render(const jinja::Value& messages, bool add_generation_prompt, const Vars& extra = {}) const;

  struct Rendered {
    std::string text;                   // the whole conversation, add_generation_prompt false
    std::vector<Span> assistant_spans;  // what the model learns to write, in order
  };
  // The conversation and its assistant spans. With {% generation %} blocks in the template, the
  // spans are those blocks (as transformers' return_assistant_tokens_mask). Otherwise, for
  // assistant message i the span is what rendering messages[:i+1] adds after rendering
  // messages[:i] with the generation prompt: the reply and the template's end-of-turn text
  // (e.g. "Hi!<|im_end|>\n"), located in the full conversation (templates whose prefixes render
  // differently, like Mistral v0.3's, are handled by rendering the reply as a marker). UserError
  // if an assistant message cannot be located.
  Rendered render_for_training(const jinja::Value& messages, const Vars& extra = {}) const;

  // Whether every message of `messages` made it into `rendered` (their rendering): a message
  // with text content that is neither in the text (as is or trimmed) nor shows up when its
  // content is replaced by a marker was left out by the template. If the template's source never
  // names that message's role (as a quoted string), the template does not handle the role:
  // UserError "FIELD[i].role: \"R\": ...". If it does name it, leaving the message out is the
  // template's choice (e.g. a system prompt it does not support): `warn` is called once per role
  // and template with one line.
  // `field` names the message list in messages (the data file's key, e.g. "messages").
  void check_rendered_messages(const jinja::Value& messages, const std::string& rendered, const Vars& extra,
                               const std::string& field, const std::function<void(const std::string&)>& warn) const;

  const jinja::Template& jinja() const { return tmpl_; }

 private:
  Vars vars(const jinja::Value& messages, bool add_generation_prompt, const Vars& extra) const;
  std::optional<Span> locate_by_sentinel(const jinja::ValueList& all, size_t i, const std::string& text, size_t cursor,
                                         const Vars& extra) const;

  jinja::Template tmpl_;
  std::string source_;
  Vars special_;
  struct Warned;                    // roles already reported by check_rendered_messages
  std::shared_ptr<Warned> warned_;  // (shared by copies)
};

}  // namespace qlora::tok
