// Chat templates and the Jinja subset, judged by transformers: every case is rendered here and by
// transformers' own Jinja environment (tests/python/chat_template_ref.py) at test time, and the
// texts (and {% generation %} spans) must be identical; where transformers raises, we must raise.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/common/harness.h"
#include "tests/tokenizer/published_templates.h"
#include "trainer/common/error.h"
#include "trainer/jinja/template.h"
#include "trainer/tokenizer/chat_template.h"

using namespace qlora;
using namespace qlora::test;
using json = nlohmann::ordered_json;

namespace {

struct Case {
  std::string name;
  std::string tmpl;
  json vars = json::object();
  bool chat = false;  // rendered through apply_chat_template's path, with messages
  json messages;
  bool add_generation_prompt = false;
  // Template text used on our side when it differs from the reference one (built-ins are checked
  // against the published template they stand for).
  std::string our_tmpl;
};

json msg(const std::string& role, const std::string& content) { return json{{"role", role}, {"content", content}}; }

// Conversations every chat template must handle like transformers.
std::vector<std::pair<std::string, json>> conversations() {
  std::vector<std::pair<std::string, json>> c;
  c.emplace_back("single_user", json::array({msg("user", "Hello!")}));
  c.emplace_back("system_user", json::array({msg("system", "You are terse."), msg("user", "Hi")}));
  c.emplace_back("multi_turn", json::array({msg("user", "What is 2+2?"), msg("assistant", "4."),
                                            msg("user", "And 3+3?"), msg("assistant", "6.")}));
  c.emplace_back("system_multi_turn",
                 json::array({msg("system", "Be brief."), msg("user", "Hi there"),
                              msg("assistant", "Hello! How can I help?"), msg("user", "  What is 2+2?  ")}));
  c.emplace_back("empty_content", json::array({msg("user", ""), msg("assistant", "")}));
  c.emplace_back("unicode", json::array({msg("user", "héllo wörld — 你好 🚀 Привет"),
                                         msg("assistant", "Ça va? ñ 日本語 \u00a0nbsp\u2028sep 😀")}));
  c.emplace_back("whitespace",
                 json::array({msg("user", "  padded  \n"), msg("assistant", "\n\nline\n\n"), msg("user", "\ttab\t")}));
  c.emplace_back("jinja_looking_content",
                 json::array({msg("user", "{{ not a tag }} {% if %} {# x #} 'quote' \"dq\" back\\slash"),
                              msg("assistant", "<|im_end|> is text here </s>")}));
  c.emplace_back("not_alternating", json::array({msg("user", "a"), msg("user", "b")}));
  c.emplace_back("assistant_first", json::array({msg("assistant", "I start."), msg("user", "ok")}));
  c.emplace_back("empty", json::array());
  c.emplace_back("thinking", json::array({msg("user", "Hi"), msg("assistant", "<think>\nhmm\n</think>\n\nHello!"),
                                          msg("user", "And?"), msg("assistant", "<think>\nagain\n</think>\n\nMore.")}));
  c.emplace_back(
      "reasoning_fields",
      json::array({msg("user", "Q1"), json{{"role", "assistant"}, {"content", "A1"}, {"reasoning_content", "R1"}},
                   msg("user", "Q2"), json{{"role", "assistant"}, {"content", "A2"}, {"thinking", "R2"}}}));
  c.emplace_back("null_key_dropped",
                 json::array({json{{"role", "user"}, {"content", "hi"}, {"name", nullptr}}, msg("assistant", "yo")}));
  return c;
}

json weather_tool() {
  return json::parse(
      R"({"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}})");
}

