// Attribute and item access on values, with the methods templates may call on them: str
// methods, dict.items/keys/values/get/copy, list.index/count. Methods that would modify a value
// (list.append, dict.update, ...) are a ValueError saying so.
#pragma once
#include <string>

#include "trainer/jinja/value.h"

namespace qlora::jinja {

// dict.items(): a list of (key, value) tuples.
Value dict_items(const Value& d);
// obj.name as a bound method, or Undefined when obj has no such method.
Value bound_method(const Value& obj, const std::string& name);
// obj.name: methods first, then items (jinja2's environment.getattr).
Value get_attr(const Value& obj, const std::string& name);
// obj[key]: items first, then attributes (jinja2's environment.getitem).
Value get_item(const Value& obj, const Value& key);
// "a.b.0" attribute paths of selectattr/map/sort (jinja2's make_attrgetter, items first).
Value get_path(const Value& obj, const Value& path);
// "'<type> object'" for messages.
std::string type_object(const Value& v);

}  // namespace qlora::jinja
