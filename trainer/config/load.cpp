// YAML -> TrainConfig. One schema (a table of fields per mapping: the top level, quantization,
// a dataset entry) drives everything: reading with type and range checks, unknown-key
// suggestions, --set path resolution, writing the resolved config, and the resume diff.
#include "trainer/config/load.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "trainer/common/ascii.h"
#include "trainer/common/bytes.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/common/numbers.h"

namespace qlora::config {

namespace {

// ---------------------------------------------------------------------------------------------
// Written values: what to_yaml emits and diff_configs compares.
struct Val {
  enum Kind { Null, Plain, Str, List, Map, Seq } kind = Null;
  std::string text;                              // Plain, Str
  std::vector<std::string> items;                // List (strings)
  std::vector<std::pair<std::string, Val>> map;  // Map
  std::vector<Val> seq;                          // Seq (of Map)
  // Declared here, defaulted below, where Val is complete (clang needs it for `map`).
  Val();
  Val(Kind k, std::string t, std::vector<std::string> i, std::vector<std::pair<std::string, Val>> m,
      std::vector<Val> s);
};
Val::Val() = default;
Val::Val(Kind k, std::string t, std::vector<std::string> i, std::vector<std::pair<std::string, Val>> m,
         std::vector<Val> s)
    : kind(k), text(std::move(t)), items(std::move(i)), map(std::move(m)), seq(std::move(s)) {}

Val plain(std::string s) { return {Val::Plain, std::move(s), {}, {}, {}}; }
Val str(std::string s) { return {Val::Str, std::move(s), {}, {}, {}}; }
Val null_val() { return {}; }

// Shortest text that reads back to the same double, laid out like Python's repr: plain decimals
// for exponents in [-4, 16) (0.0002, 16.5), scientific otherwise (1e-08).
std::string fmt_double(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  const std::string sci(buf, r.ptr);
  const int64_t exp = parse_c_int(std::string_view(sci).substr(sci.find('e') + 1)).value();
  if (exp < -4 || exp >= 16) return sci;
  r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  return std::string(buf, r.ptr);
}

// ---------------------------------------------------------------------------------------------
// Text helpers.

std::string lower(std::string s) {
  for (char& c : s) c = ascii_to_lower(c);
  return s;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

bool parse_int_text(const std::string& t, int64_t* out) {
  std::string s = trim(t);
  if (!s.empty() && s[0] == '+') s = s.substr(1);
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool parse_double_text(const std::string& t, double* out) {
  const std::string s = trim(t);
  if (s.empty()) return false;
  const std::optional<double> v = parse_c_double(s);
  if (!v || !std::isfinite(*v)) return false;
  // strtod's forms include hex and "inf"/"nan"; YAML numbers are decimal
  if (s.find_first_of("xXnN") != std::string::npos) return false;
  *out = *v;
  return true;
}

bool is_bool_word(const std::string& s) {
  static const std::set<std::string> w = {"true", "false", "yes", "no", "on", "off", "y", "n"};
  return w.count(lower(trim(s))) > 0;
}

// Would YAML read this plain text as something other than a string?
bool ambiguous_plain(const std::string& s) {
  double d;
  const std::string l = lower(s);
  return s.empty() || parse_double_text(s, &d) || is_bool_word(s) || l == "null" || l == "~" || l == ".inf" ||
         l == "-.inf" || l == ".nan";
}

std::string quote_text(const std::string& s) {
  std::string o = "\"";
  for (char c : shorten(s)) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

// How a user's value is shown in a message: numbers and booleans as written, text quoted.
std::string shown(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "null";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  const std::string& s = n.Scalar();
  double d;
  if (n.Tag() != "!" && (parse_double_text(s, &d) || is_bool_word(s))) return shorten(s);
  return quote_text(s);
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// " (did you mean "x"?)" for the closest candidate within a third of the word's length (>= 2).
std::string suggestion(const std::string& word, const std::vector<std::string>& candidates, const std::string& prefix) {
  const std::string w = lower(word);
  size_t best = std::string::npos;
  std::string pick;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(w, lower(c));
    if (d < best) {
      best = d;
      pick = c;
    }
  }
  if (pick.empty() || best > std::max<size_t>(2, word.size() / 3)) return "";
  return " (did you mean \"" + prefix + pick + "\"?)";
}

// ---------------------------------------------------------------------------------------------
// Parse context: where values came from, which keys were set, values without a struct field.

struct Ctx {
  std::string source;
  std::map<std::string, std::string> overrides;  // canonical key path -> "--set k=v"
  struct Seen {
    std::string written;  // the key path as the user wrote it
    YAML::Mark mark;
  };
  bool loftq_config_given = false;   // a non-null loftq_config (or peft.loftq_config) was read
  std::map<std::string, Seen> seen;  // canonical key path -> first place it was set
  std::optional<bool> load_in_4bit;  // no struct field: checked against adapter

  std::string where(const std::string& path, const YAML::Mark& mark) const {
    // the longest override that covers the path (equal, or a section above it)
    const std::string* best = nullptr;
    size_t best_len = 0;
    for (const auto& [k, text] : overrides) {
      const bool covers =
          path == k || (path.size() > k.size() && path.compare(0, k.size(), k) == 0 && path[k.size()] == '.');
      if (covers && k.size() >= best_len) {
        best = &text;
        best_len = k.size();
      }
    }
    if (best) return *best;
    if (mark.line >= 0) return source + ":" + std::to_string(mark.line + 1);
    return source;
  }

  [[noreturn]] void fail(const std::string& path, const YAML::Mark& mark, const std::string& msg) const {
    user_error(where(path, mark), ": ", path, ": ", msg);
  }
  // For cross-key checks: the place the key was set, or just the file.
  [[noreturn]] void fail_key(const std::string& canonical, const std::string& msg) const {
    auto it = seen.find(canonical);
    if (it == seen.end()) user_error(where(canonical, YAML::Mark::null_mark()), ": ", canonical, ": ", msg);
    user_error(where(canonical, it->second.mark), ": ", it->second.written, ": ", msg);
  }
  bool was_set(const std::string& canonical) const { return seen.count(canonical) > 0; }
};

// Where a value is being read.
struct In {
  std::string path;  // as written, e.g. "datasets.0.type"
  YAML::Mark mark;   // the key's position
  Ctx* ctx;
  [[noreturn]] void fail(const std::string& msg) const { ctx->fail(path, mark, msg); }
  [[noreturn]] void expected(const std::string& what, const YAML::Node& n) const {
    fail("expected " + what + ", got " + shown(n));
  }
};

int64_t read_int(const YAML::Node& n, const In& in, int64_t min, const std::string& what) {
  int64_t v = 0;
  if (!n.IsScalar() || !parse_int_text(n.Scalar(), &v) || v < min) in.expected(what, n);
  return v;
}

// A number in a range; lo/hi open or closed. `what` describes the range for the message.
double read_number(const YAML::Node& n, const In& in, double lo, bool lo_open, double hi, bool hi_open,
                   const std::string& what) {
  double v = 0;
  if (!n.IsScalar() || !parse_double_text(n.Scalar(), &v)) in.expected(what, n);
  if (v < lo || (lo_open && v == lo) || v > hi || (hi_open && v == hi)) in.expected(what, n);
  return v;
}

bool read_bool(const YAML::Node& n, const In& in) {
  if (n.IsScalar()) {
    const std::string s = lower(trim(n.Scalar()));
    if (s == "true" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "no" || s == "off") return false;
  }
  in.expected("true or false", n);
}

std::string read_string(const YAML::Node& n, const In& in, const std::string& what = "a string") {
  if (!n.IsScalar()) in.expected(what, n);
  return n.Scalar();
}

// One of `names` (case-insensitive); aliases map other spellings to a canonical name.
std::string read_enum(const YAML::Node& n, const In& in, const std::vector<std::string>& names,
                      const std::map<std::string, std::string>& aliases = {}) {
  std::string list;
  for (size_t i = 0; i < names.size(); ++i) list += (i ? ", " : "") + names[i];
  if (!n.IsScalar()) in.expected("one of " + list, n);
  const std::string v = lower(trim(n.Scalar()));
  if (std::find(names.begin(), names.end(), v) != names.end()) return v;
  if (auto it = aliases.find(v); it != aliases.end()) return it->second;
  std::vector<std::string> all = names;
  for (const auto& [a, c] : aliases) all.push_back(a);
  in.fail("expected one of " + list + ", got " + shown(n) + suggestion(v, all, ""));
}

std::vector<std::string> read_string_list(const YAML::Node& n, const In& in) {
  std::vector<std::string> out;
  if (n.IsScalar()) return {n.Scalar()};
  if (!n.IsSequence()) in.expected("a list of names", n);
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) In{in.path + "." + std::to_string(i), n[i].Mark(), in.ctx}.expected("a name", n[i]);
    out.push_back(n[i].Scalar());
  }
  return out;
}

// init_lora_weights: a boolean or one of PEFT's method names, returned lower-case.
std::string read_lora_init(const YAML::Node& n, const In& in) {
  const std::string what = "true, false, gaussian, pissa, pissa_niter_K (K a non-negative integer), olora or loftq";
  if (!n.IsScalar()) in.expected(what, n);
  const std::string v = lower(trim(n.Scalar()));
  if (v == "true" || v == "yes" || v == "on") return "true";
  if (v == "false" || v == "no" || v == "off") return "false";
  if (v == "gaussian" || v == "pissa" || v == "olora" || v == "loftq") return v;
  if (v.starts_with("pissa_niter_")) {
    int64_t k = 0;
    if (parse_int_text(v.substr(12), &k) && k >= 0) return "pissa_niter_" + std::to_string(k);
  }
  if (v == "eva" || v == "corda" || v == "orthogonal" || v == "lora_ga" || v == "mica")
    in.fail("PEFT's \"" + v + "\" initialization is not supported (expected " + what + ")");
  in.expected(what, n);
}

void read_loftq_config(config::LoraConfig& l, const YAML::Node& n, const In& in) {
  if (n.IsNull()) return;
  if (!n.IsMap()) in.expected("a mapping with loftq_bits and loftq_iter", n);
  in.ctx->loftq_config_given = true;
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string k = it->first.Scalar();
    const In sub{in.path + "." + k, it->first.Mark(), in.ctx};
    if (k == "loftq_bits") {
      const int64_t b = read_int(it->second, sub, 1, "4 (the base is NF4)");
      if (b != 4) sub.expected("4 (the base is NF4; PEFT's 8-bit LoftQ pairs with an int8 base)", it->second);
      l.loftq_bits = b;
    } else if (k == "loftq_iter") {
      l.loftq_iter = read_int(it->second, sub, 1, "a positive integer");
    } else {
      sub.fail("unknown key (expected loftq_bits or loftq_iter)");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The schema.

enum class Sub { None, Quantization, DatasetList, ModelOverrides };

template <class S>
struct Field {
  std::string key;                   // as written in YAML
  std::vector<std::string> aliases;  // other accepted spellings at the same level
  std::string canonical;             // canonical path when not prefix+key (top-level bnb_4bit_* aliases)
  bool written = true;               // false: an alias key that to_yaml does not emit
  Sub sub = Sub::None;
  std::function<void(S&)> reset;
  std::function<void(S&, const YAML::Node&, const In&)> read;
  std::function<Val(const S&)> write;
  std::function<ChangeKind(const Val&, const Val&)> change;
};

template <class S>
using Schema = std::vector<Field<S>>;

ChangeKind always(ChangeKind k, const Val&, const Val&) { return k; }

template <class S>
Field<S> make(std::string key, ChangeKind ck) {
  Field<S> f;
  f.key = std::move(key);
  f.change = [ck](const Val& a, const Val& b) { return always(ck, a, b); };
  return f;
}

// Accessor-based builders. `acc` is a lambda S& -> T&; the default comes from a default S.
template <class S, class A>
Field<S> int_field(std::string key, A acc, int64_t min, ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  const std::string what = min == 1 ? "a positive integer" : min == 0 ? "a non-negative integer" : "an integer";
  f.reset = [acc](S& s) {
    S d;
    acc(s) = acc(d);
  };
  f.read = [acc, min, what](S& s, const YAML::Node& n, const In& in) { acc(s) = read_int(n, in, min, what); };
  f.write = [acc](const S& s) { return plain(std::to_string(acc(const_cast<S&>(s)))); };
  return f;
}

template <class S, class A>
Field<S> opt_int_field(std::string key, A acc, int64_t min, ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) { acc(s).reset(); };
  f.read = [acc, min](S& s, const YAML::Node& n, const In& in) {
    acc(s) = read_int(n, in, min, min == 1 ? "a positive integer" : "a non-negative integer");
  };
  f.write = [acc](const S& s) {
    const auto& v = acc(const_cast<S&>(s));
    return v ? plain(std::to_string(*v)) : null_val();
  };
  return f;
}

template <class S, class A>
Field<S> num_field(std::string key, A acc, double lo, bool lo_open, double hi, bool hi_open, std::string what,
                   ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) {
    S d;
    acc(s) = acc(d);
  };
  f.read = [=](S& s, const YAML::Node& n, const In& in) {
    acc(s) = read_number(n, in, lo, lo_open, hi, hi_open, what);
  };
  f.write = [acc](const S& s) { return plain(fmt_double(acc(const_cast<S&>(s)))); };
  return f;
}

template <class S, class A>
Field<S> opt_num_field(std::string key, A acc, double lo, bool lo_open, double hi, bool hi_open, std::string what,
                       ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) { acc(s).reset(); };
  f.read = [=](S& s, const YAML::Node& n, const In& in) {
    acc(s) = read_number(n, in, lo, lo_open, hi, hi_open, what);
  };
  f.write = [acc](const S& s) {
    const auto& v = acc(const_cast<S&>(s));
    return v ? plain(fmt_double(*v)) : null_val();
  };
  return f;
}

template <class S, class A>
Field<S> bool_field(std::string key, A acc, ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) {
    S d;
    acc(s) = acc(d);
  };
  f.read = [acc](S& s, const YAML::Node& n, const In& in) { acc(s) = read_bool(n, in); };
  f.write = [acc](const S& s) { return plain(acc(const_cast<S&>(s)) ? "true" : "false"); };
  return f;
}

template <class S, class A>
Field<S> string_field(std::string key, A acc, ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) {
    S d;
    acc(s) = acc(d);
  };
  f.read = [acc](S& s, const YAML::Node& n, const In& in) { acc(s) = read_string(n, in); };
  f.write = [acc](const S& s) { return str(acc(const_cast<S&>(s))); };
  return f;
}