json tool_conversation() {
  return json::parse(R"([
    {"role": "system", "content": "You can check the weather."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"id": "call00001", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call00001", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "It is 21 °C in Paris."}])");
}

struct Model {
  std::string name;
  const char* tmpl;
  std::string bos, eos;
};

std::vector<Model> models() {
  using namespace qlora::test::templates;
  return {{"llama3", kLlama3, "<|begin_of_text|>", "<|eot_id|>"},
          {"llama3_1", kLlama31, "<|begin_of_text|>", "<|eot_id|>"},
          {"qwen2_5", kQwen25, "", "<|im_end|>"},
          {"qwen3", kQwen3, "", "<|im_end|>"},
          {"mistral_v3", kMistralV3, "<s>", "</s>"},
          {"chatml", kChatML, "<s>", "<|im_end|>"},
          {"gemma", kGemma, "<bos>", "<eos>"},
          {"phi3", kPhi3, "<s>", "<|endoftext|>"},
          {"phi3_5", kPhi35, "<s>", "<|endoftext|>"},
          {"phi4", kPhi4, "<|endoftext|>", "<|im_end|>"},
          {"gemma3", kGemma3, "<bos>", "<eos>"},
          {"smollm2", kSmolLM2, "<|im_start|>", "<|im_end|>"},
          {"chatml_generation", kChatMLGeneration, "", "<|im_end|>"}};
}

Model find_model(const std::string& name) {
  for (const auto& m : models())
    if (m.name == name) return m;
  throw std::runtime_error("no model " + name);
}

json special_vars(const Model& m) {
  json v = json::object();
  if (!m.bos.empty()) v["bos_token"] = m.bos;
  if (!m.eos.empty()) v["eos_token"] = m.eos;
  return v;
}

// Jinja features one at a time (rendered with the same environment, no messages).
std::vector<std::pair<std::string, std::string>> feature_templates() {
  return {
      {"text", "plain text"},
      {"trailing_newline_dropped", "a\n"},
      {"crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc"},
      {"print_types",
       "{{ none }}|{{ true }}|{{ false }}|{{ 1 }}|{{ -2 }}|{{ 1.5 }}|{{ 'x' }}|{{ [1, 'a', none, true, 1.0] }}|{{ "
       "{'a': 1, 'b': [2]} }}|{{ missing }}"},
      {"floats",
       "{{ 1/2 }} {{ 4/2 }} {{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ "
       "-0.0 }} {{ 2.5e-10 }} {{ 123456789.125 }}"},
      {"int_math",
       "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }} "
       "{{ 3 - 5 }} {{ 2 * 3 + 1 }} {{ (1 + 2) * 3 }} {{ true + 1 }}"},
      {"float_math", "{{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 1.5 * 2 }} {{ 3 - 1.5 }} {{ 10 / 4 }}"},
      {"string_ops", "{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ 'x' + 'y' }} {{ [1] + [2, 3] }}"},
      {"comparisons",
       "{{ 1 < 2 }}{{ 2 <= 1 }}{{ 'a' == 'a' }}{{ 'a' != 'a' }}{{ 3 > 2 }}{{ 1 >= 1 }}{{ 1 == 1.0 }}{{ true == 1 }}{{ "
       "[1] == [1.0] }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'abc' < 'abd' }}{{ [1, 2] < [1, 3] }}"},
      {"logic",
       "{{ true and false }}{{ true or false }}{{ not true }}{{ not (1 == 2) }}{{ 0 or 'x' }}{{ '' and 'y' }}{{ none "
       "or [] }}{{ not none }}"},
      {"in",
       "{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'q' not in d }}{{ 'x' in missing }}{{ not 'a' in 'b' }}"},
      {"tests",
       "{{ x is defined }}{{ y is defined }}{{ y is not defined }}{{ y is undefined }}{{ n is none }}{{ s is string "
       "}}{{ 1 is number }}{{ true is number }}{{ 1.5 is float }}{{ 1 is integer }}{{ true is integer }}{{ true is "
       "boolean }}{{ d is mapping }}{{ s is iterable }}{{ l is iterable }}{{ d is sequence }}{{ 3 is odd }}{{ 4 is "
       "even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ 1 is eq 1 "
       "}}{{ 1 is ne 2 }}{{ 2 is gt 1 }}{{ 2 is lt 1 }}{{ 2 is ge 2 }}{{ 1 is le 0 }}{{ 'a' is in 'cat' }}{{ none is "
       "sameas none }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ range is callable }}{{ 'upper' is filter "
       "}}{{ 'odd' is test }}"},
      {"conditional_expr",
       "{{ 'yes' if flag else 'no' }}|{{ 'a' if false }}|{{ 'a' if x is defined else 'b' if true else 'c' }}"},
      {"subscript_slices",
       "{{ l[0] }}{{ l[-1] }}{{ l[1:] }}{{ l[:2] }}{{ l[::-1] }}{{ l[::2] }}{{ l[1::2] }}{{ l[-1:0:-1] }}{{ l[:-2:-1] "
       "}}{{ l[5:] }}{{ l[10] }}|{{ 'hello'[1:3] }}{{ 'héllo'[1:3] }}{{ 'héllo'[-1] }}{{ 'abc'[::-1] }}{{ d['k'] }}{{ "
       "d.k }}{{ d.missing }}{{ l.0 }}"},
      {"literals",
       "{{ [1, 'a', [2]] }}{{ {'k': 1}['k'] }}{{ (1, 2)[1] }}{{ 'con' 'cat' }}{{ \"dq\" }}{{ "
       "'esc\\n\\t\\\\\\'\\x41\\u00e9' }}{{ 1_000 }}{{ 2.5e3 }}{{ True }}{{ None }}"},
      {"filters_basic",
       "{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ l | length }}|{{ 'héllo' | length }}|{{ d | length }}|{{ "
       "missing | length }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ l | join('-') }}|{{ l | join }}|{{ l | first }}{{ "
       "l | last }}|{{ 'abc' | first }}|{{ missing | default('d') }}|{{ '' | default('d') }}|{{ '' | default('d', "
       "true) }}|{{ none | default('d') }}|{{ 5 | string }}|{{ 'hello world' | capitalize }}|{{ \"hello wORLD it's-a "
       "[test]\" | title }}|{{ 'a b a' | replace('a', 'x') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ l | count }}"},
      {"filters_numbers",
       "{{ '42' | int }}|{{ '4.7' | int }}|{{ 'x' | int }}|{{ 'x' | int(7) }}|{{ 3.9 | int }}|{{ '2.5' | float }}|{{ "
       "'y' | float }}|{{ -3 | abs }}|{{ 2.5 | round }}|{{ 3.5 | round }}|{{ 2.345 | round(2) }}|{{ 2.1 | round(0, "
       "'ceil') }}|{{ l | sum }}|{{ l | max }}|{{ l | min }}|{{ l | sum(start=10) }}"},
      {"filters_sequences",
       "{{ l | reverse | list }}|{{ 'abc' | reverse }}|{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'c'] | sort }}|{{ ['b', "
       "'A', 'c'] | sort(case_sensitive=true) }}|{{ [3, 1, 2] | sort(reverse=true) }}|{{ [1, 2, 1, 3] | unique | list "
       "}}|{{ 'abc' | list }}|{{ d | list }}|{{ d | items | list }}|{{ d | dictsort }}|{{ missing | items | list }}"},
      {"filters_select",
       "{{ msgs | selectattr('role', 'equalto', 'user') | list | length }}|{{ (msgs | selectattr('role', 'equalto', "
       "'user') | list)[-1].content }}|{{ msgs | rejectattr('role', 'equalto', 'user') | map(attribute='content') | "
       "join(',') }}|{{ msgs | map(attribute='role') | list }}|{{ msgs | map(attribute='nope', default='z') | list "
       "}}|{{ ['a', 'B'] | map('upper') | list }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3, 4] | "
       "reject('odd') | list }}|{{ [0, 1, '', 'x'] | select | list }}|{{ items | selectattr('on') | map(attribute='n') "
       "| list }}|{{ msgs | selectattr('content', 'defined') | list | length }}|{{ msgs | sort(attribute='content') | "
       "map(attribute='content') | join }}"},
      {"tojson",
       "{{ {'a': [1, 'x', none, true, 1.5], 'é': '\"q\" \\\\ \\n'} | tojson }}|{{ d | tojson(indent=2) }}|{{ {'b': [1, "
       "{'c': 'x'}], 'a': {}, 'e': []} | tojson(indent=4) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ 'é' | "
       "tojson(ensure_ascii=true) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}|{{ 'x' | tojson }}|{{ 3 | tojson "
       "}}|{{ none | tojson }}"},
      {"indent_center",
       "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}|{{ 'ab' "
       "| center(6) }}|{{ '<a & \"b\">' | e }}"},
      {"string_methods",
       "{{ ' x '.strip() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('x') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ "
       "'ab'.upper() }}|{{ 'hello world'.title() }}|{{ \"they're 1st\".title() }}|{{ ' x '.lstrip() }}|{{ ' x "
       "'.rstrip() }}|{{ 'aXbXc'.split('X') }}|{{ ' a  b '.split() }}|{{ 'a,b,c'.split(',', 1) }}|{{ "
       "'a,b,c'.rsplit(',', 1) }}|{{ 'x'.split(',') }}|{{ 'r</think>a'.split('</think>')[-1] }}|{{ "
       "'abcabc'.replace('b', 'X') }}|{{ 'abcabc'.find('c') }}|{{ 'abcabc'.rfind('c') }}|{{ 'abcabc'.count('bc') }}|{{ "
       "'-'.join(['a', 'b']) }}|{{ 'a\\nb\\r\\nc'.splitlines() }}|{{ '12'.isdigit() }}{{ 'ab'.isalpha() }}{{ ' "
       "'.isspace() }}|{{ 'hello'.capitalize() }}|{{ '\\n\\nx\\n'.strip('\\n') }}|{{ 'xxay'.lstrip('x') }}|{{ "
       "'ayyx'.rstrip('xy') }}|{{ ' a '.strip(none) }}|{{ 'ÉCOLE'.lower() }}|{{ 'straße'.upper() == 'STRASSE' }}"},
      {"unicode_case",
       "{{ 'ǆemal ΑΣ straße ﬁx'.title() }}|{{ 'ΑΣ ΑΣ.'.lower() }}|{{ 'ǆa'.capitalize() }}|{{ 'ΑΣ'.capitalize() }}|{{ "
       "'straße ﬁx İ' | upper }}|{{ 'İ' | lower | length }}|{{ 'ǆemal straße-ﬁx' | title }}|{{ 'ǅ' is upper }}{{ 'Ǆ' "
       "is upper }}{{ 'ß' is lower }}{{ 'ǅ'.islower() }}{{ 'ᾳ'.islower() }}|{{ '٣'.isdigit() }}{{ '²'.isdigit() }}{{ "
       "'½'.isalnum() }}{{ '一'.isalnum() }}{{ 'ǅ'.isalpha() }}{{ '٣'.isalpha() }}|{{ 'x\\u001cy\\u3000z'.split() "
       "}}|{{ ['b', 'A', 'ä', 'Ä'] | sort | join }}"},
      {"dict_methods",
       "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ "
       "d.get('k') }}|{{ d.get('q', 'dflt') }}|{{ d.get('q') }}|{{ d['items'] is defined }}"},
      {"for_loop",
       "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ "
       "loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('a', 'b') }};{% endfor %}"},
      {"for_else_break_continue",
       "{% for x in [] %}x{% else %}empty{% endfor %}|{% for n in [1, 2, 3, 4] %}{% if n == 2 %}{% continue %}{% endif "
       "%}{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}|{% for x in missing %}{{ x }}{% else %}none{% "
       "endfor %}"},
      {"for_filter",
       "{% for x in [1, 2, 3, 4] if x % 2 == 0 %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor "
       "%}|{% for k, v in d.items() if k != 'k' %}{{ k }}={{ v }};{% endfor %}|{% for c in 'hé' %}[{{ c }}]{% endfor "
       "%}|{% for k in d %}{{ k }}{% endfor %}"},
      {"nested_loops",
       "{% for a in [1, 2] %}{% for b in ['x', 'y'] %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}{{ loop.index }};{% "
       "endfor %}"},
      {"scoping",
       "{% set a = 1 %}{% for x in [1, 2] %}{% set a = a + 10 %}{{ a }}{% endfor %}{{ a }}|{% if true %}{% set b = 3 "
       "%}{% endif %}{{ b }}|{% for i in range(3) %}{% if i == 0 %}{% set y = 5 %}{% endif %}{{ y }}{% endfor %}|{% "
       "set p, q = [1, 2] %}{{ p }}{{ q }}|{% with w = 7 %}{{ w }}{% endwith %}{{ w }}"},
      {"namespace",
       "{% set ns = namespace(total=0, seen=false) %}{% for x in [1, 2, 3] %}{% set ns.total = ns.total + x %}{% if x "
       "== 2 %}{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.total }} {{ ns.seen }}|{% set n2 = namespace() "
       "%}{% set n2.a = 'x' %}{{ n2.a }}{{ n2.b is defined }}{{ n2['a'] }}"},
      {"range",
       "{% for i in range(3) %}{{ i }}{% endfor %}|{{ range(1, 8, 3) | list }}|{{ range(3, -1, -1) | list }}|{{ "
       "range(0, 3, -1) | list }}|{{ range(5)[2] }}"},
      {"set_block_filter_block",
       "{% set x %}inside {{ 1 + 1 }}{% endset %}[{{ x }}]|{% set y | upper %}shout{% endset %}{{ y }}|{% filter upper "
       "%}hello {{ 'world' }}{% endfilter %}"},
      {"macro",
       "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', "
       "'?') }} {{ greet(punct='.', name='Cy') }}|{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% "
       "endmacro %}{{ rec(3) }}"},
      {"whitespace_trim_lstrip",
       "a\n    {% if true %}\n    b\n    {% endif %}\nc\n  {# comment #}\nd {% if true %} e {% endif %} f"},
      {"whitespace_minus", "a   {{- 'b' -}}   c  {%- if true -%}  d  {%- endif %}  e\n  {#- c -#}  f"},
      {"whitespace_plus", "a\n    {%+ if true %}x{% endif +%}\ny\n  {%+ if true +%}\nz{% endif %}"},
      {"whitespace_output_keeps_newline", "{{ 'a' }}\n{{ 'b' }}\n\n{{ 'c' }}"},
      {"whitespace_only_lines", "x\n  \t{% for i in [1, 2] %}\n  {{ i }}\n  {% endfor %}\ny"},
      {"whitespace_unicode", "x\u3000{%- if true %}y{% endif %}\u00a0\n  {% if true %}z{% endif %}"},
      {"raw", "{% raw %}{{ not rendered }} {% if %}{% endraw %}|{%- raw -%}  {{ x }}  {%- endraw -%}  |"},
      {"comment_lstrip_trim", "a\n  {# note #}\nb\n{#- stripped -#}\n  c"},
      {"generation_tag", "<s>{% generation %}gen {{ 1 }}{% endgeneration %}</s>"},
      {"date_funcs",
       "{{ strftime_now is defined }} {{ raise_exception is defined }} {{ range is defined }} {{ namespace is defined "
       "}} {{ nothing is defined }}"},
      {"dict_builtin", "{{ dict(a=1, b='x') }}|{{ dict(a=1).a }}"},
      {"string_repr_in_list", "{{ ['it\\'s', 'say \"hi\"', 'both \\' \"', 'tab\\tnl\\n', 'é', '\\x7f'] }}"},
      {"undefined_ops",
       "{{ missing ~ 'x' }}|{{ missing is none }}|{% if missing %}t{% else %}f{% endif %}|{{ missing == missing }}|{{ "
       "missing != 1 }}|{{ missing | trim }}|{{ missing | upper }}|{{ d.missing is defined }}"},
      // Errors: transformers raises, so must we.
      {"error_undefined_attr_chain", "{{ missing.attr }}"},
      {"error_undefined_item_chain", "{{ d.missing.deeper }}"},
      {"error_raise_exception", "{{ raise_exception('custom failure') }}"},
      {"error_type", "{{ 'a' + 1 }}"},
      {"error_div_zero", "{{ 1 // 0 }}"},
      {"error_not_callable", "{{ 'x'() }}"},
      {"error_namespace_attr", "{% set d2 = {'a': 1} %}{% set d2.a = 2 %}{{ d2.a }}"},
      {"error_syntax", "{% if x %}unclosed"},
      {"error_syntax_expr", "{{ 1 + }}"},
      {"error_unpack", "{% for a, b in [[1, 2, 3]] %}{% endfor %}"},
      {"error_none_iter", "{% for x in none %}{% endfor %}"},
      {"error_compare", "{{ 1 < 'a' }}"},
  };
}

json feature_vars() {
  return json::parse(R"({"x": 1, "n": null, "s": "str", "flag": true, "l": [1, 2, 3], "d": {"k": "v", "z": 2},
    "msgs": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "bye"}],
    "items": [{"n": 1, "on": true}, {"n": 2, "on": false}, {"n": 3}]})");
}

