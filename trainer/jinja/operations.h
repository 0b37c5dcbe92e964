// Python operations on values the renderer and the builtins share: arithmetic, comparison,
// membership, iteration, len() and slicing, and binding call arguments to parameter names.
// Each failure is a ValueError, which the renderer turns into a UserError with the line.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/common/error.h"
#include "trainer/jinja/value.h"

namespace qlora::jinja {

// A value operation failed; the renderer adds the template line and turns it into a UserError.
struct ValueError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void value_error(A&&... a) {
  throw ValueError(detail::concat(std::forward<A>(a)...));
}

// Using an Undefined: its hint ("'x' is undefined") as a ValueError.
[[noreturn]] void undefined_error(const Value& v);

// int or bool (Python's bool is an int).
inline bool is_integral(const Value& v) { return v.is_int() || v.is_bool(); }

// a <op> b for + - * / // % ** with Python's numeric tower and str/list + and *.
Value arith(const std::string& op, const Value& a, const Value& b);
// Python <, for sorting and comparisons. Returns -1, 0, 1.
int compare_values(const Value& a, const Value& b);
// Python `item in container`.
bool contains(const Value& container, const Value& item);
// One comparison of a chain: ==, !=, <, >, <=, >=, in, notin.
bool compare_op(const std::string& op, const Value& a, const Value& b);
// Items of an iterable: list items, string characters, dict keys; Undefined iterates as empty.
ValueList iterate(const Value& v);
// Python len() (code points for strings); Undefined has length 0.
int64_t py_len(const Value& v);
// obj[start:stop:step] of a string, list or tuple; None or Undefined parts are omitted ones.
Value do_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// Positional and keyword arguments bound to parameter names (like a Python signature).
struct Bound {
  std::vector<Value> v;
  std::vector<bool> given;
  const Value& operator[](size_t i) const { return v[i]; }
  bool has(size_t i) const { return given[i]; }
};
Bound bind(const CallArgs& a, std::initializer_list<const char*> names, const std::string& fname);

// v's string; a ValueError naming `what` when v is not one.
const std::string& need_string(const Value& v, const std::string& what);

}  // namespace qlora::jinja