template <class S, class A>
Field<S> enum_field(std::string key, A acc, std::vector<std::string> names, std::map<std::string, std::string> aliases,
                    ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) {
    S d;
    acc(s) = acc(d);
  };
  f.read = [=](S& s, const YAML::Node& n, const In& in) { acc(s) = read_enum(n, in, names, aliases); };
  f.write = [acc](const S& s) { return str(acc(const_cast<S&>(s))); };
  return f;
}

template <class S, class A>
Field<S> list_field(std::string key, A acc, ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) { acc(s).clear(); };
  f.read = [acc](S& s, const YAML::Node& n, const In& in) { acc(s) = read_string_list(n, in); };
  f.write = [acc](const S& s) {
    Val v;
    v.kind = Val::List;
    v.items = acc(const_cast<S&>(s));
    return v;
  };
  return f;
}

template <class S>
Field<S> with_aliases(Field<S> f, std::vector<std::string> aliases) {
  f.aliases = std::move(aliases);
  return f;
}

// ---- quantization: { ... }
const Schema<QuantizationConfig>& quant_schema() {
  using Q = QuantizationConfig;
  constexpr auto I = ChangeKind::Incompatible;
  static const Schema<Q> s = [] {
    Schema<Q> v;
    v.push_back(with_aliases(enum_field<Q>(
                                 "quant_type", [](Q& q) -> std::string& { return q.quant_type; }, {"nf4"}, {}, I),
                             {"bnb_4bit_quant_type"}));
    v.push_back(with_aliases(bool_field<Q>(
                                 "double_quant", [](Q& q) -> bool& { return q.double_quant; }, I),
                             {"bnb_4bit_use_double_quant"}));
    Field<Q> bs = make<Q>("blocksize", I);
    bs.reset = [](Q& q) { q.blocksize = Q{}.blocksize; };
    bs.read = [](Q& q, const YAML::Node& n, const In& in) {
      int64_t b = 0;
      if (!n.IsScalar() || !parse_int_text(n.Scalar(), &b) || b < 32 || b > 4096 || (b & (b - 1)) != 0)
        in.expected("a power of two in 32..4096", n);
      q.blocksize = b;
    };
    bs.write = [](const Q& q) { return plain(std::to_string(q.blocksize)); };
    v.push_back(with_aliases(bs, {"bnb_4bit_blocksize"}));
    v.push_back(with_aliases(
        enum_field<Q>(
            "compute_dtype", [](Q& q) -> std::string& { return q.compute_dtype; }, {"auto", "bf16", "fp16", "fp32"},
            {{"bfloat16", "bf16"}, {"float16", "fp16"}, {"half", "fp16"}, {"float32", "fp32"}, {"float", "fp32"}}, I),
        {"bnb_4bit_compute_dtype"}));
    return v;
  }();
  return s;
}

