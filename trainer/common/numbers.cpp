#include "trainer/common/numbers.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "trainer/common/ascii.h"

namespace qlora {

namespace {

size_t skip_space(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && ascii_is_space(s[i])) ++i;
  return i;
}

// For a number std::from_chars found out of range (mantissa with at least one non-zero digit,
// then 'e' or 'p' and the exponent): whether its magnitude is below 1 (underflow) rather than
// above (overflow). `digit_scale` is 1 for decimal digits and 4 for hexadecimal ones, whose
// exponent is binary; only the sign of the estimate matters, and out of range it is far from 0.
bool underflows(std::string_view num, char exp_char, long long digit_scale) {
  const size_t e = num.find_first_of(exp_char == 'e' ? "eE" : "pP");
  const std::string_view mant = num.substr(0, e);
  long long exp = 0;
  if (e != std::string_view::npos) {
    std::string_view t = num.substr(e + 1);
    if (!t.empty() && t[0] == '+') t.remove_prefix(1);
    if (std::from_chars(t.data(), t.data() + t.size(), exp).ec != std::errc())
      exp = t.starts_with("-") ? LLONG_MIN / 2 : LLONG_MAX / 2;
  }
  const size_t point = std::min(mant.find('.'), mant.size());
  const size_t first = mant.find_first_not_of("0.");
  // Position of the leading digit relative to the units place (0 for "1.5", -1 for "0.15").
  const long long lead =
      first < point ? static_cast<long long>(point - first) - 1 : -static_cast<long long>(first - point);
  return exp + lead * digit_scale < 0;
}

}  // namespace

std::optional<int64_t> parse_c_int(std::string_view s, size_t* used) {
  size_t i = skip_space(s), start = i;
  if (i < s.size() && s[i] == '+')
    start = ++i;
  else if (i < s.size() && s[i] == '-')
    ++i;
  if (i >= s.size() || !ascii_is_digit(s[i])) return std::nullopt;
  int64_t v = 0;
  const auto r = std::from_chars(s.data() + start, s.data() + s.size(), v);
  if (r.ec != std::errc()) return std::nullopt;
  const size_t end = static_cast<size_t>(r.ptr - s.data());
  if (used)
    *used = end;
  else if (end != s.size())
    return std::nullopt;
  return v;
}

std::optional<double> parse_c_double(std::string_view s) {
  size_t i = skip_space(s);
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  std::string_view num = s.substr(i);
  // from_chars takes a '-' of its own, and after "0x" a '-', "inf" or "nan" too: strtod does not
  const bool hex =
      num.size() > 2 && num[0] == '0' && (num[1] == 'x' || num[1] == 'X') && (ascii_is_xdigit(num[2]) || num[2] == '.');
  if (num.empty() || num[0] == '-') return std::nullopt;
  if (hex) num.remove_prefix(2);
  double v = 0;
  const auto r = std::from_chars(num.data(), num.data() + num.size(), v,
                                 hex ? std::chars_format::hex : std::chars_format::general);
  if (r.ec == std::errc::invalid_argument || r.ptr != num.data() + num.size()) return std::nullopt;
  if (r.ec == std::errc::result_out_of_range) v = underflows(num, hex ? 'p' : 'e', hex ? 4 : 1) ? 0.0 : HUGE_VAL;
  return neg ? -v : v;
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: fixed for 1e-4 <= |v| < 1e16.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // "-d.ddde+XX"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  std::string digits = sci.substr(0, epos);
  int exp = static_cast<int>(parse_c_int(std::string_view(sci).substr(epos + 1)).value());
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int decpt = exp + 1;  // position of the decimal point after the first digit
  std::string out = neg ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(-decpt, '0') + digits;
    } else if (decpt >= static_cast<int>(digits.size())) {
      out += digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += e;
  }
  return out;
}

}  // namespace qlora
