// Python str operations on UTF-8 text (per code point, as Python does them) that the lexer,
// the str methods and the filters share. Case mapping and character classes are in
// trainer/unicode.
#pragma once
#include <cstdint>
#include <string>

#include "trainer/jinja/value.h"

namespace qlora::jinja {

// str.strip/lstrip/rstrip: `chars` null strips whitespace (str.isspace).
std::string str_strip(const std::string& s, const std::string* chars, bool left, bool right);
// str.rstrip() of a template text run (jinja's "-" whitespace control).
inline std::string rstrip_ws(const std::string& s) { return str_strip(s, nullptr, false, true); }
// str.split/rsplit: sep None or Undefined splits on whitespace runs; maxsplit < 0 is no limit.
ValueList py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right);
// str.replace; count < 0 replaces all.
std::string py_replace(const std::string& s, const std::string& old, const std::string& neu, int64_t count);
// str.startswith/endswith with a string or a tuple of strings.
bool affix_match(const std::string& s, const Value& affix, bool prefix);
// str.islower/isupper: no code point of the other case or titlecase, at least one of this case.
bool py_islower(const std::string& s);
bool py_isupper(const std::string& s);

}  // namespace qlora::jinja
