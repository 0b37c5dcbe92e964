// Numbers read from text as the C library reads them in the "C" locale, whatever locale the
// process is in: strtod and strtoll read LC_NUMERIC and LC_CTYPE, these never do (std::from_chars
// underneath).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qlora {

// What strtoll(s, &end, 10) reads: leading ASCII whitespace, an optional '+' or '-', one or more
// decimal digits. nullopt when there are no digits or the value is out of int64 range (ERANGE).
// Without `used` the whole of s must be the number; with it, text may follow and *used is the
// count of characters read (end - s).
std::optional<int64_t> parse_c_int(std::string_view s, size_t* used = nullptr);

// What strtod(s, &end) reads, when it reads the whole of s: leading ASCII whitespace, an optional
// '+' or '-', then a decimal ("1", "1.", ".5", "1.5e-3"), a hexadecimal ("0x1A", "0x1.8p3"),
// "inf", "infinity", "nan" or "nan(chars)" in any case. Out of range, the value strtod returns:
// +-inf on overflow, +-0 on underflow. nullopt for anything else.
std::optional<double> parse_c_double(std::string_view s);

// Python's repr() of a float (also what json.dumps writes for a finite one): the shortest digits
// that read back to the same double, fixed notation for exponents -4..15 ("0.0001", "16.5", "2.0"),
// else d.ddde+XX ("1e-05", "1.5e+16"); "nan", "inf", "-inf"; "-0.0".
std::string python_float_repr(double v);

}  // namespace qlora