class ChatTemplateRef : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cases_ = new std::vector<Case>();
    for (const auto& [name, tmpl] : feature_templates()) {
      Case c;
      c.name = "feature/" + name;
      c.tmpl = tmpl;
      c.vars = feature_vars();
      cases_->push_back(c);
    }
    for (const auto& m : models()) {
      for (const auto& [cname, conv] : conversations()) {
        for (bool agp : {false, true}) {
          Case c;
          c.name = m.name + "/" + cname + (agp ? "/gen" : "");
          c.tmpl = m.tmpl;
          c.vars = special_vars(m);
          c.chat = true;
          c.messages = conv;
          c.add_generation_prompt = agp;
          cases_->push_back(c);
        }
      }
    }
    // Llama 3.1's date and tools preamble, Qwen2.5's and Mistral's tool formats.
    for (std::string name : {"llama3_1", "qwen2_5", "mistral_v3", "qwen3"}) {
      Model m = find_model(name);
      for (bool agp : {false, true}) {
        Case c;
        c.name = name + "/tools" + (agp ? "/gen" : "");
        c.tmpl = m.tmpl;
        c.vars = special_vars(m);
        c.vars["tools"] = json::array({weather_tool()});
        c.chat = true;
        c.messages = tool_conversation();
        if (name == "mistral_v3") c.messages.erase(c.messages.begin());  // system goes with the last user turn
        c.add_generation_prompt = agp;
        cases_->push_back(c);
      }
    }
    for (bool thinking : {false, true}) {
      Case c;
      c.name = std::string("qwen3/enable_thinking_") + (thinking ? "true" : "false");
      c.tmpl = templates::kQwen3;
      c.vars = json{{"eos_token", "<|im_end|>"}, {"enable_thinking", thinking}};
      c.chat = true;
      c.messages = json::array({msg("user", "Hi")});
      c.add_generation_prompt = true;
      cases_->push_back(c);
    }
    // Gemma 3: content as a list of parts (text trimmed, images as <start_of_image>), a system
    // turn given as parts, and content of another type (the template's own error).
    for (bool agp : {false, true}) {
      Case c;
      c.name = std::string("gemma3/content_parts") + (agp ? "/gen" : "");
      c.tmpl = templates::kGemma3;
      c.vars = special_vars(find_model("gemma3"));
      c.chat = true;
      c.messages = json::parse(R"([
        {"role": "system", "content": [{"type": "text", "text": " Answer in French. "}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  What is this?\n"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Un chat."}]},
        {"role": "user", "content": "Sûr ?"}])");
      c.add_generation_prompt = agp;
      cases_->push_back(c);
    }
    {
      Case c;
      c.name = "gemma3/content_number";
      c.tmpl = templates::kGemma3;
      c.vars = special_vars(find_model("gemma3"));
      c.chat = true;
      c.messages = json::parse(R"([{"role": "user", "content": 5}])");
      cases_->push_back(c);
    }
    for (const char* date : {"", "03 Feb 2025"}) {
      Case c;
      c.name = std::string("llama3_1/date_string") + (*date ? "/given" : "/default");
      c.tmpl = templates::kLlama31;
      c.vars = special_vars(find_model("llama3_1"));
      if (*date) c.vars["date_string"] = date;
      c.chat = true;
      c.messages = json::array({msg("system", "  Be nice.  "), msg("user", "Hi"), msg("assistant", "Hello")});
      cases_->push_back(c);
    }
    // Built-in templates against the published template each stands for.
    struct Pair {
      const char* builtin;
      std::string model;
    };
    for (const Pair& p : {Pair{"chatml", "chatml"}, Pair{"llama3", "llama3"}, Pair{"qwen2_5", "qwen2_5"},
                          Pair{"mistral", "mistral_v3"}, Pair{"gemma", "gemma"}}) {
      Model m = find_model(p.model);
      for (const auto& [cname, conv] : conversations()) {
        if (cname == "null_key_dropped") continue;
        for (bool agp : {false, true}) {
          Case c;
          c.name = std::string("builtin_") + p.builtin + "/" + cname + (agp ? "/gen" : "");
          c.tmpl = m.tmpl;
          c.our_tmpl = *tok::ChatTemplate::builtin_source(p.builtin);
          c.vars = special_vars(m);
          c.chat = true;
          c.messages = conv;
          c.add_generation_prompt = agp;
          cases_->push_back(c);
        }
      }
    }

    stdfs::path dir = temp_dir("chat_template_ref");
    json in = json::array();
    for (const auto& c : *cases_) {
      json j = {{"template", c.tmpl}, {"vars", c.vars}};
      if (c.chat) {
        j["messages"] = c.messages;
        j["add_generation_prompt"] = c.add_generation_prompt;
      }
      in.push_back(j);
    }
    std::ofstream(dir / "cases.json") << in.dump();
    ProcResult r = run_python("chat_template_ref.py", {(dir / "cases.json").string(), (dir / "out.json").string()});
    ASSERT_EQ(r.code, 0) << r.output;
    std::ifstream f(dir / "out.json");
    refs_ = new json(json::parse(f));
    ASSERT_EQ(refs_->size(), cases_->size());
  }

  static void TearDownTestSuite() {
    delete cases_;
    delete refs_;
  }

  struct Ours {
    std::string text;
    std::vector<std::pair<size_t, size_t>> spans;
    std::string error;
    bool has_generation = false;
  };

  static Ours render(const Case& c) {
    Ours o;
    try {
      const std::string& src = c.our_tmpl.empty() ? c.tmpl : c.our_tmpl;
      if (!c.chat) {
        jinja::Template t(src, c.name);
        jinja::Template::Context vars;
        for (auto it = c.vars.begin(); it != c.vars.end(); ++it) vars[it.key()] = jinja::Value::from_json(it.value());
        auto out = t.render(vars);
        o.text = out.text;
        o.spans = out.generation_spans;
        return o;
      }
      tok::SpecialTokens special;
      tok::ChatTemplate::Vars extra;
      for (auto it = c.vars.begin(); it != c.vars.end(); ++it) {
        if (it.key() == "bos_token")
          special.bos_token = it.value();
        else if (it.key() == "eos_token")
          special.eos_token = it.value();
        else
          extra[it.key()] = jinja::Value::from_json(it.value());
      }
      tok::ChatTemplate t(src, c.name, special);
      jinja::Value messages = jinja::Value::from_json(c.messages);
      o.text = t.render(messages, c.add_generation_prompt, extra);
      o.has_generation = t.jinja().has_generation_blocks();
      if (!c.add_generation_prompt && o.has_generation)
        o.spans = t.render_for_training(messages, extra).assistant_spans;
    } catch (const UserError& e) { o.error = e.what(); }
    return o;
  }

  static std::vector<Case>* cases_;
  static json* refs_;
};

