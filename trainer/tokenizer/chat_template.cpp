// Chat templates: resolution (own / built-in / inline), rendering, assistant spans.
#include "trainer/tokenizer/chat_template.h"

#include <mutex>
#include <set>
#include <stdexcept>

#include "trainer/common/error.h"

namespace qlora::tok {

namespace {

// Built-in templates for models that ship none. Each renders plain role/content conversations
// exactly as the named model family's published template does (tests/tokenizer compare them with
// jinja2 rendering the published text); tools and other roles need the model's own template.
struct Builtin {
  const char* name;
  const char* source;
};

const Builtin kBuiltins[] = {
    {"chatml", R"JINJA(
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)JINJA"},
    // Llama 3 / 3.1 Instruct turns (without 3.1's date and tools preamble).
    {"llama3", R"JINJA(
{%- for message in messages %}
    {%- if loop.first %}
        {{- bos_token }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)JINJA"},
    // Mistral 7B Instruct v0.3: the system message joins the last user message.
    {"mistral", R"JINJA(
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] != 'user' and message['role'] != 'assistant' %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- else %}
        {{- ' ' + message['content'] | trim + eos_token }}
    {%- endif %}
{%- endfor %}
)JINJA"},
    // Qwen2.5 Instruct: ChatML with a default system message.
    {"qwen2_5", R"JINJA(
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('The built-in qwen2_5 template supports system, user and assistant roles; use the model\'s own template for tools') }}
    {%- endif %}
    {%- if not (loop.first and message['role'] == 'system') %}
        {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)JINJA"},
    // Gemma / Gemma 2 instruct: no system role, the assistant is "model".
    {"gemma", R"JINJA(
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {{- raise_exception('System role not supported') }}
{%- endif %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
    {{- '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
)JINJA"},
};

std::string names_list() {
  std::string s;
  for (const auto& b : kBuiltins) s += (s.empty() ? "" : ", ") + std::string(b.name);
  return s;
}

}  // namespace

struct ChatTemplate::Warned {
  std::mutex mu;
  std::set<std::string> roles;
};

ChatTemplate::ChatTemplate(std::string_view source, std::string origin, const SpecialTokens& special)
    : tmpl_(source, std::move(origin)), source_(source), warned_(std::make_shared<Warned>()) {
  if (!special.bos_token.empty()) special_["bos_token"] = jinja::Value(special.bos_token);
  if (!special.eos_token.empty()) special_["eos_token"] = jinja::Value(special.eos_token);
  if (!special.unk_token.empty()) special_["unk_token"] = jinja::Value(special.unk_token);
  if (!special.pad_token.empty()) special_["pad_token"] = jinja::Value(special.pad_token);
}

std::optional<std::string> ChatTemplate::builtin_source(std::string_view name) {
  for (const auto& b : kBuiltins)
    if (name == b.name) return std::string(b.source);
  return std::nullopt;
}

std::vector<std::string> ChatTemplate::builtin_names() {
  std::vector<std::string> v;
  for (const auto& b : kBuiltins) v.emplace_back(b.name);
  return v;
}

namespace {
// The tokenizer's own template as messages name it: the file it came from, and its name.
std::string own_label(const Tokenizer& tokenizer, const std::string& name) {
  std::string l =
      tokenizer.chat_template_origin().empty() ? "the tokenizer's chat template" : tokenizer.chat_template_origin();
  return name.empty() ? l : l + " \"" + name + "\"";
}
}  // namespace

ChatTemplate ChatTemplate::resolve(const std::string& choice, const Tokenizer& tokenizer) {
  const auto& named = tokenizer.named_chat_templates();
  if (choice.empty()) {
    if (tokenizer.chat_template().empty()) {
      std::string own;
      for (const auto& [name, src] : named) own += (own.empty() ? "" : ", ") + name;
      user_error("chat_template: the tokenizer has no default chat template; set chat_template to one of ",
                 own.empty() ? "" : own + " (the tokenizer's), ", names_list(), " (or to Jinja text)");
    }
    return ChatTemplate(tokenizer.chat_template(), own_label(tokenizer, ""), tokenizer.special());
  }
  if (auto it = named.find(choice); it != named.end())
    return ChatTemplate(it->second, own_label(tokenizer, choice), tokenizer.special());
  if (auto src = builtin_source(choice))
    return ChatTemplate(*src, "built-in chat template " + choice, tokenizer.special());
  if (choice.find("{{") != std::string::npos || choice.find("{%") != std::string::npos)
    return ChatTemplate(choice, "chat_template", tokenizer.special());
  user_error("chat_template: unknown template \"", choice, "\" (expected one of ", names_list(),
             ", Jinja text, or empty for the tokenizer's own)");
}

// As transformers does before rendering: keys whose value is None are dropped, and a reasoning
// given under any of its names is also passed as "thinking" (first) and "reasoning_content".
static jinja::Value normalize_messages(const jinja::Value& messages) {
  if (!messages.is_list()) return messages;
  jinja::ValueList out;
  out.reserve(messages.list().size());
  for (const auto& m : messages.list()) {
    if (!m.is_dict()) {
      out.push_back(m);
      continue;
    }
    jinja::ValueDict d;
    for (const auto& [k, v] : m.dict().items)
      if (!v.is_none()) d.items.emplace_back(k, v);
    const jinja::Value* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"})
      if (!reasoning) reasoning = d.find(key);
    if (reasoning) {
      jinja::Value r = *reasoning;
      // {"thinking": r, **message, "reasoning_content": r}: "thinking" comes first either way.
      auto it = std::find_if(d.items.begin(), d.items.end(), [](const auto& kv) { return kv.first == "thinking"; });
      jinja::Value thinking = it != d.items.end() ? it->second : r;
      if (it != d.items.end()) d.items.erase(it);
      d.items.insert(d.items.begin(), {"thinking", thinking});
      d.set("reasoning_content", r);
    }
    out.emplace_back(std::move(d));
  }
  return jinja::Value(std::move(out));
}

ChatTemplate::Vars ChatTemplate::vars(const jinja::Value& messages, bool add_generation_prompt,
                                      const Vars& extra) const {
  Vars v = special_;
  // transformers always passes these two, None unless given.
  v["tools"] = jinja::Value(nullptr);
  v["documents"] = jinja::Value(nullptr);
  for (const auto& [k, x] : extra) v[k] = x;
  v["messages"] = normalize_messages(messages);
  v["add_generation_prompt"] = jinja::Value(add_generation_prompt);
  return v;
}

std::string ChatTemplate::render(const jinja::Value& messages, bool add_generation_prompt, const Vars& extra) const {
  return tmpl_.render(vars(messages, add_generation_prompt, extra)).text;
}

// For templates whose prefixes render differently from the whole conversation (Mistral v0.3
// moves the system message to the last user turn): render with this reply replaced by a marker,
// once alone (messages[:i+1], to learn the end-of-turn text that follows a reply) and once in
// the whole conversation (to learn where the reply starts); the reply's rendered length is the
// difference in length between the real and the marked conversation.
std::optional<ChatTemplate::Span> ChatTemplate::locate_by_sentinel(const jinja::ValueList& all, size_t i,
                                                                   const std::string& text, size_t cursor,
                                                                   const Vars& extra) const {
  static const std::string kMarker = "QloraAssistantReplyMarker", kPrevMarker = "QloraPreviousMessageMarker";
  auto with_content = [](const jinja::Value& m, const std::string& c) {
    jinja::ValueDict d = m.dict();
    d.set("content", jinja::Value(c));
    return jinja::Value(std::move(d));
  };
  auto render = [&](const jinja::ValueList& msgs, size_t n, bool agp) {
    return tmpl_.render(vars(jinja::Value(jinja::ValueList(msgs.begin(), msgs.begin() + n)), agp, extra)).text;
  };
  const jinja::Value* content = all[i].dict().find("content");
  if (!content || !content->is_string()) return std::nullopt;
  jinja::ValueList marked = all;
  marked[i] = with_content(all[i], kMarker);
  try {
    std::string turn = render(marked, i + 1, false);
    std::string whole = render(marked, marked.size(), false);
    size_t p = turn.rfind(kMarker), q = whole.find(kMarker, cursor);
    if (p == std::string::npos || q == std::string::npos || whole.find(kMarker, q + 1) != std::string::npos)
      return std::nullopt;
    std::string tail = turn.substr(p + kMarker.size());
    if (text.size() + kMarker.size() < whole.size()) return std::nullopt;
    size_t reply_end = q + (text.size() + kMarker.size() - whole.size());
    if (text.compare(0, q, whole, 0, q) != 0 || text.compare(reply_end, tail.size(), tail) != 0) return std::nullopt;
    // The turn may write something of its own between the generation prompt and the reply
    // (Mistral's " "): that is the model's output too. With the previous message also marked, the
    // text between the two markers is that message's closing, the generation prompt, and this
    // lead; rendering the head with the generation prompt gives the first two.
    size_t begin = q;
    const jinja::Value* prev = i > 0 && all[i - 1].is_dict() ? all[i - 1].dict().find("content") : nullptr;
    if (prev && prev->is_string()) {
      jinja::ValueList both = marked;
      both[i - 1] = with_content(all[i - 1], kPrevMarker);
      std::string whole2 = render(both, both.size(), false), head2 = render(both, i, true);
      size_t a = whole2.find(kPrevMarker), b = whole2.find(kMarker), h = head2.rfind(kPrevMarker);
      if (a != std::string::npos && b != std::string::npos && h != std::string::npos && a < b) {
        std::string between = whole2.substr(a + kPrevMarker.size(), b - a - kPrevMarker.size());
        std::string closing = head2.substr(h + kPrevMarker.size());
        if (between.starts_with(closing)) {
          size_t lead = between.size() - closing.size();
          if (q >= cursor + lead && text.compare(q - lead, lead, between, closing.size(), lead) == 0) begin = q - lead;
        }
      }
    }
    return Span(begin, reply_end + tail.size());
  } catch (const UserError&) { return std::nullopt; }
}

ChatTemplate::Rendered ChatTemplate::render_for_training(const jinja::Value& messages, const Vars& extra) const {
  if (!messages.is_list()) throw std::logic_error("render_for_training: messages must be a list");
  jinja::Template::Output full = tmpl_.render(vars(messages, false, extra));
  Rendered r;
  r.text = std::move(full.text);
  if (tmpl_.has_generation_blocks()) {
    for (const auto& s : full.generation_spans)
      if (s.second > s.first) r.assistant_spans.push_back(s);
    return r;
  }

  const jinja::ValueList& all = messages.list();
  size_t cursor = 0;  // spans are found in order, after the previous one
  for (size_t i = 0; i < all.size(); ++i) {
    const jinja::Value& m = all[i];
    if (!m.is_dict()) continue;
    const jinja::Value* role = m.dict().find("role");
    if (!role || !role->is_string() || role->str() != "assistant") continue;

    jinja::Value head(jinja::ValueList(all.begin(), all.begin() + i));
    jinja::Value upto(jinja::ValueList(all.begin(), all.begin() + i + 1));
    std::optional<Span> span;
    // What this turn adds: its rendering after the generation prompt (or, for templates whose
    // generation prompt is not a prefix of the turn, after the previous messages).
    std::string part;
    size_t part_at = std::string::npos;  // where `part` starts in `rendered_upto`
    std::string rendered_upto;
    try {
      rendered_upto = tmpl_.render(vars(upto, false, extra)).text;
      std::string prompt = tmpl_.render(vars(head, true, extra)).text;
      if (!rendered_upto.starts_with(prompt)) prompt = tmpl_.render(vars(head, false, extra)).text;
      if (rendered_upto.starts_with(prompt)) {
        part = rendered_upto.substr(prompt.size());
        part_at = prompt.size();
      }
    } catch (const UserError&) {
      // Templates that cannot render a prefix (e.g. messages[0] of an empty list): fall back below.
    }
    if (part_at != std::string::npos) {
      if (part.empty()) continue;  // the template writes nothing for this turn
      if (part_at >= cursor && r.text.starts_with(rendered_upto)) span = Span(part_at, rendered_upto.size());
    }
    if (!span) span = locate_by_sentinel(all, i, r.text, cursor, extra);
    if (!span && !part.empty()) {
      if (size_t p = r.text.find(part, cursor); p != std::string::npos) span = Span(p, p + part.size());
    }
    if (!span) {
      // Last resort: the reply text itself.
      const jinja::Value* content = m.dict().find("content");
      if (content && content->is_string() && !content->str().empty()) {
        if (size_t p = r.text.find(content->str(), cursor); p != std::string::npos)
          span = Span(p, p + content->str().size());
      }
    }
    if (!span)
      user_error(tmpl_.origin(), ": cannot locate assistant message ", i,
                 " in the rendered conversation, so its tokens cannot be marked for training");
    r.assistant_spans.push_back(*span);
    cursor = span->second;
  }
  return r;
}

namespace {
std::string trimmed(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}
}  // namespace

void ChatTemplate::check_rendered_messages(const jinja::Value& messages, const std::string& rendered, const Vars& extra,
                                           const std::string& field,
                                           const std::function<void(const std::string&)>& warn) const {
  if (!messages.is_list()) return;
  const jinja::ValueList& all = messages.list();
  for (size_t i = 0; i < all.size(); ++i) {
    const jinja::Value& m = all[i];
    if (!m.is_dict()) continue;
    const jinja::Value* content = m.dict().find("content");
    const jinja::Value* role = m.dict().find("role");
    if (!content || !content->is_string() || !role || !role->is_string()) continue;
    const std::string text = trimmed(content->str());
    if (text.empty() || rendered.find(text) != std::string::npos) continue;
    // Not there as written (the template may rewrite content): render with a marker instead.
    const std::string marker = "\x1fqlora-message-" + std::to_string(i) + "\x1f";
    jinja::ValueList copy = all;
    jinja::ValueDict d = m.dict();
    d.set("content", jinja::Value(marker));
    copy[i] = jinja::Value(std::move(d));
    std::string with_marker;
    try {
      with_marker = tmpl_.render(vars(jinja::Value(std::move(copy)), false, extra)).text;
    } catch (const UserError&) {
      continue;  // cannot tell; the conversation itself rendered
    }
    if (with_marker.find(marker) != std::string::npos) continue;
    const std::string& r = role->str();
    const bool named =
        source_.find("'" + r + "'") != std::string::npos || source_.find('"' + r + '"') != std::string::npos;
    if (!named)
      user_error(field, "[", i, "].role: \"", shorten(r), "\": this role is not handled by the chat template (",
                 tmpl_.origin(), "): the message would be left out of the rendered conversation");
    {
      std::lock_guard<std::mutex> lock(warned_->mu);
      if (!warned_->roles.insert(r).second) continue;
    }
    if (warn)
      warn(field + "[" + std::to_string(i) + "]: the chat template (" + tmpl_.origin() + ") renders nothing for \"" +
           shorten(r) + "\" messages; they are left out (reported once)");
  }
}

}  // namespace qlora::tok
