// The builtin filters, tests and global functions of the template engine (jinja2's and
// transformers' ones, Python semantics).
#include "trainer/jinja/builtins.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "trainer/common/error.h"
#include "trainer/common/numbers.h"
#include "trainer/jinja/methods.h"
#include "trainer/jinja/operations.h"
#include "trainer/jinja/strings.h"
#include "trainer/unicode/case_map.h"
#include "trainer/unicode/char_class.h"
#include "trainer/unicode/utf8.h"

namespace qlora::jinja {

const std::unordered_set<std::string>& known_filters() {
  static const std::unordered_set<std::string> s = {
      "abs",        "attr",  "capitalize", "center", "count",      "d",       "default", "dictsort", "e",    "escape",
      "first",      "float", "indent",     "int",    "items",      "join",    "last",    "length",   "list", "lower",
      "map",        "max",   "min",        "reject", "rejectattr", "replace", "reverse", "round",    "safe", "select",
      "selectattr", "sort",  "string",     "sum",    "title",      "tojson",  "trim",    "unique",   "upper"};
  return s;
}

const std::unordered_set<std::string>& known_tests() {
  static const std::unordered_set<std::string> s = {
      "boolean",  "callable", "defined",  "divisibleby", "eq",        "equalto", "==",          "even",
      "false",    "filter",   "float",    "ge",          ">=",        "gt",      "greaterthan", ">",
      "in",       "integer",  "iterable", "le",          "<=",        "lower",   "lt",          "lessthan",
      "<",        "mapping",  "ne",       "!=",          "none",      "number",  "odd",         "sameas",
      "sequence", "string",   "test",     "true",        "undefined", "upper"};
  return s;
}

namespace {

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(unicode::to_lower(v.str()));
  return v;
}

template <class Key>
void sort_values(ValueList& items, Key key, bool reverse) {
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t i = 0; i < items.size(); ++i) keyed.emplace_back(key(items[i]), i);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    int c = compare_values(x.first, y.first);
    return reverse ? c > 0 : c < 0;
  });
  ValueList out;
  for (const auto& k : keyed) out.push_back(items[k.second]);
  items = std::move(out);
}

std::string ascii_escape_json(const std::string& s) {
  std::string out;
  for (char32_t c : unicode::utf8_decode(s)) {
    if (c < 0x80) {
      out += static_cast<char>(c);
      continue;
    }
    char buf[16];
    if (c >= 0x10000) {
      char32_t v = c - 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                    static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
    } else {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
    }
    out += buf;
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// jinja2's title filter: the first code point after each run of "-", whitespace and opening
// brackets uppercased, the rest of the word lowercased (item[0].upper() + item[1:].lower()).
std::string jinja_title(const std::string& s) {
  std::u32string u = unicode::utf8_decode(s);
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || unicode::py_isspace(c);
  };
  std::string out;
  size_t i = 0;
  while (i < u.size()) {
    size_t j = i;
    bool sep = is_sep(u[i]);
    while (j < u.size() && is_sep(u[j]) == sep) ++j;
    std::u32string_view run(u.data() + i, j - i);
    if (sep) {
      out += unicode::utf8_encode(run);
    } else {
      out += unicode::to_upper(unicode::utf8_encode(run.substr(0, 1)));
      out += unicode::to_lower(unicode::utf8_encode(run.substr(1)));
    }
    i = j;
  }
  return out;
}

Value to_number(const std::string& name, const Value& v, CallArgs& a) {
  bool is_int = name == "int";
  Bound b = is_int ? bind(a, {"default", "base"}, name) : bind(a, {"default"}, name);
  Value dflt = b.has(0) ? b[0] : (is_int ? Value(static_cast<int64_t>(0)) : Value(0.0));
  if (is_int && b.has(1) && b[1].as_int() != 10) value_error("unsupported: int filter with base other than 10");
  if (v.is_number()) return is_int ? Value(v.as_int()) : Value(v.as_float());
  if (!v.is_string()) return dflt;
  std::string s = str_strip(v.str(), nullptr, true, true);
  std::string clean;
  for (char c : s)
    if (c != '_') clean += c;
  if (clean.empty()) return dflt;
  if (is_int) {
    if (std::optional<int64_t> x = parse_c_int(clean)) return Value(*x);
  }
  std::optional<double> parsed = parse_c_double(clean);
  if (!parsed) return dflt;
  double d = *parsed;
  return is_int ? Value(static_cast<int64_t>(d)) : Value(d);
}

Value indent(const Value& v, CallArgs& a) {
  Bound b = bind(a, {"width", "first", "blank"}, "indent");
  std::string ind = b.has(0) ? (b[0].is_string() ? b[0].str() : std::string(std::max<int64_t>(0, b[0].as_int()), ' '))
                             : std::string(4, ' ');
  std::string s = v.to_string() + "\n";
  std::vector<std::string> lines;  // str.splitlines on the "\n"-terminated text
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' || s[i] == '\r') {
      lines.push_back(s.substr(start, i - start));
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      start = i + 1;
    }
  }
  std::string rv;
  if (b.has(2) && b[2].truthy()) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind + lines[i]);
  }
  if (b.has(1) && b[1].truthy()) rv = ind + rv;
  return Value(std::move(rv));
}

}  // namespace

