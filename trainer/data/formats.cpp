#include "trainer/data/formats.h"

#include <cstdio>
#include <stdexcept>

#include "trainer/common/error.h"
#include "trainer/data/tokenize.h"

namespace qlora::data {

namespace {

using ojson = nlohmann::ordered_json;

// record[field] as a string: UserError naming the field when missing or not a string.
// Optional fields may be missing or null ("").
std::string get_string(const Record& r, const std::string& field, bool required) {
  auto it = r.value.find(field);
  if (it == r.value.end() || (!required && it->is_null())) {
    if (required) user_error(r.where, ": missing field \"", field, "\"");
    return "";
  }
  if (!it->is_string()) user_error(r.where, ": field \"", field, "\": expected a string, got ", json_type(*it));
  return it->get<std::string>();
}

}  // namespace

std::string canonical_type(const std::string& type, const std::string& where) {
  if (type == "text" || type == "completion") return "text";
  if (type == "alpaca") return "alpaca";
  if (type == "chat" || type == "chat_template") return "chat";
  if (type == "prompt_completion" || type == "input_output") return "prompt_completion";
  user_error(where, ": unknown dataset type \"", type, "\" (expected text, alpaca, chat or prompt_completion)");
}

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  if (input.empty())
    return "Below is an instruction that describes a task. Write a response that appropriately completes the "
           "request.\n\n### Instruction:\n" +
           instruction + "\n\n### Response:\n";
  return "Below is an instruction that describes a task, paired with an input that provides further context. "
         "Write a response that appropriately completes the request.\n\n### Instruction:\n" +
         instruction + "\n\n### Input:\n" + input + "\n\n### Response:\n";
}

SampleBuilder::SampleBuilder(const config::DatasetSpec& dataset, const config::DataSpec& spec,
                             const tok::Tokenizer& tokenizer, const tok::ChatTemplate* chat)
    : ds_(dataset),
      type_(canonical_type(dataset.type, dataset.path)),
      train_on_inputs_(spec.train_on_inputs),
      tk_(tokenizer),
      chat_(chat) {
  if (type_ == "chat" && !chat_) throw std::logic_error("SampleBuilder: the chat format needs a chat template");
  for (const auto& [key, text] : spec.chat_template_kwargs) {
    ojson v = ojson::parse(text, nullptr, /*allow_exceptions=*/false);
    template_vars_[key] = v.is_discarded() ? jinja::Value(text) : jinja::Value::from_json(v);
  }
}

SampleBuilder::Text SampleBuilder::prepare_chat(const Record& r) const {
  auto it = r.value.find(ds_.field_messages);
  if (it == r.value.end()) user_error(r.where, ": missing field \"", ds_.field_messages, "\"");
  if (!it->is_array())
    user_error(r.where, ": field \"", ds_.field_messages, "\": expected an array of messages, got ", json_type(*it));
  jinja::ValueList messages;
  bool last_is_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const ojson& m = (*it)[i];
    std::string at = ds_.field_messages + "[" + std::to_string(i) + "]";
    if (!m.is_object()) user_error(r.where, ": ", at, ": expected an object, got ", json_type(m));
    auto role = m.find(ds_.message_field_role);
    if (role == m.end()) user_error(r.where, ": ", at, ": missing field \"", ds_.message_field_role, "\"");
    if (!role->is_string())
      user_error(r.where, ": ", at, ".", ds_.message_field_role, ": expected a string, got ", json_type(*role));
    auto content = m.find(ds_.message_field_content);
    if (content != m.end() && !(content->is_string() || content->is_null() || content->is_array()))
      user_error(r.where, ": ", at, ".", ds_.message_field_content, ": expected a string, got ", json_type(*content));
    // The template sees "role" and "content" whatever the file calls them, and every other key.
    jinja::ValueDict d;
    d.set("role", jinja::Value(role->get<std::string>()));
    if (content != m.end()) d.set("content", jinja::Value::from_json(*content));
    for (auto kv = m.begin(); kv != m.end(); ++kv) {
      if (kv.key() == ds_.message_field_role || kv.key() == ds_.message_field_content) continue;
      d.set(kv.key(), jinja::Value::from_json(kv.value()));
    }
    last_is_assistant = role->get<std::string>() == "assistant";
    messages.emplace_back(std::move(d));
  }
  tok::ChatTemplate::Vars extra = template_vars_;
  if (auto tools = r.value.find("tools"); tools != r.value.end() && tools->is_array())
    extra["tools"] = jinja::Value::from_json(*tools);
  tok::ChatTemplate::Rendered rendered;
  try {
    const jinja::Value msgs(std::move(messages));
    rendered = chat_->render_for_training(msgs, extra);
    chat_->check_rendered_messages(msgs, rendered.text, extra, ds_.field_messages, [&](const std::string& w) {
      std::fprintf(stderr, "qlora: warning: %s: %s\n", r.where.c_str(), w.c_str());
    });
  } catch (const UserError& e) { user_error(r.where, ": ", e.what()); }
  Text t;
  t.text = std::move(rendered.text);
  t.trained = std::move(rendered.assistant_spans);
  t.ends_trained = last_is_assistant;
  return t;
}

SampleBuilder::Text SampleBuilder::prepare(const Record& r) const {
  Text t;
  if (type_ == "text") {
    t.text = get_string(r, ds_.field, true);
    t.trained = {{0, t.text.size()}};
  } else if (type_ == "alpaca") {
    std::string instruction = get_string(r, ds_.field_instruction, true);
    std::string input = get_string(r, ds_.field_input, false);
    std::string output = get_string(r, ds_.field_output, true);
    t.text = alpaca_prompt(instruction, input);
    t.trained = {{t.text.size(), t.text.size() + output.size()}};
    t.text += output;
  } else if (type_ == "prompt_completion") {
    std::string prompt = get_string(r, ds_.field_prompt, true);
    std::string completion = get_string(r, ds_.field_completion, true);
    t.text = prompt + completion;
    t.trained = {{prompt.size(), t.text.size()}};
  } else {
    t = prepare_chat(r);
  }
  return t;
}

Sample SampleBuilder::build(const Record& r) const {
  Text t = prepare(r);
  if (train_on_inputs_) t.trained = {{0, t.text.size()}};
  MarkedTokens mt = encode_marked(tk_, t.text, t.trained);
  const tok::SpecialTokens& sp = tk_.special();
  Sample s;
  s.input_ids.reserve(mt.ids.size() + 2);
  s.labels.reserve(mt.ids.size() + 2);
  // One BOS: the tokenizer's, unless the text (a template) already starts with it.
  if (sp.add_bos_token && sp.bos_id && (mt.ids.empty() || mt.ids[0] != *sp.bos_id)) {
    s.input_ids.push_back(*sp.bos_id);
    s.labels.push_back(kIgnoreIndex);
  }
  bool eos_trained = false;
  for (size_t i = 0; i < mt.ids.size(); ++i) {
    bool trained = mt.marked[i] || train_on_inputs_;
    s.input_ids.push_back(mt.ids[i]);
    s.labels.push_back(trained ? mt.ids[i] : kIgnoreIndex);
    if (trained && sp.eos_id && mt.ids[i] == *sp.eos_id) eos_trained = true;
  }
  // EOS ends the sample and is learned (a chat template that ends turns with EOS already has it).
  bool append_eos = sp.eos_id && (type_ != "chat" || !eos_trained);
  if (append_eos) {
    s.input_ids.push_back(*sp.eos_id);
    s.labels.push_back(t.ends_trained || train_on_inputs_ ? *sp.eos_id : kIgnoreIndex);
  }
  return s;
}

}  // namespace qlora::data
