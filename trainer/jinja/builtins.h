// The builtin filters, tests and global functions (range, namespace, dict, raise_exception,
// strftime_now) of the template engine, with the behaviour of jinja2 and transformers.
#pragma once
#include <ctime>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "trainer/jinja/value.h"

namespace qlora::jinja {

// The filter and test names the parser accepts; any other is an unsupported construct.
const std::unordered_set<std::string>& known_filters();
const std::unordered_set<std::string>& known_tests();

// `v | name(args)` and `v is name(args)`. Failures are ValueError (trainer/jinja/operations.h).
Value apply_filter(const std::string& name, const Value& v, CallArgs& a);
bool apply_test(const std::string& name, const Value& v, CallArgs& a);

// strftime_now(format)'s text for the local time `tm` and its microseconds: what transformers'
// datetime.now().strftime(format) writes under the "C" locale (English names), whatever locale
// the process is in. %f is the microseconds, %z and %Z are empty (a naive datetime), unknown
// conversions stay as written; glibc's flags (- _ 0 ^ #), widths and E/O modifiers apply.
std::string format_datetime(const std::string& fmt, const std::tm& tm, int microsecond);

// Adds the global functions to a template's outermost scope.
void add_globals(std::unordered_map<std::string, Value>& vars);

}  // namespace qlora::jinja
