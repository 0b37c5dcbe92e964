// Jinja values with Python semantics, because that is what chat templates were written against:
// `{{ x }}` prints str(x) (None, True, 1.0, ['a', 1]), == compares 1 and 1.0 and True equal,
// strings index and slice by code point, a missing dict key or attribute is an Undefined that
// prints nothing and is only an error when used further.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlora::jinja {

class Value;
using ValueList = std::vector<Value>;

// An insertion-ordered dict with string keys (Python dicts keep insertion order; chat data and
// template literals only use string keys).
struct ValueDict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(std::string key, Value value);  // replaces in place or appends
};

// Arguments of a call: positional then keyword, as written.
struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
};

struct Function {
  std::string name;
  std::function<Value(CallArgs&)> call;
};

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };

  Value() = default;  // Undefined
  Value(std::nullptr_t) : kind_(Kind::None) {}
  Value(bool b) : kind_(Kind::Bool), i_(b) {}
  Value(int v) : kind_(Kind::Int), i_(v) {}
  Value(int64_t v) : kind_(Kind::Int), i_(v) {}
  Value(double v) : kind_(Kind::Float), f_(v) {}
  Value(std::string s);
  Value(std::string_view s) : Value(std::string(s)) {}
  Value(const char* s) : Value(std::string(s)) {}
  Value(ValueList list);
  Value(ValueDict dict);

  // An Undefined that remembers why it is undefined ("'x' is undefined"), for error messages.
  static Value undefined(std::string hint);
  static Value make_namespace(ValueDict attrs = {});
  // A Python tuple: a List that prints as (a, b) and never equals a list.
  static Value tuple(ValueList items);
  static Value function(std::string name, std::function<Value(CallArgs&)> fn);
  // JSON → Value (objects keep their key order only if the json type does; nlohmann::json sorts).
  static Value from_json(const nlohmann::json& j);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::List && tuple_; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_function() const { return kind_ == Kind::Function; }

  bool as_bool() const { return i_ != 0; }
  int64_t as_int() const { return kind_ == Kind::Float ? static_cast<int64_t>(f_) : i_; }  // bool → 0/1
  double as_float() const { return kind_ == Kind::Float ? f_ : static_cast<double>(i_); }
  const std::string& str() const;  // String only
  const ValueList& list() const;   // List only
  ValueList& mutable_list();       // List only (for builders)
  const ValueDict& dict() const;   // Dict or Namespace
  ValueDict& mutable_dict();       // Dict or Namespace (namespaces are shared by reference)
  const Function& fn() const;      // Function only
  const std::string& undefined_hint() const;

  // Python truthiness (Undefined is false).
  bool truthy() const;
  // Python str(): what {{ x }} prints. Undefined prints "".
  std::string to_string() const;
  // Python repr(), used inside containers.
  std::string repr() const;
  // json.dumps(x, ensure_ascii=False, indent=indent, separators=..., sort_keys=...): the
  // transformers tojson filter. indent < 0 means None; indent_str overrides when non-empty.
  // UserError (no line) for values JSON cannot hold.
  std::string to_json(int indent = -1, const std::string& indent_str = "", bool sort_keys = false,
                      const std::string* item_sep = nullptr, const std::string* key_sep = nullptr) const;
  // Python type name for messages ("str", "int", "list", "dict", "NoneType", ...).
  std::string type_name() const;

  // Python ==.
  bool equals(const Value& other) const;

 private:
  Kind kind_ = Kind::Undefined;
  bool tuple_ = false;
  int64_t i_ = 0;
  double f_ = 0.0;
  std::shared_ptr<const std::string> s_;  // String, or the Undefined hint
  std::shared_ptr<ValueList> l_;
  std::shared_ptr<ValueDict> d_;
  std::shared_ptr<const Function> fn_;
};

}  // namespace qlora::jinja