std::vector<Case>* ChatTemplateRef::cases_ = nullptr;
json* ChatTemplateRef::refs_ = nullptr;

TEST_F(ChatTemplateRef, EveryCaseRendersLikeTransformers) {
  int compared = 0, errors = 0;
  for (size_t i = 0; i < cases_->size(); ++i) {
    const Case& c = (*cases_)[i];
    const json& ref = (*refs_)[i];
    Ours o = render(c);
    if (ref.contains("error")) {
      ++errors;
      EXPECT_FALSE(o.error.empty()) << c.name << ": transformers raised " << ref["error"] << " but we rendered "
                                    << json(o.text).dump();
      continue;
    }
    ++compared;
    ASSERT_TRUE(o.error.empty()) << c.name << ": we raised " << o.error << "\ntransformers rendered "
                                 << ref["text"].dump();
    EXPECT_EQ(o.text, ref["text"].get<std::string>()) << c.name;
    // transformers tracks {% generation %} spans only on the apply_chat_template path.
    if (c.chat && !c.add_generation_prompt && o.has_generation) {
      std::vector<std::pair<size_t, size_t>> want;
      for (const auto& s : ref["spans"]) want.emplace_back(s[0].get<size_t>(), s[1].get<size_t>());
      EXPECT_EQ(o.spans, want) << c.name;
    }
  }
  // The suite must really exercise both outcomes.
  EXPECT_GT(compared, 200);
  EXPECT_GT(errors, 20);
}