// ---- overrides_of_model_config: { ... }
template <class S, class A>
Field<S> opt_bool_field(std::string key, A acc, ChangeKind ck) {
  Field<S> f = make<S>(std::move(key), ck);
  f.reset = [acc](S& s) { acc(s).reset(); };
  f.read = [acc](S& s, const YAML::Node& n, const In& in) { acc(s) = read_bool(n, in); };
  f.write = [acc](const S& s) {
    const auto& v = acc(const_cast<S&>(s));
    return v ? plain(*v ? "true" : "false") : null_val();
  };
  return f;
}

const Schema<ModelConfigOverrides>& model_overrides_schema() {
  using M = ModelConfigOverrides;
  constexpr auto I = ChangeKind::Incompatible;
  static const Schema<M> s = [] {
    Schema<M> v;
    v.push_back(opt_bool_field<M>(
        "output_router_logits", [](M& m) -> std::optional<bool>& { return m.output_router_logits; }, I));
    v.push_back(opt_num_field<M>(
        "router_aux_loss_coef", [](M& m) -> std::optional<double>& { return m.router_aux_loss_coef; }, 0, false, 1e300,
        false, "a non-negative number", I));
    return v;
  }();
  return s;
}

// ---- datasets: - { path, type, field... }
const Schema<config::DatasetSpec>& dataset_schema() {
  using D = config::DatasetSpec;
  constexpr auto I = ChangeKind::Incompatible;
  static const Schema<D> s = [] {
    Schema<D> v;
    v.push_back(string_field<D>(
        "path", [](D& d) -> std::string& { return d.path; }, I));
    v.push_back(string_field<D>(
        "split", [](D& d) -> std::string& { return d.split; }, I));
    {
      Field<D> f = enum_field<D>(
          "ds_type", [](D& d) -> std::string& { return d.ds_type; }, {"json", "parquet", "arrow", "csv"}, {}, I);
      // Unset (from the extension) is written as null.
      f.write = [](const D& d) { return d.ds_type.empty() ? null_val() : str(d.ds_type); };
      v.push_back(std::move(f));
    }
    v.push_back(enum_field<D>(
        "type", [](D& d) -> std::string& { return d.type; }, {"text", "alpaca", "chat", "prompt_completion"},
        {{"completion", "text"}, {"chat_template", "chat"}, {"input_output", "prompt_completion"}}, I));
    v.push_back(string_field<D>(
        "field", [](D& d) -> std::string& { return d.field; }, I));
    v.push_back(string_field<D>(
        "field_instruction", [](D& d) -> std::string& { return d.field_instruction; }, I));
    v.push_back(string_field<D>(
        "field_input", [](D& d) -> std::string& { return d.field_input; }, I));
    v.push_back(string_field<D>(
        "field_output", [](D& d) -> std::string& { return d.field_output; }, I));
    v.push_back(string_field<D>(
        "field_messages", [](D& d) -> std::string& { return d.field_messages; }, I));
    v.push_back(string_field<D>(
        "message_field_role", [](D& d) -> std::string& { return d.message_field_role; }, I));
    v.push_back(string_field<D>(
        "message_field_content", [](D& d) -> std::string& { return d.message_field_content; }, I));
    v.push_back(string_field<D>(
        "field_prompt", [](D& d) -> std::string& { return d.field_prompt; }, I));
    v.push_back(string_field<D>(
        "field_completion", [](D& d) -> std::string& { return d.field_completion; }, I));
    return v;
  }();
  return s;
}

template <class S>
const Field<S>* find_field(const Schema<S>& schema, const std::string& key) {
  for (const Field<S>& f : schema) {
    if (f.key == key) return &f;
    if (std::find(f.aliases.begin(), f.aliases.end(), key) != f.aliases.end()) return &f;
  }
  return nullptr;
}

template <class S>
std::vector<std::string> key_names(const Schema<S>& schema) {
  std::vector<std::string> out;
  for (const Field<S>& f : schema)
    if (f.written) out.push_back(f.key);
  return out;
}

// Reads a mapping into s with `schema`. prefix: "" or "quantization." or "datasets.3.".
template <class S>
void read_map(S& s, const YAML::Node& map, const Schema<S>& schema, const std::string& prefix, Ctx& ctx) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node k = it->first;  // copies: it-> returns a temporary proxy
    const YAML::Node v = it->second;
    if (!k.IsScalar())
      user_error(ctx.where(prefix, k.Mark()), ": ", prefix.empty() ? "config" : prefix.substr(0, prefix.size() - 1),
                 ": expected key names, got ", shown(k), " as a key");
    const std::string key = k.Scalar();
    const std::string path = prefix + key;
    const Field<S>* f = find_field(schema, key);
    if (!f)
      user_error(ctx.where(path, k.Mark()), ": unknown key ", quote_text(path),
                 suggestion(key, key_names(schema), prefix));
    const std::string canonical = f->canonical.empty() ? prefix + f->key : f->canonical;
    if (auto seen = ctx.seen.find(canonical); seen != ctx.seen.end())
      ctx.fail(path, k.Mark(),
               seen->second.written == path ? "given twice" : "already set as " + quote_text(seen->second.written));
    ctx.seen[canonical] = {path, k.Mark()};
    if (v.IsNull())
      f->reset(s);
    else
      f->read(s, v, In{path, k.Mark(), &ctx});
  }
}

