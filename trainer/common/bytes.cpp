#include "trainer/common/bytes.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "trainer/common/ascii.h"
#include "trainer/common/numbers.h"

namespace qlora {

std::optional<uint64_t> parse_byte_size(std::string_view text) {
  std::string s;
  for (char c : text)
    if (!ascii_is_space(c)) s += ascii_to_lower(c);
  size_t pos = 0;
  while (pos < s.size() && (ascii_is_digit(s[pos]) || s[pos] == '.')) ++pos;
  const std::string num = s.substr(0, pos), unit = s.substr(pos);
  if (num.empty() || num == "." || std::count(num.begin(), num.end(), '.') > 1) return std::nullopt;
  double mult;
  if (unit.empty() || unit == "b")
    mult = 1;
  else if (unit == "k" || unit == "kb")
    mult = 1e3;
  else if (unit == "m" || unit == "mb")
    mult = 1e6;
  else if (unit == "g" || unit == "gb")
    mult = 1e9;
  else if (unit == "t" || unit == "tb")
    mult = 1e12;
  else if (unit == "kib")
    mult = 1024.0;
  else if (unit == "mib")
    mult = 1024.0 * 1024;
  else if (unit == "gib")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "tib")
    mult = 1024.0 * 1024 * 1024 * 1024;
  else
    return std::nullopt;
  const double v = parse_c_double(num).value() * mult;  // digits and one '.': always a number
  if (!std::isfinite(v) || v > 9e18) return std::nullopt;
  return static_cast<uint64_t>(std::floor(v));
}

}  // namespace qlora