TEST_F(ChatTemplateRef, RaiseExceptionMessageReachesTheUser) {
  for (size_t i = 0; i < cases_->size(); ++i) {
    const Case& c = (*cases_)[i];
    if (c.name != "gemma/not_alternating" && c.name != "feature/error_raise_exception") continue;
    Ours o = render(c);
    std::string ref = (*refs_)[i]["error"];
    std::string msg = ref.substr(ref.find(": ") + 2);  // "TemplateError: <message>"
    EXPECT_NE(o.error.find(msg), std::string::npos) << o.error << " vs " << ref;
    EXPECT_NE(o.error.find("line 1"), std::string::npos) << o.error;
  }
}

}  // namespace

// ---- our own checks (no reference needed: these are about our error messages) ------------------

namespace {

std::string parse_error(const std::string& src) {
  try {
    jinja::Template t(src, "tokenizer_config.json");
    t.render({});
  } catch (const UserError& e) { return e.what(); }
  return "";
}

TEST(JinjaErrors, UnsupportedConstructsNameTheConstructAndLine) {
  struct E {
    std::string src, construct;
    int line;
  };
  for (const E& e :
       {E{"a\n{% include 'other.jinja' %}", "'{% include %}'", 2}, E{"{% import 'm' as m %}", "'{% import %}'", 1},
        E{"x\n\n{% extends 'base' %}", "'{% extends %}'", 3}, E{"{% call foo() %}x{% endcall %}", "'{% call %}'", 1},
        E{"{{ d | xmlattr }}", "filter 'xmlattr'", 1}, E{"\n{{ x | wordwrap(3) }}", "filter 'wordwrap'", 2},
        E{"{% if x is escaped %}{% endif %}", "test 'escaped'", 1},
        E{"{% for x in l recursive %}{% endfor %}", "recursive for loop", 1},
        E{"{{ f(*args) }}", "*args/**kwargs", 1}}) {
    std::string msg = parse_error(e.src);
    EXPECT_NE(msg.find("unsupported construct"), std::string::npos) << e.src << " -> " << msg;
    EXPECT_NE(msg.find(e.construct), std::string::npos) << e.src << " -> " << msg;
    EXPECT_NE(msg.find("tokenizer_config.json line " + std::to_string(e.line) + ":"), std::string::npos)
        << e.src << " -> " << msg;
  }
}

TEST(JinjaErrors, UnsupportedMethodsAreClearAtRenderTime) {
  jinja::Template t("{% set l = [] %}\n{{ l.append(1) }}", "t");
  try {
    t.render({});
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("t line 2: unsupported: list.append()"), std::string::npos) << e.what();
  }
}