std::vector<config::DatasetSpec> read_datasets(const YAML::Node& n, const In& in) {
  if (!n.IsSequence()) in.expected("a list of datasets (- path: ..., type: ...)", n);
  std::vector<config::DatasetSpec> out;
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string prefix = in.path + "." + std::to_string(i) + ".";
    const YAML::Node item = n[i];
    if (!item.IsMap())
      In{prefix.substr(0, prefix.size() - 1), item.Mark(), in.ctx}.expected("a mapping with path and type", item);
    config::DatasetSpec d;
    read_map(d, item, dataset_schema(), prefix, *in.ctx);
    if (d.path.empty())
      in.ctx->fail(prefix + "path", item.Mark(),
                   "required: the data file or directory (.jsonl, .json, .parquet, .arrow, .csv, ...)");
    out.push_back(std::move(d));
  }
  return out;
}

// ---- the top level
const Schema<TrainConfig>& top_schema() {
  using T = TrainConfig;
  constexpr auto I = ChangeKind::Incompatible;
  constexpr auto H = ChangeKind::Harmless;
  constexpr auto Sch = ChangeKind::Schedule;
  static const Schema<T> s = [] {
    Schema<T> v;
    v.push_back(string_field<T>(
        "base_model", [](T& c) -> std::string& { return c.base_model; }, I));
    v.push_back(with_aliases(string_field<T>(
                                 "tokenizer", [](T& c) -> std::string& { return c.tokenizer; }, I),
                             {"tokenizer_config"}));
    v.push_back(enum_field<T>(
        "adapter", [](T& c) -> std::string& { return c.lora.adapter; }, {"qlora", "lora"}, {}, I));
    {
      Field<T> f = make<T>("load_in_4bit", I);
      f.reset = [](T&) {};
      f.read = [](T&, const YAML::Node& n, const In& in) { in.ctx->load_in_4bit = read_bool(n, in); };
      f.write = [](const T& c) { return plain(c.lora.adapter == "qlora" ? "true" : "false"); };
      v.push_back(f);
    }
    {
      Field<T> f = make<T>("quantization", I);
      f.sub = Sub::Quantization;
      f.reset = [](T& c) { c.quantization = QuantizationConfig{}; };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        if (!n.IsMap()) in.expected("a mapping (quant_type, double_quant, blocksize, compute_dtype)", n);
        read_map(c.quantization, n, quant_schema(), "quantization.", *in.ctx);
      };
      f.write = [](const T& c) {
        Val m;
        m.kind = Val::Map;
        for (const auto& q : quant_schema()) m.map.emplace_back(q.key, q.write(c.quantization));
        return m;
      };
      v.push_back(f);
    }
    {
      Field<T> f = make<T>("overrides_of_model_config", I);
      f.sub = Sub::ModelOverrides;
      f.reset = [](T& c) { c.model_overrides = ModelConfigOverrides{}; };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        if (!n.IsMap()) in.expected("a mapping (output_router_logits, router_aux_loss_coef)", n);
        read_map(c.model_overrides, n, model_overrides_schema(), "overrides_of_model_config.", *in.ctx);
      };
      f.write = [](const T& c) {
        Val m;
        m.kind = Val::Map;
        for (const auto& q : model_overrides_schema()) m.map.emplace_back(q.key, q.write(c.model_overrides));
        return m;
      };
      v.push_back(with_aliases(f, {"model_config"}));
    }
    // bitsandbytes / HF spellings of the quantization keys at the top level
    for (const auto& q : quant_schema()) {
      if (q.aliases.empty()) continue;
      Field<T> f = make<T>(q.aliases.front(), I);
      f.canonical = "quantization." + q.key;
      f.written = false;
      const Field<QuantizationConfig>* qf = &q;
      f.reset = [qf](T& c) { qf->reset(c.quantization); };
      f.read = [qf](T& c, const YAML::Node& n, const In& in) { qf->read(c.quantization, n, in); };
      v.push_back(f);
    }
    v.push_back(int_field<T>(
        "lora_r", [](T& c) -> int64_t& { return c.lora.r; }, 1, I));
    v.push_back(num_field<T>(
        "lora_alpha", [](T& c) -> double& { return c.lora.alpha; }, 0, true, 1e300, false, "a positive number", I));
    v.push_back(num_field<T>(
        "lora_dropout", [](T& c) -> double& { return c.lora.dropout; }, 0, false, 1, true, "a number in [0, 1)", I));
    v.push_back(list_field<T>(
        "lora_target_modules", [](T& c) -> std::vector<std::string>& { return c.lora.target_modules; }, I));
    v.push_back(bool_field<T>(
        "lora_target_linear", [](T& c) -> bool& { return c.lora.target_linear; }, I));
    v.push_back(list_field<T>(
        "lora_target_parameters", [](T& c) -> std::vector<std::string>& { return c.lora.target_parameters; }, I));
    v.push_back(list_field<T>(
        "lora_modules_to_save", [](T& c) -> std::vector<std::string>& { return c.lora.modules_to_save; }, I));
    v.push_back(bool_field<T>(
        "use_rslora", [](T& c) -> bool& { return c.lora.use_rslora; }, I));
    v.push_back(with_aliases(bool_field<T>(
                                 "use_dora", [](T& c) -> bool& { return c.lora.use_dora; }, I),
                             {"peft_use_dora"}));
    {
      // true | false | gaussian | pissa | pissa_niter_K | olora | loftq (PEFT's values).
      Field<T> f = make<T>("init_lora_weights", I);
      f.reset = [](T& c) { c.lora.init_lora_weights = config::LoraConfig{}.init_lora_weights; };
      f.read = [](T& c, const YAML::Node& n, const In& in) { c.lora.init_lora_weights = read_lora_init(n, in); };
      f.write = [](const T& c) {
        const std::string& v = c.lora.init_lora_weights;
        return v == "true" || v == "false" ? plain(v) : str(v);
      };
      v.push_back(f);
    }
    {
      // loftq_config: {loftq_bits, loftq_iter}; Axolotl nests it as peft: {loftq_config: ...}.
      // Setting it selects init_lora_weights: loftq, as Axolotl does.
      Field<T> f = make<T>("loftq_config", I);
      f.reset = [](T& c) {
        c.lora.loftq_bits = config::LoraConfig{}.loftq_bits;
        c.lora.loftq_iter = config::LoraConfig{}.loftq_iter;
      };
      f.read = [](T& c, const YAML::Node& n, const In& in) { read_loftq_config(c.lora, n, in); };
      f.write = [](const T& c) {
        if (c.lora.init_lora_weights != "loftq") return null_val();
        Val m;
        m.kind = Val::Map;
        m.map.emplace_back("loftq_bits", plain(std::to_string(c.lora.loftq_bits)));
        m.map.emplace_back("loftq_iter", plain(std::to_string(c.lora.loftq_iter)));
        return m;
      };
      v.push_back(f);
      Field<T> p = make<T>("peft", I);
      p.canonical = "loftq_config";
      p.written = false;
      p.reset = f.reset;
      p.read = [](T& c, const YAML::Node& n, const In& in) {
        if (n.IsNull()) return;
        if (!n.IsMap()) in.expected("a mapping with loftq_config", n);
        for (auto it = n.begin(); it != n.end(); ++it) {
          const In sub{in.path + "." + it->first.Scalar(), it->first.Mark(), in.ctx};
          if (it->first.Scalar() != "loftq_config") sub.fail("unknown key (expected loftq_config)");
          read_loftq_config(c.lora, it->second, sub);
        }
      };
      v.push_back(p);
    }

    v.push_back(int_field<T>(
        "sequence_len", [](T& c) -> int64_t& { return c.data.sequence_len; }, 1, I));
    v.push_back(bool_field<T>(
        "sample_packing", [](T& c) -> bool& { return c.data.sample_packing; }, I));
    v.push_back(bool_field<T>(
        "train_on_inputs", [](T& c) -> bool& { return c.data.train_on_inputs; }, I));
    v.push_back(bool_field<T>(
        "skip_invalid", [](T& c) -> bool& { return c.data.skip_invalid; }, I));
    v.push_back(string_field<T>(
        "chat_template", [](T& c) -> std::string& { return c.data.chat_template; }, I));
    {
      // Extra template variables (e.g. date_string), name -> scalar (read as JSON when it parses).
      Field<T> f = make<T>("chat_template_kwargs", I);
      f.reset = [](T& c) { c.data.chat_template_kwargs.clear(); };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        c.data.chat_template_kwargs.clear();
        if (n.IsNull()) return;
        if (!n.IsMap()) in.expected("a map of variable names to values", n);
        for (auto it = n.begin(); it != n.end(); ++it) {
          const std::string k = it->first.Scalar();
          if (!it->second.IsScalar())
            In{in.path + "." + k, it->first.Mark(), in.ctx}.expected("a scalar value", it->second);
          c.data.chat_template_kwargs[k] = it->second.Scalar();
        }
      };
      f.write = [](const T& c) {
        Val v;
        v.kind = Val::Map;
        for (const auto& [k, x] : c.data.chat_template_kwargs) v.map.emplace_back(k, str(x));
        return v;
      };
      v.push_back(f);
    }
    v.push_back(bool_field<T>(
        "pad_to_sequence_len", [](T& c) -> bool& { return c.data.pad_to_sequence_len; }, H));
    {
      Field<T> f = make<T>("datasets", I);
      f.sub = Sub::DatasetList;
      f.reset = [](T& c) { c.data.datasets.clear(); };
      f.read = [](T& c, const YAML::Node& n, const In& in) { c.data.datasets = read_datasets(n, in); };
      v.push_back(f);
      f.key = "test_datasets";
      f.reset = [](T& c) { c.data.test_datasets.clear(); };
      f.read = [](T& c, const YAML::Node& n, const In& in) { c.data.test_datasets = read_datasets(n, in); };
      v.push_back(f);
    }
    auto write_datasets = [](const std::vector<config::DatasetSpec>& ds) {
      Val s;
      s.kind = Val::Seq;
      for (const auto& d : ds) {
        Val m;
        m.kind = Val::Map;
        for (const auto& f : dataset_schema()) m.map.emplace_back(f.key, f.write(d));
        s.seq.push_back(std::move(m));
      }
      return s;
    };
    for (auto& f : v) {
      if (f.key == "datasets") f.write = [write_datasets](const T& c) { return write_datasets(c.data.datasets); };
      if (f.key == "test_datasets")
        f.write = [write_datasets](const T& c) { return write_datasets(c.data.test_datasets); };
    }
    v.push_back(num_field<T>(
        "val_set_size", [](T& c) -> double& { return c.data.val_set_size; }, 0, false, 1, true, "a fraction in [0, 1)",
        I));

    v.push_back(int_field<T>(
        "micro_batch_size", [](T& c) -> int64_t& { return c.micro_batch_size; }, 1, I));
    v.push_back(int_field<T>(
        "gradient_accumulation_steps", [](T& c) -> int64_t& { return c.gradient_accumulation_steps; }, 1, I));
    v.push_back(opt_int_field<T>(
        "num_epochs", [](T& c) -> std::optional<int64_t>& { return c.num_epochs; }, 1, Sch));
    v.push_back(opt_int_field<T>(
        "max_steps", [](T& c) -> std::optional<int64_t>& { return c.max_steps; }, 1, Sch));

    using O = OptimizerConfig;
    {
      Field<T> f = make<T>("optimizer", I);
      f.reset = [](T& c) {
        c.optim.optimizer = O{}.optimizer;
        c.optim.paged = O{}.paged;
      };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        const std::string o = read_enum(n, in, {"adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"},
                                        {{"adamw_torch", "adamw"},
                                         {"adamw_torch_fused", "adamw"},
                                         {"adamw_bnb_8bit", "adamw_8bit"},
                                         {"paged_adamw_32bit", "paged_adamw"}});
        c.optim.paged = o.starts_with("paged_");
        c.optim.optimizer = c.optim.paged ? o.substr(6) : o;
      };
      f.write = [](const T& c) { return str((c.optim.paged ? "paged_" : "") + c.optim.optimizer); };
      // paging moves state, never changes a bit of it: only the state format matters on resume
      f.change = [](const Val& a, const Val& b) {
        auto base = [](const std::string& s) { return s.starts_with("paged_") ? s.substr(6) : s; };
        return base(a.text) == base(b.text) ? ChangeKind::Harmless : ChangeKind::Incompatible;
      };
      v.push_back(f);
    }
    {
      Field<T> f = make<T>("optimizer_device_budget", H);
      f.reset = [](T& c) { c.optim.device_budget = O{}.device_budget; };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        const bool is_auto = n.IsScalar() && lower(trim(n.Scalar())) == "auto";
        if (!n.IsScalar() || (!is_auto && !parse_byte_size(n.Scalar())))
          in.expected("auto or a size like 512MB or 2GiB", n);
        c.optim.device_budget = is_auto ? "auto" : trim(n.Scalar());
      };
      f.write = [](const T& c) { return str(c.optim.device_budget); };
      v.push_back(f);
    }
    v.push_back(num_field<T>(
        "learning_rate", [](T& c) -> double& { return c.optim.learning_rate; }, 0, true, 1e300, false,
        "a positive number", I));
    v.push_back(enum_field<T>(
        "lr_scheduler", [](T& c) -> std::string& { return c.optim.lr_scheduler; }, {"cosine", "linear", "constant"},
        {{"constant_with_warmup", "constant"}}, I));
    v.push_back(int_field<T>(
        "warmup_steps", [](T& c) -> int64_t& { return c.optim.warmup_steps; }, 0, I));
    v.push_back(opt_num_field<T>(
        "warmup_ratio", [](T& c) -> std::optional<double>& { return c.optim.warmup_ratio; }, 0, false, 1, true,
        "a fraction in [0, 1)", I));
    v.push_back(num_field<T>(
        "weight_decay", [](T& c) -> double& { return c.optim.weight_decay; }, 0, false, 1e300, false,
        "a non-negative number", I));
    v.push_back(num_field<T>(
        "max_grad_norm", [](T& c) -> double& { return c.optim.max_grad_norm; }, 0, false, 1e300, false,
        "a non-negative number (0 disables clipping)", I));
    v.push_back(num_field<T>(
        "adam_beta1", [](T& c) -> double& { return c.optim.adam_beta1; }, 0, false, 1, true, "a number in [0, 1)", I));
    v.push_back(num_field<T>(
        "adam_beta2", [](T& c) -> double& { return c.optim.adam_beta2; }, 0, false, 1, true, "a number in [0, 1)", I));
    v.push_back(num_field<T>(
        "adam_epsilon", [](T& c) -> double& { return c.optim.adam_epsilon; }, 0, true, 1e300, false,
        "a positive number", I));
    v.push_back(opt_num_field<T>(
        "loraplus_lr_ratio", [](T& c) -> std::optional<double>& { return c.optim.loraplus_lr_ratio; }, 0, true, 1e300,
        false, "a positive number (LoRA+: lora_B's learning rate over lora_A's)", I));
    v.push_back(num_field<T>(
        "loraplus_weight_decay", [](T& c) -> double& { return c.optim.loraplus_weight_decay; }, 0, false, 1e300, false,
        "a non-negative number", I));
    v.push_back(opt_num_field<T>(
        "loraplus_lr_embedding", [](T& c) -> std::optional<double>& { return c.optim.loraplus_lr_embedding; }, 0, true,
        1e300, false, "a positive number", I));

    {
      // true | false | offload (Axolotl's spelling: checkpointed block inputs kept in host memory)
      Field<T> f = make<T>("gradient_checkpointing", H);
      f.reset = [](T& c) {
        c.gradient_checkpointing = false;
        c.activation_offload = false;
      };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        if (n.IsScalar() && lower(trim(n.Scalar())) == "offload") {
          c.gradient_checkpointing = c.activation_offload = true;
          return;
        }
        if (n.IsScalar()) {
          const std::string s = lower(trim(n.Scalar()));
          if (s == "true" || s == "yes" || s == "on" || s == "false" || s == "no" || s == "off") {
            c.gradient_checkpointing = read_bool(n, in);
            c.activation_offload = false;
            return;
          }
        }
        in.expected("true, false or offload", n);
      };
      f.write = [](const T& c) {
        return plain(c.activation_offload ? "offload" : c.gradient_checkpointing ? "true" : "false");
      };
      v.push_back(f);
    }
    {
      Field<T> f = make<T>("seed", I);
      f.reset = [](T& c) { c.seed = T{}.seed; };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        c.seed = static_cast<uint64_t>(read_int(n, in, 0, "a non-negative integer"));
      };
      f.write = [](const T& c) { return plain(std::to_string(c.seed)); };
      v.push_back(f);
    }
    {
      Field<T> f = make<T>("device", H);
      f.reset = [](T& c) { c.device = T{}.device; };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        const std::string d = n.IsScalar() ? lower(trim(n.Scalar())) : "";
        int64_t idx = 0;
        const bool ok = d == "auto" || d == "cpu" || d == "cuda" ||
                        (d.starts_with("cuda:") && parse_int_text(d.substr(5), &idx) && idx >= 0);
        if (!ok) in.expected("auto, cpu, cuda or cuda:N", n);
        c.device = d;
      };
      f.write = [](const T& c) { return str(c.device); };
      v.push_back(f);
    }
    v.push_back(int_field<T>(
        "max_nonfinite_steps", [](T& c) -> int64_t& { return c.max_nonfinite_steps; }, 1, H));
    v.push_back(string_field<T>(
        "output_dir", [](T& c) -> std::string& { return c.output_dir; }, H));
    v.push_back(string_field<T>(
        "dataset_prepared_path", [](T& c) -> std::string& { return c.dataset_prepared_path; }, H));
    v.push_back(opt_bool_field<T>(
        "streaming", [](T& c) -> std::optional<bool>& { return c.data.streaming; }, H));
    v.push_back(int_field<T>(
        "save_steps", [](T& c) -> int64_t& { return c.save_steps; }, 0, H));
    v.push_back(int_field<T>(
        "save_total_limit", [](T& c) -> int64_t& { return c.save_total_limit; }, 0, H));
    v.push_back(int_field<T>(
        "eval_steps", [](T& c) -> int64_t& { return c.eval_steps; }, 0, H));
    v.push_back(bool_field<T>(
        "eval_on_start", [](T& c) -> bool& { return c.eval_on_start; }, H));
    v.push_back(bool_field<T>(
        "eval_exact_match", [](T& c) -> bool& { return c.eval_exact_match; }, H));
    v.push_back(int_field<T>(
        "eval_max_new_tokens", [](T& c) -> int64_t& { return c.eval_max_new_tokens; }, 1, H));
    v.push_back(int_field<T>(
        "logging_steps", [](T& c) -> int64_t& { return c.logging_steps; }, 1, H));
    {
      // report_to: a name or a list of names, as transformers takes it; "all" is every
      // integration there is (tensorboard), "none" none.
      Field<T> f = make<T>("report_to", H);
      f.reset = [](T& c) { c.report_to.clear(); };
      f.read = [](T& c, const YAML::Node& n, const In& in) {
        const std::string what = "tensorboard, all or none (or a list of them)";
        if (n.IsNull()) {
          c.report_to.clear();
          return;
        }
        if (!n.IsScalar() && !n.IsSequence()) in.expected(what, n);
        std::vector<std::string> out;
        for (size_t i = 0; i < (n.IsScalar() ? 1 : n.size()); ++i) {
          const YAML::Node item = n.IsScalar() ? n : n[i];
          const In at = n.IsScalar() ? in : In{in.path + "." + std::to_string(i), item.Mark(), in.ctx};
          const std::string name = item.IsScalar() ? lower(trim(item.Scalar())) : "";
          if (name == "none") continue;
          if (name != "tensorboard" && name != "all") at.expected(what, item);
          if (std::find(out.begin(), out.end(), "tensorboard") == out.end()) out.push_back("tensorboard");
        }
        c.report_to = out;
      };
      f.write = [](const T& c) {
        if (c.report_to.empty()) return str("none");
        Val v;
        v.kind = Val::List;
        v.items = c.report_to;
        return v;
      };
      v.push_back(f);
    }
    v.push_back(string_field<T>(
        "logging_dir", [](T& c) -> std::string& { return c.logging_dir; }, H));
    v.push_back(bool_field<T>(
        "memory_check", [](T& c) -> bool& { return c.memory_check; }, H));
    v.push_back(enum_field<T>(
        "ddp_backend", [](T& c) -> std::string& { return c.ddp_backend; }, {"auto", "gloo", "nccl"}, {}, H));
    v.push_back(int_field<T>(
        "ddp_timeout", [](T& c) -> int64_t& { return c.ddp_timeout; }, 1, H));
    v.push_back(int_field<T>(
        "profiler_steps", [](T& c) -> int64_t& { return c.profiler_steps; }, 0, H));
    v.push_back(int_field<T>(
        "profiler_steps_start", [](T& c) -> int64_t& { return c.profiler_steps_start; }, 0, H));
    return v;
  }();
  return s;
}

