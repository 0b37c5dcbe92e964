#include "trainer/jinja/operations.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "trainer/unicode/utf8.h"

namespace qlora::jinja {

[[noreturn]] void undefined_error(const Value& v) {
  value_error(v.undefined_hint().empty() ? std::string("value is undefined") : v.undefined_hint());
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  auto type_err = [&]() -> Value {
    value_error("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'");
  };
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
    if (a.is_list() && b.is_list()) {
      ValueList l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      return Value(std::move(l));
    }
    if (a.is_string() || b.is_string()) {
      if (a.is_string()) value_error("can only concatenate str (not \"", b.type_name(), "\") to str");
      return type_err();
    }
  }
  if (op == "*") {
    const Value* seq = a.is_string() || a.is_list() ? &a : (b.is_string() || b.is_list()) ? &b : nullptr;
    const Value* cnt = seq == &a ? &b : &a;
    if (seq) {
      if (!is_integral(*cnt)) value_error("can't multiply sequence by non-int of type '", cnt->type_name(), "'");
      int64_t n = std::max<int64_t>(0, cnt->as_int());
      if (seq->is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq->str();
        return Value(std::move(out));
      }
      ValueList out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->list().begin(), seq->list().end());
      return Value(std::move(out));
    }
  }
  if (op == "%" && a.is_string()) value_error("unsupported: printf-style string formatting with '%'");
  if (!a.is_number() || !b.is_number()) return type_err();
  bool ints = is_integral(a) && is_integral(b);
  if (ints) {
    int64_t x = a.as_int(), y = b.as_int();
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (op == "/") {
      if (y == 0) value_error("division by zero");
      return Value(static_cast<double>(x) / static_cast<double>(y));
    }
    if (op == "//" || op == "%") {
      if (y == 0) value_error("integer division or modulo by zero");
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return Value(op == "//" ? q : r);
    }
    if (op == "**") {
      if (y >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < y; ++i) r *= x;
        return Value(r);
      }
      return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
    }
  }
  double x = a.as_float(), y = b.as_float();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "/") {
    if (y == 0) value_error("float division by zero");
    return Value(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0) value_error("float divmod()");
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    if (op == "%") return Value(m);
    return Value(std::floor((x - m) / y + 0.5));
  }
  if (op == "**") return Value(std::pow(x, y));
  return type_err();
}

int compare_values(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (is_integral(a) && is_integral(b)) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    double x = a.as_float(), y = b.as_float();
    return x < y ? -1 : x > y;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0;
  }
  if (a.is_list() && b.is_list()) {
    const auto &x = a.list(), &y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (x[i].equals(y[i])) continue;
      return compare_values(x[i], y[i]);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  value_error("'<' not supported between instances of '", a.type_name(), "' and '", b.type_name(), "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (!item.is_string()) value_error("'in <string>' requires string as left operand, not ", item.type_name());
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::List:
      for (const auto& v : container.list())
        if (v.equals(item)) return true;
      return false;
    case Value::Kind::Dict: return item.is_string() && container.dict().find(item.str()) != nullptr;
    default: value_error("argument of type '", container.type_name(), "' is not iterable");
  }
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a.equals(b);
  if (op == "!=") return !a.equals(b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  int c = compare_values(a, b);
  if (op == "<") return c < 0;
  if (op == ">") return c > 0;
  if (op == "<=") return c <= 0;
  return c >= 0;
}

ValueList iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.list();
    case Value::Kind::String: {
      ValueList out;
      std::string s;
      for (char32_t c : unicode::utf8_decode(v.str())) {
        s.clear();
        unicode::utf8_append(s, c);
        out.emplace_back(s);
      }
      return out;
    }
    case Value::Kind::Dict: {
      ValueList out;
      for (const auto& kv : v.dict().items) out.emplace_back(kv.first);
      return out;
    }
    default: value_error("'", v.type_name(), "' object is not iterable");
  }
}

int64_t py_len(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(unicode::utf8_count(v.str()));
    case Value::Kind::List: return static_cast<int64_t>(v.list().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict().items.size());
    default: value_error("object of type '", v.type_name(), "' has no len()");
  }
}

namespace {

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// Python slice indices for a sequence of length n.
std::vector<int64_t> slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step) {
  auto as_opt = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (!is_integral(v)) value_error("slice indices must be integers or None, not ", v.type_name(), " (", what, ")");
    return v.as_int();
  };
  int64_t st = as_opt(step, "step").value_or(1);
  if (st == 0) value_error("slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> x, int64_t dflt) {
    if (!x) return dflt;
    int64_t i = *x;
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t b = clamp(as_opt(start, "start"), st > 0 ? 0 : n - 1);
  int64_t e = clamp(as_opt(stop, "stop"), st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
  return idx;
}

}  // namespace

Value do_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_error(obj);
  if (obj.is_string()) {
    if (is_ascii(obj.str())) {
      std::string out;
      for (int64_t i : slice_indices(static_cast<int64_t>(obj.str().size()), start, stop, step)) out += obj.str()[i];
      return Value(std::move(out));
    }
    std::u32string u = unicode::utf8_decode(obj.str()), out;
    for (int64_t i : slice_indices(static_cast<int64_t>(u.size()), start, stop, step)) out += u[i];
    return Value(unicode::utf8_encode(out));
  }
  if (obj.is_list()) {
    ValueList out;
    for (int64_t i : slice_indices(static_cast<int64_t>(obj.list().size()), start, stop, step))
      out.push_back(obj.list()[i]);
    return obj.is_tuple() ? Value::tuple(std::move(out)) : Value(std::move(out));
  }
  value_error("'", obj.type_name(), "' object is not subscriptable");
}

Bound bind(const CallArgs& a, std::initializer_list<const char*> names, const std::string& fname) {
  Bound b;
  b.v.resize(names.size());
  b.given.assign(names.size(), false);
  if (a.args.size() > names.size())
    value_error(fname, "() takes at most ", names.size(), " arguments (", a.args.size(), " given)");
  for (size_t i = 0; i < a.args.size(); ++i) {
    b.v[i] = a.args[i];
    b.given[i] = true;
  }
  for (const auto& [k, val] : a.kwargs) {
    size_t i = 0;
    for (const char* n : names) {
      if (k == n) break;
      ++i;
    }
    if (i == names.size()) value_error(fname, "() got an unexpected keyword argument '", k, "'");
    b.v[i] = val;
    b.given[i] = true;
  }
  return b;
}

const std::string& need_string(const Value& v, const std::string& what) {
  if (v.is_undefined()) undefined_error(v);
  if (!v.is_string()) value_error(what, " must be a string, not ", v.type_name());
  return v.str();
}

}  // namespace qlora::jinja