TEST(JinjaErrors, SyntaxErrorsNameTheLine) {
  EXPECT_NE(parse_error("ok\n{% if x %}\nno end")
                .find("line 3: unexpected end of template, expected 'elif' or 'else' or 'endif'"),
            std::string::npos)
      << parse_error("ok\n{% if x %}\nno end");
  EXPECT_NE(parse_error("{{ 1 +\n }}").find("line 2"), std::string::npos) << parse_error("{{ 1 +\n }}");
  EXPECT_NE(parse_error("{% frobnicate %}").find("unknown statement 'frobnicate'"), std::string::npos);
  EXPECT_NE(parse_error("{% break %}").find("'break' outside of a for loop"), std::string::npos);
  EXPECT_NE(parse_error("{# never closed").find("missing end of comment tag"), std::string::npos);
}

TEST(ChatTemplate, ResolvesOwnBuiltinOrInlineAndExplainsMissing) {
  struct NoTemplate : tok::Tokenizer {
    std::vector<int32_t> encode(std::string_view, bool) const override { return {}; }
    std::string decode(const std::vector<int32_t>&, bool) const override { return ""; }
    int32_t vocab_size() const override { return 0; }
    std::optional<int32_t> token_to_id(std::string_view) const override { return std::nullopt; }
    std::string id_to_token(int32_t) const override { return ""; }
    void set(std::string t) { chat_template_ = std::move(t); }
    void set_named(std::string n, std::string t) { named_chat_templates_[n] = std::move(t); }
  } tk;
  try {
    tok::ChatTemplate::resolve("", tk);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("the tokenizer has no default chat template"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("chatml"), std::string::npos);
  }
  try {
    tok::ChatTemplate::resolve("nosuch", tk);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown template \"nosuch\""), std::string::npos);
  }
  jinja::Value msgs = jinja::Value::from_json(json::array({msg("user", "hi")}));
  EXPECT_EQ(tok::ChatTemplate::resolve("chatml", tk).render(msgs, true),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(tok::ChatTemplate::resolve("{{ messages[0].content }}!", tk).render(msgs, false), "hi!");
  tk.set("own:{{ messages | length }}");
  EXPECT_EQ(tok::ChatTemplate::resolve("", tk).render(msgs, false), "own:1");
  // The tokenizer's named templates (tokenizer_config.json's list form) by name.
  tk.set_named("tool_use", "tools:{{ tools is none }}");
  EXPECT_EQ(tok::ChatTemplate::resolve("tool_use", tk).render(msgs, false), "tools:True");
  for (const auto& name : tok::ChatTemplate::builtin_names())
    EXPECT_NO_THROW(tok::ChatTemplate::resolve(name, tk)) << name;
}

