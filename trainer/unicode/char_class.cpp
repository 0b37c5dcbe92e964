#include "trainer/unicode/char_class.h"

#include <unicode/uchar.h>

#include "trainer/common/ascii.h"

namespace qlora::unicode {

bool is_whitespace(char32_t c) {
  if (c < 0x80) return ascii_is_space(char(c));
  return u_hasBinaryProperty(UChar32(c), UCHAR_WHITE_SPACE);
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return ascii_is_alnum(char(c)) || c == '_';
  if (u_hasBinaryProperty(UChar32(c), UCHAR_ALPHABETIC) || u_hasBinaryProperty(UChar32(c), UCHAR_JOIN_CONTROL))
    return true;
  switch (u_charType(UChar32(c))) {
    case U_NON_SPACING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION: return true;
    default: return false;
  }
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return ascii_is_digit(char(c));
  switch (u_charType(UChar32(c))) {
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER: return true;
    default: return false;
  }
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool py_isalpha(char32_t c) {
  if (c < 0x80) return ascii_is_alpha(char(c));
  return u_isalpha(UChar32(c));
}

static int numeric_type(char32_t c) { return u_getIntPropertyValue(UChar32(c), UCHAR_NUMERIC_TYPE); }

bool py_isdigit(char32_t c) {
  if (c < 0x80) return ascii_is_digit(char(c));
  int t = numeric_type(c);
  return t == U_NT_DECIMAL || t == U_NT_DIGIT;
}

bool py_isalnum(char32_t c) {
  if (c < 0x80) return ascii_is_alnum(char(c));
  return u_isalpha(UChar32(c)) || numeric_type(c) != U_NT_NONE;
}

bool is_lowercase(char32_t c) {
  if (c < 0x80) return ascii_is_lower(char(c));
  return u_hasBinaryProperty(UChar32(c), UCHAR_LOWERCASE);
}

bool is_uppercase(char32_t c) {
  if (c < 0x80) return ascii_is_upper(char(c));
  return u_hasBinaryProperty(UChar32(c), UCHAR_UPPERCASE);
}

bool is_titlecase(char32_t c) { return c >= 0x80 && u_charType(UChar32(c)) == U_TITLECASE_LETTER; }

bool is_cased(char32_t c) {
  if (c < 0x80) return ascii_is_alpha(char(c));
  return u_hasBinaryProperty(UChar32(c), UCHAR_CASED);
}

}  // namespace qlora::unicode