// ---------------------------------------------------------------------------------------------
// --set overrides.

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    size_t e = s.find('.', b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

// Removes every spelling of a field from a mapping node.
template <class S>
void erase_spellings(YAML::Node& map, const Field<S>& f) {
  if (!map.IsMap()) return;
  std::vector<std::string> names = f.aliases;
  names.push_back(f.key);
  for (const std::string& n : names)
    while (map[n].IsDefined() && map.remove(n)) {}
}

// Ensures map[key] is a mapping (or a sequence when `seq`) and returns it.
YAML::Node child(YAML::Node& map, const std::string& key, bool seq) {
  YAML::Node c = map[key];
  if (!c.IsDefined() || (seq ? !c.IsSequence() : !c.IsMap())) {
    map[key] = YAML::Node(seq ? YAML::NodeType::Sequence : YAML::NodeType::Map);
    c.reset(map[key]);
  }
  return c;
}

void apply_override(YAML::Node& root, const std::string& text, Ctx& ctx) {
  const std::string where = "--set " + text;
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) user_error(where, ": expected key=value, e.g. --set lora_r=16");
  const std::string key = trim(text.substr(0, eq));
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) { user_error(where, ": ", key, ": the value is not valid YAML (", e.msg, ")"); }
  const std::vector<std::string> segs = split_dots(key);
  for (const auto& s : segs)
    if (s.empty()) user_error(where, ": expected a key path like lora_r or quantization.blocksize");

  auto unknown = [&](const std::string& prefix, const std::string& seg, const std::vector<std::string>& names) {
    user_error(where, ": unknown key ", quote_text(prefix + seg), suggestion(seg, names, prefix));
  };
  auto no_sub = [&](const std::string& path) { user_error(where, ": ", path, " has no sub-keys"); };

  // top level
  const Field<TrainConfig>* tf = find_field(top_schema(), segs[0]);
  if (!tf) unknown("", segs[0], key_names(top_schema()));
  std::string canonical;
  if (!tf->canonical.empty()) {
    // a top-level spelling of a quantization key: write it where it belongs
    if (segs.size() > 1) no_sub(segs[0]);
    erase_spellings(root, *tf);
    YAML::Node q = child(root, "quantization", false);
    const std::string qkey = tf->canonical.substr(std::string("quantization.").size());
    erase_spellings(q, *find_field(quant_schema(), qkey));
    q[qkey] = value;
    ctx.overrides[tf->canonical] = where;
    return;
  }
  if (segs.size() == 1) {
    erase_spellings(root, *tf);
    if (tf->sub == Sub::Quantization)  // the section replaces the top-level bnb_4bit_* spellings too
      for (const auto& f : top_schema())
        if (!f.canonical.empty()) erase_spellings(root, f);
    root[tf->key] = value;
    ctx.overrides[tf->key] = where;
    return;
  }
  if (tf->sub == Sub::Quantization) {
    if (segs.size() > 2) no_sub("quantization." + segs[1]);
    const Field<QuantizationConfig>* qf = find_field(quant_schema(), segs[1]);
    if (!qf) unknown("quantization.", segs[1], key_names(quant_schema()));
    for (const auto& f : top_schema())  // the top-level spelling of the same key
      if (f.canonical == "quantization." + qf->key) erase_spellings(root, f);
    YAML::Node q = child(root, "quantization", false);
    erase_spellings(q, *qf);
    q[qf->key] = value;
    ctx.overrides["quantization." + qf->key] = where;
    return;
  }
  if (tf->sub == Sub::ModelOverrides) {
    if (segs.size() > 2) no_sub(tf->key + "." + segs[1]);
    const Field<ModelConfigOverrides>* mf = find_field(model_overrides_schema(), segs[1]);
    if (!mf) unknown(tf->key + ".", segs[1], key_names(model_overrides_schema()));
    std::string written = tf->key;  // the spelling the file uses, if any
    for (const std::string& a : tf->aliases)
      if (!root[tf->key].IsDefined() && root[a].IsDefined()) written = a;
    YAML::Node mo = child(root, written, false);
    erase_spellings(mo, *mf);
    mo[mf->key] = value;
    ctx.overrides[tf->key + "." + mf->key] = where;
    return;
  }
  if (tf->sub == Sub::DatasetList) {
    YAML::Node list = child(root, tf->key, true);
    int64_t idx = -1;
    if (!parse_int_text(segs[1], &idx) || idx < 0)
      user_error(where, ": ", tf->key, ".", segs[1], ": expected a list index (", tf->key, ".0.path)");
    const int64_t size = static_cast<int64_t>(list.size());
    if (idx > size)
      user_error(where, ": ", tf->key, ".", idx, ": index out of range (", tf->key, " has ", size,
                 size == 1 ? " entry" : " entries", ")");
    const std::string prefix = tf->key + "." + std::to_string(idx);
    if (idx == size) list.push_back(YAML::Node(YAML::NodeType::Map));
    const size_t at = static_cast<size_t>(idx);
    if (segs.size() == 2) {
      list[at] = value;
      ctx.overrides[prefix] = where;
      return;
    }
    if (segs.size() > 3) no_sub(prefix + "." + segs[2]);
    const Field<config::DatasetSpec>* df = find_field(dataset_schema(), segs[2]);
    if (!df) unknown(prefix + ".", segs[2], key_names(dataset_schema()));
    YAML::Node item = list[at];
    if (!item.IsMap()) {
      list[at] = YAML::Node(YAML::NodeType::Map);
      item.reset(list[at]);
    }
    erase_spellings(item, *df);
    item[df->key] = value;
    ctx.overrides[prefix + "." + df->key] = where;
    return;
  }
  no_sub(tf->key);
}