// Spans of what the model learns, for templates without {% generation %}: the reply and the
// template's end-of-turn text, found for every assistant turn.
TEST(ChatTemplate, AssistantSpansCoverReplyAndEndOfTurn) {
  tok::SpecialTokens sp;
  sp.bos_token = "<s>";
  sp.eos_token = "</s>";
  json conv = json::array(
      {msg("system", "S"), msg("user", "U1"), msg("assistant", "A1"), msg("user", "U2"), msg("assistant", "A2 ")});
  jinja::Value m = jinja::Value::from_json(conv);
  auto spans_text = [&](const char* tmpl) {
    tok::ChatTemplate t(tmpl, "t", sp);
    auto r = t.render_for_training(m);
    std::vector<std::string> out;
    for (auto [b, e] : r.assistant_spans) out.push_back(r.text.substr(b, e - b));
    return out;
  };
  EXPECT_EQ(spans_text(templates::kQwen25), (std::vector<std::string>{"A1<|im_end|>\n", "A2 <|im_end|>\n"}));
  EXPECT_EQ(spans_text(templates::kLlama31), (std::vector<std::string>{"A1<|eot_id|>", "A2<|eot_id|>"}));
  // Mistral v0.3 moves the system message to the last user turn, so the conversation's prefixes
  // render differently from the whole: the replies are located with a marker, and the " " the
  // turn writes after the generation prompt is the model's too.
  EXPECT_EQ(spans_text(templates::kMistralV3), (std::vector<std::string>{" A1</s>", " A2</s>"}));
  // Qwen3 drops the reasoning of turns before the last user query: each turn is found as the
  // whole conversation renders it.
  json think = json::array({msg("user", "U1"), msg("assistant", "<think>\nr1\n</think>\n\nA1"), msg("user", "U2"),
                            msg("assistant", "<think>\nr2\n</think>\n\nA2")});
  tok::ChatTemplate q3(templates::kQwen3, "t", sp);
  auto r3 = q3.render_for_training(jinja::Value::from_json(think));
  std::vector<std::string> got3;
  for (auto [b, e] : r3.assistant_spans) got3.push_back(r3.text.substr(b, e - b));
  EXPECT_EQ(got3, (std::vector<std::string>{"A1<|im_end|>\n", "<think>\nr2\n</think>\n\nA2<|im_end|>\n"}));
  // A generation-tagged template: exactly the tagged text.
  EXPECT_EQ(spans_text(templates::kChatMLGeneration), (std::vector<std::string>{"A1<|im_end|>", "A2 <|im_end|>"}));
}