void add_globals(std::unordered_map<std::string, Value>& vars) {
  vars["range"] = Value::function("range", [](CallArgs& a) {
    if (!a.kwargs.empty() || a.args.empty() || a.args.size() > 3) value_error("range() takes 1 to 3 arguments");
    for (const auto& v : a.args)
      if (!is_integral(v)) value_error("'", v.type_name(), "' object cannot be interpreted as an integer");
    int64_t start = 0, stop, step = 1;
    if (a.args.size() == 1) {
      stop = a.args[0].as_int();
    } else {
      start = a.args[0].as_int();
      stop = a.args[1].as_int();
      if (a.args.size() == 3) step = a.args[2].as_int();
    }
    if (step == 0) value_error("range() arg 3 must not be zero");
    ValueList out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= 100000) value_error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      out.emplace_back(i);
    }
    return Value(std::move(out));
  });
  vars["namespace"] = Value::function("namespace", [](CallArgs& a) {
    ValueDict d;
    for (const auto& v : a.args) {
      if (!v.is_dict()) value_error("namespace() positional argument must be a dict");
      for (const auto& kv : v.dict().items) d.set(kv.first, kv.second);
    }
    for (const auto& [k, v] : a.kwargs) d.set(k, v);
    return Value::make_namespace(std::move(d));
  });
  vars["dict"] = Value::function("dict", [](CallArgs& a) {
    ValueDict d;
    for (const auto& v : a.args) {
      if (!v.is_dict()) value_error("dict() positional argument must be a dict");
      for (const auto& kv : v.dict().items) d.set(kv.first, kv.second);
    }
    for (const auto& [k, v] : a.kwargs) d.set(k, v);
    return Value(std::move(d));
  });
  vars["raise_exception"] = Value::function("raise_exception", [](CallArgs& a) -> Value {
    value_error(a.args.empty() ? std::string("raise_exception() called") : a.args[0].to_string());
  });
  vars["strftime_now"] = Value::function("strftime_now", [](CallArgs& a) {
    Bound b = bind(a, {"format"}, "strftime_now");
    const std::string& fmt = need_string(b[0], "strftime_now format");
    const auto now = std::chrono::system_clock::now();
    const std::time_t secs = std::chrono::system_clock::to_time_t(now);
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
    std::tm tm{};
    localtime_r(&secs, &tm);  // reads TZ, not the locale
    return Value(format_datetime(fmt, tm, static_cast<int>((micros % 1000000 + 1000000) % 1000000)));
  });
}