// ---------------------------------------------------------------------------------------------
// Cross-key checks and path resolution.

std::string absolute_path(const std::string& p) {
  if (p.empty()) return p;
  return std::filesystem::absolute(std::filesystem::path(p)).lexically_normal().string();
}

void finish(TrainConfig& c, Ctx& ctx) {
  if (c.base_model.empty())
    ctx.fail_key("base_model", "required: the base model's directory (a Hugging Face checkpoint)");
  if (c.data.datasets.empty()) ctx.fail_key("datasets", "required: a list of training files (- path: ..., type: ...)");
  if (c.num_epochs && c.max_steps) ctx.fail_key("max_steps", "set either num_epochs or max_steps, not both");
  if (!c.num_epochs && !c.max_steps) ctx.fail_key("num_epochs", "required: set num_epochs or max_steps");
  if (c.optim.warmup_ratio && c.optim.warmup_steps > 0)
    ctx.fail_key("warmup_ratio", "set either warmup_steps or warmup_ratio, not both");
  if (c.lora.target_modules.empty() && !c.lora.target_linear && c.lora.target_parameters.empty())
    ctx.fail_key("lora_target_modules",
                 "required: the modules to adapt (e.g. [q_proj, v_proj]), or lora_target_linear: true");
  if (ctx.loftq_config_given) {
    if (!ctx.was_set("init_lora_weights"))
      c.lora.init_lora_weights = "loftq";
    else if (c.lora.init_lora_weights != "loftq")
      ctx.fail_key("loftq_config", "set with init_lora_weights: " + c.lora.init_lora_weights +
                                       " (loftq_config configures init_lora_weights: loftq)");
  }
  if (!c.lora.target_parameters.empty() && c.lora.use_dora)
    ctx.fail_key("use_dora", "true with lora_target_parameters (PEFT has no DoRA for expert tensors)");
  if (!c.lora.target_parameters.empty() && c.lora.dropout != 0)
    ctx.fail_key("lora_dropout",
                 "must be 0 with lora_target_parameters (PEFT's adapters on expert tensors have no "
                 "dropout)");
  if (ctx.load_in_4bit) {
    if (!ctx.was_set("adapter")) {
      c.lora.adapter = *ctx.load_in_4bit ? "qlora" : "lora";
    } else if (*ctx.load_in_4bit != (c.lora.adapter == "qlora")) {
      ctx.fail_key("load_in_4bit", *ctx.load_in_4bit
                                       ? "true contradicts adapter: lora (use adapter: qlora for a 4-bit base)"
                                       : "false contradicts adapter: qlora (qlora loads the base in 4 bit)");
    }
  }
  if (c.data.val_set_size > 0 && !c.data.test_datasets.empty())
    ctx.fail_key("val_set_size", "set either val_set_size or test_datasets, not both");
  if (c.eval_steps > 0 && c.data.val_set_size == 0 && c.data.test_datasets.empty())
    ctx.fail_key("eval_steps", "needs validation data: set val_set_size or test_datasets");

  if (c.tokenizer.empty()) c.tokenizer = c.base_model;
  c.base_model = absolute_path(c.base_model);
  c.tokenizer = absolute_path(c.tokenizer);
  c.output_dir = absolute_path(c.output_dir);
  c.dataset_prepared_path = absolute_path(c.dataset_prepared_path);
  // logging_dir: by default a fixed directory of the run, so a resumed run appends to the same
  // TensorBoard run (HF's default adds the date and host, a new run per start).
  c.logging_dir =
      absolute_path(c.logging_dir.empty() ? (std::filesystem::path(c.output_dir) / "runs").string() : c.logging_dir);
  for (auto& d : c.data.datasets) d.path = absolute_path(d.path);
  for (auto& d : c.data.test_datasets) d.path = absolute_path(d.path);
  c.data.seed = c.seed;
  c.data.scratch_dir = c.dataset_prepared_path;  // streaming's scratch files: beside the cache, else $TMPDIR
  for (const auto& [canonical, seen] : ctx.seen) c.origins[canonical] = ctx.where(canonical, seen.mark);
  for (const auto& [canonical, text] : ctx.overrides) c.origins.emplace(canonical, text);
}

