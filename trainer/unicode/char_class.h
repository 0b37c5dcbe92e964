// Character classes of code points, each with the meaning of the language whose behaviour the
// caller reproduces (the tokenizers follow Rust, the template engine follows Python). Non-ASCII
// code points are answered from ICU's Unicode properties, never from the C library's locale.
// ASCII-only classes of a byte are in trainer/common/ascii.h.
#pragma once

namespace qlora::unicode {

// Rust char::is_whitespace: the White_Space property. Also what Rust's regex `\s` matches.
bool is_whitespace(char32_t c);
// Rust regex `\w`: Alphabetic, marks, decimal numbers, connector punctuation, Join_Control.
bool is_word_char(char32_t c);
// Rust char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(char32_t c);

// Python str.isspace() and Python re's `\s`: bidirectional class WS, B or S, or category Zs
// (White_Space plus U+001C..U+001F).
bool py_isspace(char32_t c);
// Python str.isalpha(): general category L (letters).
bool py_isalpha(char32_t c);
// Python str.isdigit(): Numeric_Type Decimal or Digit.
bool py_isdigit(char32_t c);
// Python str.isalnum(): a letter or any Numeric_Type (isalpha, isdecimal, isdigit, isnumeric).
bool py_isalnum(char32_t c);
// The case properties Python's str.islower/isupper/istitle/title read: Lowercase, Uppercase,
// general category Lt, and Cased.
bool is_lowercase(char32_t c);
bool is_uppercase(char32_t c);
bool is_titlecase(char32_t c);
bool is_cased(char32_t c);

}  // namespace qlora::unicode