bool apply_test(const std::string& name, const Value& v, CallArgs& a) {
  auto arg = [&](const char* what) -> const Value& {
    if (a.args.empty()) value_error("test '", name, "' needs an argument (", what, ")");
    return a.args[0];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict();
  if (name == "callable") return v.is_function();
  if (name == "sameas") {  // Python "is": identity of singletons and small scalars
    const Value& o = arg("other");
    if (v.kind() != o.kind()) return false;
    return (v.is_none() || v.is_bool() || v.is_int() || v.is_undefined()) && v.equals(o);
  }
  if (name == "eq" || name == "equalto" || name == "==") return v.equals(arg("other"));
  if (name == "ne" || name == "!=") return !v.equals(arg("other"));
  if (name == "lt" || name == "lessthan" || name == "<") return compare_values(v, arg("other")) < 0;
  if (name == "le" || name == "<=") return compare_values(v, arg("other")) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare_values(v, arg("other")) > 0;
  if (name == "ge" || name == ">=") return compare_values(v, arg("other")) >= 0;
  if (name == "in") return contains(arg("container"), v);
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (v.is_undefined()) undefined_error(v);
    if (!is_integral(v)) value_error("test '", name, "' needs an integer, got ", v.type_name());
    int64_t x = v.as_int();
    if (name == "odd") return ((x % 2) + 2) % 2 == 1;
    if (name == "even") return x % 2 == 0;
    const Value& d = arg("divisor");
    if (!is_integral(d) || d.as_int() == 0) value_error("divisibleby needs a non-zero integer");
    return x % d.as_int() == 0;
  }
  if (name == "lower") return py_islower(v.to_string());  // str(value).islower()
  if (name == "upper") return py_isupper(v.to_string());
  if (name == "filter") return known_filters().count(need_string(v, "filter name")) > 0;
  if (name == "test") return known_tests().count(need_string(v, "test name")) > 0;
  value_error("unsupported test '", name, "'");
}