// ---------------------------------------------------------------------------------------------
// Writing and comparing.

Val config_val(const TrainConfig& c) {
  Val m;
  m.kind = Val::Map;
  for (const auto& f : top_schema())
    if (f.written) m.map.emplace_back(f.key, f.write(c));
  return m;
}

// Text that a plain scalar would not carry back as itself: ambiguous words, and leading or
// trailing whitespace or control characters (a plain scalar is trimmed, "\r" ends its line).
bool needs_quotes(const std::string& s) {
  if (ambiguous_plain(s) || ascii_is_space(s.front()) || ascii_is_space(s.back())) return true;
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

void emit_scalar(YAML::Emitter& out, const Val& v) {
  if (v.kind == Val::Null)
    out << YAML::Null;
  else if (v.kind == Val::Str && needs_quotes(v.text))
    out << YAML::DoubleQuoted << v.text;
  else
    out << v.text;
}

void emit(YAML::Emitter& out, const Val& v) {
  switch (v.kind) {
    case Val::List:
      out << YAML::Flow << YAML::BeginSeq;
      for (const auto& s : v.items) emit_scalar(out, str(s));
      out << YAML::EndSeq;
      break;
    case Val::Map:
      out << YAML::Block << YAML::BeginMap;
      for (const auto& [k, x] : v.map) {
        out << YAML::Key << k << YAML::Value;
        emit(out, x);
      }
      out << YAML::EndMap;
      break;
    case Val::Seq:
      if (v.seq.empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        break;
      }
      out << YAML::Block << YAML::BeginSeq;
      for (const auto& x : v.seq) emit(out, x);
      out << YAML::EndSeq;
      break;
    default: emit_scalar(out, v);
  }
}

std::string val_text(const Val& v) {
  YAML::Emitter out;
  emit(out, v);
  return out.c_str();
}

// Leaves of the value tree: key path -> (text, the top-level field's change rule, the value).
struct Leaf {
  std::string text;
  const Field<TrainConfig>* field;
  Val val;
};

void flatten(const Val& v, const std::string& path, const Field<TrainConfig>* f, std::map<std::string, Leaf>& out,
             std::vector<std::string>& order) {
  auto add = [&](const std::string& p, const Val& x) {
    order.push_back(p);
    out[p] = {val_text(x), f, x};
  };
  if (v.kind == Val::Map) {
    for (const auto& [k, x] : v.map) flatten(x, path.empty() ? k : path + "." + k, f, out, order);
  } else if (v.kind == Val::Seq) {
    if (v.seq.empty()) add(path, v);
    for (size_t i = 0; i < v.seq.size(); ++i) flatten(v.seq[i], path + "." + std::to_string(i), f, out, order);
  } else {
    add(path, v);
  }
}

}  // namespace

TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides) {
  Ctx ctx;
  ctx.source = source;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    user_error(source, e.mark.line >= 0 ? ":" + std::to_string(e.mark.line + 1) : "", ": invalid YAML: ", e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) user_error(source, ": expected a mapping of config keys (key: value lines), got ", shown(root));
  for (const std::string& o : overrides) apply_override(root, o, ctx);
  TrainConfig c;
  c.config_path = source;
  read_map(c, root, top_schema(), "", ctx);
  finish(c, ctx);
  return c;
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_config(fs::read_file(path), path, overrides);
}

std::string TrainConfig::where(const std::string& key) const {
  // the key itself, else the nearest section above it that was set (datasets.0, datasets)
  std::string k = key;
  for (;;) {
    if (auto it = origins.find(k); it != origins.end()) return it->second;
    const size_t dot = k.rfind('.');
    if (dot == std::string::npos) return config_path;
    k.resize(dot);
  }
}

std::string locate_message(const TrainConfig& cfg, const std::string& message) {
  size_t n = 0;
  while (n < message.size() && (ascii_is_alnum(message[n]) || message[n] == '_' || message[n] == '.')) ++n;
  // "KEY: ..." or, from the Jinja parser, "chat_template line N: ..."
  if (n == 0 || (message.compare(n, 1, ":") != 0 && message.compare(n, 6, " line ") != 0)) return message;
  const std::string key = message.substr(0, n);
  const size_t dot = key.find('.');
  const Field<TrainConfig>* f = find_field(top_schema(), key.substr(0, dot));
  // a file name like tokenizer.json is not a key path: only sections have sub-keys
  if (!f || (dot != std::string::npos && f->sub == Sub::None)) return message;
  return cfg.where(key) + ": " + message;
}

std::string to_yaml(const TrainConfig& cfg) { return val_text(config_val(cfg)) + "\n"; }

const char* change_kind_name(ChangeKind k) {
  switch (k) {
    case ChangeKind::Harmless: return "harmless";
    case ChangeKind::Schedule: return "schedule";
    default: return "incompatible";
  }
}

std::vector<ConfigChange> diff_configs(const TrainConfig& saved, const TrainConfig& now) {
  std::map<std::string, Leaf> a, b;
  std::vector<std::string> order;
  for (const auto& f : top_schema()) {
    if (!f.written) continue;
    flatten(f.write(saved), f.key, &f, a, order);
    flatten(f.write(now), f.key, &f, b, order);
  }
  std::vector<ConfigChange> out;
  std::set<std::string> done;
  for (const std::string& k : order) {
    if (!done.insert(k).second) continue;  // keys present on both sides are listed twice
    auto ia = a.find(k), ib = b.find(k);
    const std::string before = ia == a.end() ? "(absent)" : ia->second.text;
    const std::string after = ib == b.end() ? "(absent)" : ib->second.text;
    if (before == after) continue;
    const Leaf& leaf = ia != a.end() ? ia->second : ib->second;
    ChangeKind kind = ChangeKind::Incompatible;
    if (ia != a.end() && ib != b.end())
      kind = leaf.field->change(ia->second.val, ib->second.val);
    else
      kind = leaf.field->change(Val{}, Val{});
    out.push_back({k, before, after, kind});
  }
  return out;
}

}  // namespace qlora::config
