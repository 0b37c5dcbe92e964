// ASCII character classes and case, the same in every locale: what <cctype> answers in the "C"
// locale, without reading the C library's locale (setlocale, LC_CTYPE). Bytes >= 0x80 belong to
// no class and have no case; Unicode classes are in trainer/unicode/char_class.h.
#pragma once

namespace qlora {

constexpr bool ascii_is_digit(char c) { return c >= '0' && c <= '9'; }
constexpr bool ascii_is_lower(char c) { return c >= 'a' && c <= 'z'; }
constexpr bool ascii_is_upper(char c) { return c >= 'A' && c <= 'Z'; }
constexpr bool ascii_is_alpha(char c) { return ascii_is_lower(c) || ascii_is_upper(c); }
constexpr bool ascii_is_alnum(char c) { return ascii_is_digit(c) || ascii_is_alpha(c); }
constexpr bool ascii_is_xdigit(char c) { return ascii_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
// Space, \t, \n, \v, \f, \r (C's isspace).
constexpr bool ascii_is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

constexpr char ascii_to_lower(char c) { return ascii_is_upper(c) ? static_cast<char>(c - 'A' + 'a') : c; }
constexpr char ascii_to_upper(char c) { return ascii_is_lower(c) ? static_cast<char>(c - 'a' + 'A') : c; }

}  // namespace qlora
