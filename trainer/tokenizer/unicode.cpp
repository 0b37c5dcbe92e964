#include "trainer/tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/edits.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <stdexcept>

namespace qlora::tok {

namespace {

// Second-byte bounds of a well-formed sequence for each lead byte (Unicode Table 3-7);
// {0, 0} marks a byte that can never start a sequence.
struct LeadInfo {
  int len;
  unsigned char lo, hi;
};
LeadInfo lead_info(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Length of the well-formed sequence at s[i], or 0 when ill-formed; `bad` gets the length of
// the maximal subpart to replace by one U+FFFD.
int well_formed_at(std::string_view s, size_t i, size_t& bad) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  LeadInfo li = lead_info(p[i]);
  if (li.len == 1) return 1;
  bad = 1;
  if (li.len == 0) return 0;
  if (i + 1 >= s.size() || p[i + 1] < li.lo || p[i + 1] > li.hi) return 0;
  for (int k = 2; k < li.len; ++k) {
    bad = k;
    if (i + k >= s.size() || (p[i + k] & 0xC0) != 0x80) return 0;
  }
  return li.len;
}

}  // namespace

char32_t utf8_next(std::string_view s, size_t& i) {
  size_t bad = 0;
  int n = well_formed_at(s, i, bad);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (n == 0) {
    i += 1;
    return 0xFFFD;
  }
  i += n;
  switch (n) {
    case 1: return p[0];
    case 2: return (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    case 3: return (char32_t(p[0] & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    default:
      return (char32_t(p[0] & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) | (char32_t(p[2] & 0x3F) << 6) |
             (p[3] & 0x3F);
  }
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

bool utf8_valid(std::string_view s) {
  size_t i = 0, bad = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int n = well_formed_at(s, i, bad);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t bad = 0;
    int n = well_formed_at(s, i, bad);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += bad;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  return out;
}

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet a = [] {
    ByteLevelAlphabet r;
    r.char_to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t c = self ? char32_t(b) : char32_t(0x100 + n++);
      utf8_append(r.byte_to_utf8[b], c);
      r.char_to_byte[c] = int16_t(b);
    }
    return r;
  }();
  return a;
}

void unicode_normalize(std::string& s, NormalForm form) {
  bool ascii = true;
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return;  // ASCII is invariant under all four forms
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormalForm::NFC: n = icu::Normalizer2::getNFCInstance(st); break;
    case NormalForm::NFD: n = icu::Normalizer2::getNFDInstance(st); break;
    case NormalForm::NFKC: n = icu::Normalizer2::getNFKCInstance(st); break;
    case NormalForm::NFKD: n = icu::Normalizer2::getNFKDInstance(st); break;
  }
  if (U_FAILURE(st)) throw std::runtime_error(std::string("ICU normalizer: ") + u_errorName(st));
  icu::StringPiece in(s.data(), int32_t(s.size()));
  if (n->isNormalizedUTF8(in, st) && U_SUCCESS(st)) return;
  st = U_ZERO_ERROR;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  icu::StringByteSink<std::string> sink(&out);
  n->normalizeUTF8(0, in, sink, nullptr, st);
  if (U_FAILURE(st)) throw std::runtime_error(std::string("ICU normalize: ") + u_errorName(st));
  s.swap(out);
}

std::string unicode_lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  icu::StringByteSink<std::string> sink(&out);
  UErrorCode st = U_ZERO_ERROR;
  icu::CaseMap::utf8ToLower("", 0, icu::StringPiece(s.data(), int32_t(s.size())), sink, nullptr, st);
  if (U_FAILURE(st)) throw std::runtime_error(std::string("ICU lowercase: ") + u_errorName(st));
  return out;
}

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(UChar32(c), UCHAR_WHITE_SPACE);
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
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
  if (c < 0x80) return c >= '0' && c <= '9';
  switch (u_charType(UChar32(c))) {
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER: return true;
    default: return false;
  }
}

}  // namespace qlora::tok
