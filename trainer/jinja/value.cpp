// Jinja values with Python semantics: construction, str()/repr()/json.dumps, equality.
#include "trainer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "trainer/common/error.h"
#include "trainer/common/numbers.h"
#include "trainer/unicode/utf8.h"

namespace qlora::jinja {

// ---- construction and access ------------------------------------------------------------------

const Value* ValueDict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

Value* ValueDict::find(std::string_view key) {
  for (auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void ValueDict::set(std::string key, Value value) {
  if (Value* v = find(key)) {
    *v = std::move(value);
  } else {
    items.emplace_back(std::move(key), std::move(value));
  }
}

Value::Value(std::string s) : kind_(Kind::String), s_(std::make_shared<const std::string>(std::move(s))) {}
Value::Value(ValueList list) : kind_(Kind::List), l_(std::make_shared<ValueList>(std::move(list))) {}
Value::Value(ValueDict dict) : kind_(Kind::Dict), d_(std::make_shared<ValueDict>(std::move(dict))) {}

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}

Value Value::make_namespace(ValueDict attrs) {
  Value v(std::move(attrs));
  v.kind_ = Kind::Namespace;
  return v;
}

Value Value::tuple(ValueList items) {
  Value v(std::move(items));
  v.tuple_ = true;
  return v;
}

Value Value::function(std::string name, std::function<Value(CallArgs&)> fn) {
  Value v;
  v.kind_ = Kind::Function;
  v.fn_ = std::make_shared<const Function>(Function{std::move(name), std::move(fn)});
  return v;
}

template <class J>
static Value value_from_json(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value(nullptr);
    case nlohmann::json::value_t::boolean: return Value(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: return Value(static_cast<int64_t>(j.template get<uint64_t>()));
    case nlohmann::json::value_t::number_float: return Value(j.template get<double>());
    case nlohmann::json::value_t::string: return Value(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      ValueList l;
      l.reserve(j.size());
      for (const auto& e : j) l.push_back(value_from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      ValueDict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(it.key(), value_from_json(it.value()));
      return Value(std::move(d));
    }
    default: return Value();
  }
}

Value Value::from_json(const nlohmann::json& j) { return value_from_json(j); }
Value Value::from_json(const nlohmann::ordered_json& j) { return value_from_json(j); }

static const std::string kEmpty;

// Accessing a value as the wrong kind is a bug in the engine, not in the template.
static void check_kind(bool ok, const char* msg) {
  if (!ok) throw std::logic_error(msg);
}

const std::string& Value::str() const {
  check_kind(kind_ == Kind::String, "jinja: not a string");
  return *s_;
}
const ValueList& Value::list() const {
  check_kind(kind_ == Kind::List, "jinja: not a list");
  return *l_;
}
ValueList& Value::mutable_list() {
  check_kind(kind_ == Kind::List, "jinja: not a list");
  return *l_;
}
const ValueDict& Value::dict() const {
  check_kind(kind_ == Kind::Dict || kind_ == Kind::Namespace, "jinja: not a dict");
  return *d_;
}
ValueDict& Value::mutable_dict() {
  check_kind(kind_ == Kind::Dict || kind_ == Kind::Namespace, "jinja: not a dict");
  return *d_;
}
const Function& Value::fn() const {
  check_kind(kind_ == Kind::Function, "jinja: not a function");
  return *fn_;
}
const std::string& Value::undefined_hint() const { return s_ ? *s_ : kEmpty; }

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool:
    case Kind::Int: return i_ != 0;
    case Kind::Float: return f_ != 0.0;
    case Kind::String: return !s_->empty();
    case Kind::List: return !l_->empty();
    case Kind::Dict: return !d_->items.empty();
    default: return true;
  }
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return tuple_ ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Function: return "function";
  }
  return "?";
}

// ---- printing ---------------------------------------------------------------------------------

// Python str.isprintable for the code points a chat string may plausibly hold.
static bool py_printable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c == 0x1680 || c == 0x180E || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB)) return false;
  if ((c >= 0xD800 && c <= 0xDFFF) || (c >= 0xE000 && c <= 0xF8FF)) return false;
  return true;
}

static std::string py_str_repr(const std::string& s) {
  bool has_sq = s.find('\'') != std::string::npos, has_dq = s.find('"') != std::string::npos;
  char q = (has_sq && !has_dq) ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : unicode::utf8_decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!py_printable(c)) {
      char buf[16];
      if (c < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      else if (c < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    } else {
      unicode::utf8_append(out, c);
    }
  }
  out += q;
  return out;
}

