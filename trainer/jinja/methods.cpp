// Methods of str, dict and list values, and attribute and item access.
#include "trainer/jinja/methods.h"

#include <algorithm>
#include <unordered_set>

#include "trainer/common/ascii.h"
#include "trainer/common/numbers.h"
#include "trainer/jinja/operations.h"
#include "trainer/jinja/strings.h"
#include "trainer/unicode/case_map.h"
#include "trainer/unicode/char_class.h"
#include "trainer/unicode/utf8.h"

namespace qlora::jinja {

namespace {

Value string_method(const std::string& name, const Value& self, CallArgs& a) {
  const std::string& s = self.str();
  auto chars_arg = [&](const Bound& b) -> const std::string* {
    if (!b.has(0) || b[0].is_none()) return nullptr;
    return &need_string(b[0], name + " argument");
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Bound b = bind(a, {"chars"}, name);
    return Value(str_strip(s, chars_arg(b), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Bound b = bind(a, {"sep", "maxsplit"}, name);
    int64_t maxsplit = b.has(1) ? b[1].as_int() : -1;
    return Value(py_split(s, b.has(0) ? b[0] : Value(nullptr), maxsplit, name == "rsplit"));
  }
  if (name == "startswith" || name == "endswith") {
    Bound b = bind(a, {"prefix"}, name);
    if (!b.has(0)) value_error(name, "() takes at least 1 argument (0 given)");
    return Value(affix_match(s, b[0], name == "startswith"));
  }
  if (name == "upper") return Value(unicode::to_upper(s));
  if (name == "lower") return Value(unicode::to_lower(s));
  if (name == "title") return Value(unicode::to_title(s));
  if (name == "capitalize") return Value(unicode::capitalize(s));
  if (name == "replace") {
    Bound b = bind(a, {"old", "new", "count"}, name);
    return Value(py_replace(s, need_string(b[0], "replace() argument 1"), need_string(b[1], "replace() argument 2"),
                            b.has(2) ? b[2].as_int() : -1));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    Bound b = bind(a, {"sub"}, name);
    const std::string& sub = need_string(b[0], name + "() argument");
    if (name == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(unicode::utf8_count(s) + 1));
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value(n);
    }
    size_t p = (name == "find" || name == "index") ? s.find(sub) : s.rfind(sub);
    if (p == std::string::npos) {
      if (name == "index" || name == "rindex") value_error("substring not found");
      return Value(static_cast<int64_t>(-1));
    }
    return Value(static_cast<int64_t>(unicode::utf8_count(std::string_view(s).substr(0, p))));
  }
  if (name == "join") {
    Bound b = bind(a, {"iterable"}, name);
    std::string out;
    bool first = true;
    for (const auto& v : iterate(b[0])) {
      if (!first) out += s;
      first = false;
      out += need_string(v, "sequence item");
    }
    return Value(std::move(out));
  }
  if (name == "splitlines") {
    bind(a, {}, name);
    ValueList out;
    size_t start = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        out.emplace_back(s.substr(start, i - start));
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        start = i + 1;
      }
    }
    if (start < s.size()) out.emplace_back(s.substr(start));
    return Value(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum" || name == "isupper" ||
      name == "islower") {
    bind(a, {}, name);
    std::u32string u = unicode::utf8_decode(s);
    if (u.empty()) return Value(false);
    if (name == "isupper") return Value(py_isupper(s));
    if (name == "islower") return Value(py_islower(s));
    for (char32_t c : u) {
      bool ok = name == "isdigit"   ? unicode::py_isdigit(c)
                : name == "isalpha" ? unicode::py_isalpha(c)
                : name == "isspace" ? unicode::py_isspace(c)
                                    : unicode::py_isalnum(c);
      if (!ok) return Value(false);
    }
    return Value(true);
  }
  value_error("unsupported string method '", name, "'");
}

bool is_string_method(const std::string& n) {
  static const std::unordered_set<std::string> s = {
      "strip",      "lstrip",     "rstrip",  "split",   "rsplit",  "startswith", "endswith", "upper", "lower",
      "title",      "capitalize", "replace", "find",    "rfind",   "index",      "rindex",   "count", "join",
      "splitlines", "isdigit",    "isalpha", "isspace", "isalnum", "isupper",    "islower"};
  return s.count(n) > 0;
}

bool is_unsupported_method(const Value& obj, const std::string& n) {
  if (obj.is_string()) {
    static const std::unordered_set<std::string> s = {
        "format",     "format_map", "encode",    "center",   "ljust",    "rjust",        "zfill",       "partition",
        "rpartition", "expandtabs", "translate", "casefold", "swapcase", "removeprefix", "removesuffix"};
    return s.count(n) > 0;
  }
  if (obj.is_list()) {
    static const std::unordered_set<std::string> s = {"append", "extend",  "insert", "pop", "remove",
                                                      "sort",   "reverse", "clear",  "copy"};
    return s.count(n) > 0;
  }
  if (obj.is_dict()) {
    static const std::unordered_set<std::string> s = {"pop", "popitem", "setdefault", "update", "clear", "fromkeys"};
    return s.count(n) > 0;
  }
  return false;
}

}  // namespace

std::string type_object(const Value& v) { return v.type_name() + " object"; }

Value dict_items(const Value& d) {
  ValueList out;
  for (const auto& [k, v] : d.dict().items) out.push_back(Value::tuple({Value(k), v}));
  return Value(std::move(out));
}

Value bound_method(const Value& obj, const std::string& name) {
  if (obj.is_string() && is_string_method(name))
    return Value::function("str." + name, [obj, name](CallArgs& a) { return string_method(name, obj, a); });
  if (obj.is_dict()) {
    if (name == "items")
      return Value::function("dict.items", [obj](CallArgs& a) {
        bind(a, {}, "items");
        return dict_items(obj);
      });
    if (name == "keys" || name == "values")
      return Value::function("dict." + name, [obj, name](CallArgs& a) {
        bind(a, {}, name);
        ValueList out;
        for (const auto& [k, v] : obj.dict().items) out.push_back(name == "keys" ? Value(k) : v);
        return Value(std::move(out));
      });
    if (name == "get")
      return Value::function("dict.get", [obj](CallArgs& a) {
        Bound b = bind(a, {"key", "default"}, "get");
        if (b[0].is_string()) {
          if (const Value* v = obj.dict().find(b[0].str())) return *v;
        }
        return b.has(1) ? b[1] : Value(nullptr);
      });
    if (name == "copy")
      return Value::function("dict.copy", [obj](CallArgs& a) {
        bind(a, {}, "copy");
        return Value(ValueDict(obj.dict()));
      });
  }
  if (obj.is_list() && (name == "index" || name == "count"))
    return Value::function("list." + name, [obj, name](CallArgs& a) {
      Bound b = bind(a, {"value"}, name);
      int64_t n = 0;
      for (size_t i = 0; i < obj.list().size(); ++i) {
        if (obj.list()[i].equals(b[0])) {
          if (name == "index") return Value(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (name == "index") value_error(b[0].repr(), " is not in list");
      return Value(n);
    });
  if (is_unsupported_method(obj, name))
    value_error("unsupported: ", obj.type_name(), ".", name, "() (chat templates cannot modify values or use it)");
  return Value();
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) undefined_error(obj);
  Value m = bound_method(obj, name);
  if (!m.is_undefined()) return m;
  if (obj.is_dict() || obj.is_namespace()) {
    if (const Value* v = obj.dict().find(name)) return *v;
  }
  return Value::undefined("'" + type_object(obj) + "' has no attribute '" + name + "'");
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) undefined_error(obj);
  if ((obj.is_list() || obj.is_string()) && is_integral(key)) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      int64_t n = static_cast<int64_t>(obj.list().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.list()[i];
      return Value::undefined("list object has no element " + std::to_string(key.as_int()));
    }
    std::u32string u = unicode::utf8_decode(obj.str());
    int64_t n = static_cast<int64_t>(u.size());
    if (i < 0) i += n;
    if (i >= 0 && i < n) return Value(unicode::utf8_encode(std::u32string_view(u).substr(i, 1)));
    return Value::undefined("str object has no element " + std::to_string(key.as_int()));
  }
  if ((obj.is_dict() || obj.is_namespace()) && key.is_string()) {
    if (const Value* v = obj.dict().find(key.str())) return *v;
  }
  if (key.is_string()) {
    Value m = bound_method(obj, key.str());
    if (!m.is_undefined()) return m;
    return Value::undefined("'" + type_object(obj) + "' has no attribute '" + key.str() + "'");
  }
  return Value::undefined("'" + type_object(obj) + "' has no element " + key.repr());
}

Value get_path(const Value& obj, const Value& path) {
  if (is_integral(path)) return get_item(obj, path);
  Value cur = obj;
  const std::string& p = need_string(path, "attribute");
  size_t start = 0;
  while (true) {
    size_t dot = p.find('.', start);
    std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ascii_is_digit);
    std::optional<int64_t> index = digits ? parse_c_int(part) : std::nullopt;
    if (digits && !index) throw std::out_of_range("stoll");  // what std::stoll threw (too many digits)
    cur = digits ? get_item(cur, Value(*index)) : get_item(cur, Value(part));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

}  // namespace qlora::jinja