// Messages the template leaves out: an error when the template never names the role, a warning
// (once per role) when it names it and still renders nothing; published templates render every
// message of an ordinary conversation.
TEST(ChatTemplate, MessagesLeftOutByTheTemplateAreReported) {
  tok::SpecialTokens sp;
  sp.bos_token = "<s>";
  sp.eos_token = "</s>";
  std::vector<std::string> warnings;
  auto warn = [&](const std::string& w) { warnings.push_back(w); };
  auto check = [&](const tok::ChatTemplate& t, const json& conv) {
    jinja::Value m = jinja::Value::from_json(conv);
    auto r = t.render_for_training(m);
    t.check_rendered_messages(m, r.text, {}, "messages", warn);
  };
  const json ordinary = json::array({msg("system", "Be brief."), msg("user", "  What is 2+2?  "),
                                     msg("assistant", "4."), msg("user", "And 3+3?"), msg("assistant", "6.")});
  for (const char* src : {templates::kLlama3, templates::kLlama31, templates::kQwen25, templates::kQwen3,
                          templates::kChatML, templates::kSmolLM2}) {
    tok::ChatTemplate t(src, "t", sp);
    EXPECT_NO_THROW(check(t, ordinary)) << src;
    EXPECT_TRUE(warnings.empty()) << warnings.front() << "\n" << src;
    warnings.clear();
  }
  // Mistral v0.3 writes the system prompt into the last message only when that is a user turn: a
  // training conversation that ends with the reply loses it, as with transformers. A warning.
  {
    tok::ChatTemplate t(templates::kMistralV3, "t", sp);
    EXPECT_NO_THROW(check(t, ordinary));
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("messages[0]: the chat template (t) renders nothing for \"system\""), std::string::npos)
        << warnings[0];
    warnings.clear();
  }
  tok::ChatTemplate gemma(templates::kGemma, "t", sp);
  EXPECT_NO_THROW(check(gemma, json::array({msg("user", "Hi"), msg("assistant", "Hello.")})));
  // Tool results: Llama 3.1, Qwen2.5 and Mistral v0.3 render role "tool".
  for (const char* src : {templates::kLlama31, templates::kQwen25}) {
    tok::ChatTemplate t(src, "t", sp);
    EXPECT_NO_THROW(
        check(t, json::array({msg("user", "Weather?"), msg("tool", "sunny, 21 C"), msg("assistant", "Sunny.")})))
        << src;
  }
  EXPECT_TRUE(warnings.empty()) << warnings.front();

  // Only user and assistant turns are written: a "tool" message would vanish.
  const char* two_roles =
      "{% for m in messages %}{% if m['role'] == 'user' %}[U]{{ m['content'] }}{% elif m['role'] == 'assistant' %}"
      "[A]{{ m['content'] }}</s>{% endif %}{% endfor %}";
  tok::ChatTemplate t2(two_roles, "tokenizer_config.json", sp);
  const json with_tool = json::array({msg("user", "Weather?"), msg("tool", "sunny"), msg("assistant", "Sunny.")});
  try {
    check(t2, with_tool);
    ADD_FAILURE() << "no error for a role the template ignores";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("messages[1].role: \"tool\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  // Empty content leaves nothing to lose: no error.
  EXPECT_NO_THROW(check(t2, json::array({msg("user", "Hi"), msg("tool", " "), msg("assistant", "Hello.")})));

  // A template that names "system" and deliberately renders nothing for it: one warning in all.
  const char* no_system =
      "{% for m in messages %}{% if m['role'] == 'system' %}{% elif m['role'] == 'user' %}[U]{{ m['content'] }}"
      "{% else %}[A]{{ m['content'] }}</s>{% endif %}{% endfor %}";
  tok::ChatTemplate t3(no_system, "t3", sp);
  const json sys = json::array({msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello.")});
  EXPECT_NO_THROW(check(t3, sys));
  EXPECT_NO_THROW(check(t3, sys));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("messages[0]"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("\"system\""), std::string::npos) << warnings[0];
  // Content the template rewrites (trim, reasoning dropped) is found through the marker render.
  EXPECT_NO_THROW(check(tok::ChatTemplate(templates::kQwen3, "t", sp),
                        json::array({msg("user", "U1"), msg("assistant", "<think>\nr1\n</think>\n\nA1"),
                                     msg("user", "U2"), msg("assistant", "A2")})));
}

}  // namespace