std::string Value::to_string() const {
  switch (kind_) {
    case Kind::Undefined: return "";
    case Kind::String: return *s_;
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return i_ ? "True" : "False";
    case Kind::Int: return std::to_string(i_);
    case Kind::Float: return python_float_repr(f_);
    case Kind::String: return py_str_repr(*s_);
    case Kind::List: {
      std::string out = tuple_ ? "(" : "[";
      for (size_t i = 0; i < l_->size(); ++i) {
        if (i) out += ", ";
        out += (*l_)[i].repr();
      }
      if (tuple_) return out + (l_->size() == 1 ? ",)" : ")");
      return out + "]";
    }
    case Kind::Dict:
    case Kind::Namespace: {
      std::string out = kind_ == Kind::Namespace ? "<Namespace {" : "{";
      for (size_t i = 0; i < d_->items.size(); ++i) {
        if (i) out += ", ";
        out += py_str_repr(d_->items[i].first) + ": " + d_->items[i].second.repr();
      }
      return out + (kind_ == Kind::Namespace ? "}>" : "}");
    }
    case Kind::Function: return "<function " + fn_->name + ">";
  }
  return "";
}

static void json_escape(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

namespace {
struct JsonWriter {
  std::string indent;  // empty and !pretty: one line
  bool pretty;
  bool sort_keys;
  std::string item_sep, key_sep;
  std::string out;

  void newline(int level) {
    out += '\n';
    for (int i = 0; i < level; ++i) out += indent;
  }

  void write(const Value& v, int level) {
    switch (v.kind()) {
      case Value::Kind::None: out += "null"; return;
      case Value::Kind::Bool: out += v.as_bool() ? "true" : "false"; return;
      case Value::Kind::Int: out += std::to_string(v.as_int()); return;
      case Value::Kind::Float: {
        double f = v.as_float();
        if (std::isnan(f))
          out += "NaN";
        else if (std::isinf(f))
          out += f > 0 ? "Infinity" : "-Infinity";
        else
          out += python_float_repr(f);
        return;
      }
      case Value::Kind::String: json_escape(out, v.str()); return;
      case Value::Kind::List: {
        const auto& l = v.list();
        if (l.empty()) {
          out += "[]";
          return;
        }
        out += '[';
        for (size_t i = 0; i < l.size(); ++i) {
          if (i) out += item_sep;
          if (pretty) newline(level + 1);
          write(l[i], level + 1);
        }
        if (pretty) newline(level);
        out += ']';
        return;
      }
      case Value::Kind::Dict: {
        std::vector<const std::pair<std::string, Value>*> items;
        for (const auto& kv : v.dict().items) items.push_back(&kv);
        if (sort_keys)
          std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
        if (items.empty()) {
          out += "{}";
          return;
        }
        out += '{';
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += item_sep;
          if (pretty) newline(level + 1);
          json_escape(out, items[i]->first);
          out += key_sep;
          write(items[i]->second, level + 1);
        }
        if (pretty) newline(level);
        out += '}';
        return;
      }
      default: user_error("Object of type ", v.type_name(), " is not JSON serializable");
    }
  }
};
}  // namespace

std::string Value::to_json(int indent, const std::string& indent_str, bool sort_keys, const std::string* item_sep,
                           const std::string* key_sep) const {
  JsonWriter w;
  w.pretty = indent >= 0 || !indent_str.empty();
  w.indent = !indent_str.empty() ? indent_str : std::string(std::max(indent, 0), ' ');
  w.sort_keys = sort_keys;
  w.item_sep = item_sep ? *item_sep : (w.pretty ? "," : ", ");
  w.key_sep = key_sep ? *key_sep : ": ";
  w.write(*this, 0);
  return std::move(w.out);
}

// ---- equality ---------------------------------------------------------------------------------

bool Value::equals(const Value& o) const {
  if (is_number() && o.is_number()) {
    if (kind_ != Kind::Float && o.kind_ != Kind::Float) return i_ == o.i_;
    return as_float() == o.as_float();
  }
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return *s_ == *o.s_;
    case Kind::List: {
      if (tuple_ != o.tuple_ || l_->size() != o.l_->size()) return false;
      for (size_t i = 0; i < l_->size(); ++i)
        if (!(*l_)[i].equals((*o.l_)[i])) return false;
      return true;
    }
    case Kind::Dict: {
      if (d_->items.size() != o.d_->items.size()) return false;
      for (const auto& [k, v] : d_->items) {
        const Value* ov = o.d_->find(k);
        if (!ov || !v.equals(*ov)) return false;
      }
      return true;
    }
    case Kind::Namespace: return d_ == o.d_;
    case Kind::Function: return fn_ == o.fn_;
    default: return false;
  }
}

}  // namespace qlora::jinja