Value apply_filter(const std::string& name, const Value& v, CallArgs& a) {
  if (name == "default" || name == "d") {
    Bound b = bind(a, {"default_value", "boolean"}, name);
    bool boolean = b.has(1) && b[1].truthy();
    if (v.is_undefined() || (boolean && !v.truthy())) return b.has(0) ? b[0] : Value("");
    return v;
  }
  if (name == "tojson") {
    Bound b = bind(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, name);
    int indent = -1;
    std::string indent_str;
    if (b.has(1) && !b[1].is_none()) {
      if (b[1].is_string())
        indent_str = b[1].str();
      else if (is_integral(b[1]))
        indent = static_cast<int>(b[1].as_int());
      else
        value_error("tojson indent must be an int or a string");
    }
    std::string item_sep, key_sep;
    bool seps = b.has(2) && !b[2].is_none();
    if (seps) {
      ValueList s = iterate(b[2]);
      if (s.size() != 2) value_error("tojson separators must be a pair of strings");
      item_sep = need_string(s[0], "separator");
      key_sep = need_string(s[1], "separator");
    }
    if (v.is_undefined()) value_error("Object of type Undefined is not JSON serializable");
    std::string out;
    try {
      out = v.to_json(indent, indent_str, b.has(3) && b[3].truthy(), seps ? &item_sep : nullptr,
                      seps ? &key_sep : nullptr);
    } catch (const UserError& e) { value_error(e.what()); }
    if (b.has(0) && b[0].truthy()) out = ascii_escape_json(out);
    return Value(std::move(out));
  }
  if (name == "length" || name == "count") return Value(py_len(v));
  if (name == "trim") {
    Bound b = bind(a, {"chars"}, name);
    const std::string* chars = (b.has(0) && !b[0].is_none()) ? &need_string(b[0], "trim chars") : nullptr;
    return Value(str_strip(v.to_string(), chars, true, true));
  }
  if (name == "upper") return Value(unicode::to_upper(v.to_string()));
  if (name == "lower") return Value(unicode::to_lower(v.to_string()));
  if (name == "capitalize") return Value(unicode::capitalize(v.to_string()));
  if (name == "title") return Value(jinja_title(v.to_string()));
  if (name == "string") return Value(v.to_string());
  if (name == "safe") return v;
  if (name == "e" || name == "escape") return Value(html_escape(v.to_string()));
  if (name == "first") {
    ValueList items = iterate(v);
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  if (name == "last") {
    ValueList items = iterate(v);
    return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
  }
  if (name == "list") return Value(iterate(v));
  if (name == "join") {
    Bound b = bind(a, {"d", "attribute"}, name);
    std::string sep = b.has(0) ? b[0].to_string() : "";
    std::string out;
    bool first = true;
    for (const auto& it : iterate(v)) {
      if (!first) out += sep;
      first = false;
      out += (b.has(1) && !b[1].is_none() ? get_path(it, b[1]) : it).to_string();
    }
    return Value(std::move(out));
  }
  if (name == "replace") {
    Bound b = bind(a, {"old", "new", "count"}, name);
    int64_t count = b.has(2) && !b[2].is_none() ? b[2].as_int() : -1;
    return Value(py_replace(v.to_string(), b[0].to_string(), b[1].to_string(), count));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value(ValueList{});
    if (!v.is_dict()) value_error("Can only get item pairs from a mapping.");
    return dict_items(v);
  }
  if (name == "int" || name == "float") return to_number(name, v, a);
  if (name == "abs") {
    if (!v.is_number()) value_error("bad operand type for abs(): '", v.type_name(), "'");
    return is_integral(v) ? Value(std::abs(v.as_int())) : Value(std::fabs(v.as_float()));
  }
  if (name == "round") {
    Bound b = bind(a, {"precision", "method"}, name);
    if (!v.is_number()) value_error("round needs a number");
    int64_t p = b.has(0) ? b[0].as_int() : 0;
    std::string method = b.has(1) ? b[1].to_string() : "common";
    double scale = std::pow(10.0, static_cast<double>(p)), x = v.as_float() * scale;
    double r;
    if (method == "ceil")
      r = std::ceil(x);
    else if (method == "floor")
      r = std::floor(x);
    else if (method == "common")
      r = std::nearbyint(x);  // Python round(): half to even
    else
      value_error("method must be common, ceil or floor");
    return Value(r / scale);
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string u = unicode::utf8_decode(v.str());
      std::reverse(u.begin(), u.end());
      return Value(unicode::utf8_encode(u));
    }
    ValueList items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "center") {
    Bound b = bind(a, {"width"}, name);
    std::u32string u = unicode::utf8_decode(v.to_string());
    int64_t width = b.has(0) ? b[0].as_int() : 80;
    if (static_cast<int64_t>(u.size()) >= width) return Value(v.to_string());
    int64_t marg = width - static_cast<int64_t>(u.size());
    int64_t left = marg / 2 + (marg & width & 1);
    return Value(std::string(left, ' ') + v.to_string() + std::string(marg - left, ' '));
  }
  if (name == "indent") return indent(v, a);
  if (name == "attr") {
    Bound b = bind(a, {"name"}, name);
    const std::string& n = need_string(b[0], "attribute name");
    if (v.is_undefined()) undefined_error(v);
    Value m = bound_method(v, n);
    if (!m.is_undefined()) return m;
    if (v.is_namespace()) {
      if (const Value* x = v.dict().find(n)) return *x;
    }
    return Value::undefined("'" + type_object(v) + "' has no attribute '" + n + "'");
  }
  if (name == "dictsort") {
    Bound b = bind(a, {"case_sensitive", "by", "reverse"}, name);
    if (!v.is_dict()) value_error("You can only sort by either \"key\" or \"value\"");
    bool cs = b.has(0) && b[0].truthy();
    std::string by = b.has(1) ? b[1].to_string() : "key";
    if (by != "key" && by != "value") value_error("You can only sort by either \"key\" or \"value\"");
    ValueList items = dict_items(v).list();
    sort_values(
        items, [&](const Value& x) { return sort_key(x.list()[by == "key" ? 0 : 1], cs); }, b.has(2) && b[2].truthy());
    return Value(std::move(items));
  }
  if (name == "sort") {
    Bound b = bind(a, {"reverse", "case_sensitive", "attribute"}, name);
    ValueList items = iterate(v);
    bool cs = b.has(1) && b[1].truthy();
    bool has_attr = b.has(2) && !b[2].is_none();
    sort_values(
        items, [&](const Value& x) { return sort_key(has_attr ? get_path(x, b[2]) : x, cs); },
        b.has(0) && b[0].truthy());
    return Value(std::move(items));
  }
  if (name == "unique") {
    Bound b = bind(a, {"case_sensitive", "attribute"}, name);
    bool cs = b.has(0) && b[0].truthy();
    bool has_attr = b.has(1) && !b[1].is_none();
    ValueList out, seen;
    for (const auto& x : iterate(v)) {
      Value key = sort_key(has_attr ? get_path(x, b[1]) : x, cs);
      bool dup = false;
      for (const auto& s : seen) dup = dup || s.equals(key);
      if (!dup) {
        seen.push_back(key);
        out.push_back(x);
      }
    }
    return Value(std::move(out));
  }
  if (name == "min" || name == "max") {
    Bound b = bind(a, {"case_sensitive", "attribute"}, name);
    bool cs = b.has(0) && b[0].truthy();
    bool has_attr = b.has(1) && !b[1].is_none();
    ValueList items = iterate(v);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    size_t best = 0;
    for (size_t i = 1; i < items.size(); ++i) {
      Value ki = sort_key(has_attr ? get_path(items[i], b[1]) : items[i], cs);
      Value kb = sort_key(has_attr ? get_path(items[best], b[1]) : items[best], cs);
      int c = compare_values(ki, kb);
      if (name == "min" ? c < 0 : c > 0) best = i;
    }
    return items[best];
  }
  if (name == "sum") {
    Bound b = bind(a, {"attribute", "start"}, name);
    Value total = b.has(1) ? b[1] : Value(static_cast<int64_t>(0));
    for (const auto& x : iterate(v)) total = arith("+", total, b.has(0) && !b[0].is_none() ? get_path(x, b[0]) : x);
    return total;
  }
  if (name == "select" || name == "reject") {
    if (a.args.empty()) {
      ValueList out;
      for (const auto& x : iterate(v))
        if (x.truthy() == (name == "select")) out.push_back(x);
      return Value(std::move(out));
    }
    std::string test = need_string(a.args[0], "test name");
    if (!known_tests().count(test)) value_error("unsupported test '", test, "'");
    CallArgs targs;
    targs.args.assign(a.args.begin() + 1, a.args.end());
    ValueList out;
    for (const auto& x : iterate(v))
      if (apply_test(test, x, targs) == (name == "select")) out.push_back(x);
    return Value(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr") {
    if (a.args.empty()) value_error(name, " needs an attribute name");
    const Value attr = a.args[0];
    ValueList out;
    for (const auto& x : iterate(v)) {
      Value val = get_path(x, attr);
      bool ok;
      if (a.args.size() == 1) {
        ok = val.truthy();
      } else {
        std::string test = need_string(a.args[1], "test name");
        if (!known_tests().count(test)) value_error("unsupported test '", test, "'");
        CallArgs targs;
        targs.args.assign(a.args.begin() + 2, a.args.end());
        ok = apply_test(test, val, targs);
      }
      if (ok == (name == "selectattr")) out.push_back(x);
    }
    return Value(std::move(out));
  }
  if (name == "map") {
    ValueList out;
    const Value* attribute = nullptr;
    const Value* dflt = nullptr;
    for (const auto& [k, val] : a.kwargs) {
      if (k == "attribute")
        attribute = &val;
      else if (k == "default")
        dflt = &val;
    }
    if (attribute) {
      for (const auto& x : iterate(v)) {
        Value r = get_path(x, *attribute);
        out.push_back(r.is_undefined() && dflt ? *dflt : r);
      }
      return Value(std::move(out));
    }
    if (a.args.empty()) value_error("map requires a filter argument");
    std::string filt = need_string(a.args[0], "filter name");
    if (!known_filters().count(filt)) value_error("unsupported filter '", filt, "'");
    CallArgs fargs;
    fargs.args.assign(a.args.begin() + 1, a.args.end());
    fargs.kwargs = a.kwargs;
    for (const auto& x : iterate(v)) {
      CallArgs copy = fargs;
      out.push_back(apply_filter(filt, x, copy));
    }
    return Value(std::move(out));
  }
  value_error("unsupported filter '", name, "'");
}

}  // namespace qlora::jinja
