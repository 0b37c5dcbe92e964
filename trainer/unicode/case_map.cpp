#include "trainer/unicode/case_map.h"

#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/uchar.h>

#include <stdexcept>

#include "trainer/unicode/char_class.h"
#include "trainer/unicode/utf8.h"

namespace qlora::unicode {

namespace {

enum class Mapping { Lower, Upper, Title };

// Appends the mapping of UTF-8 text s. Title maps only the first code point (the whole input is
// one word, titlecased where it starts, the rest left as is): its full titlecase mapping.
void append_mapped(std::string& out, std::string_view s, Mapping m) {
  icu::StringByteSink<std::string> sink(&out);
  icu::StringPiece in(s.data(), int32_t(s.size()));
  UErrorCode st = U_ZERO_ERROR;
  switch (m) {
    case Mapping::Lower: icu::CaseMap::utf8ToLower("", 0, in, sink, nullptr, st); break;
    case Mapping::Upper: icu::CaseMap::utf8ToUpper("", 0, in, sink, nullptr, st); break;
    case Mapping::Title:
      icu::CaseMap::utf8ToTitle("",
                                U_TITLECASE_WHOLE_STRING | U_TITLECASE_NO_BREAK_ADJUSTMENT | U_TITLECASE_NO_LOWERCASE,
                                nullptr, in, sink, nullptr, st);
      break;
  }
  if (U_FAILURE(st)) throw std::runtime_error(std::string("ICU case mapping: ") + u_errorName(st));
}

// Appends the mapping of one code point (titlecase for Title).
void append_mapped(std::string& out, char32_t c, Mapping m) {
  if (c < 0x80) {
    if (m == Mapping::Lower && c >= 'A' && c <= 'Z') c += 32;
    if (m != Mapping::Lower && c >= 'a' && c <= 'z') c -= 32;
    out += char(c);
    return;
  }
  std::string one;
  utf8_append(one, c);
  append_mapped(out, one, m);
}

// Appends the lowercase of u[i] in its context: a capital sigma preceded by a cased code point
// and not followed by one (case-ignorable ones skipped both ways) becomes final sigma.
void append_lower_at(std::string& out, const std::u32string& u, size_t i) {
  if (u[i] != 0x3A3) return append_mapped(out, u[i], Mapping::Lower);
  auto ignorable = [](char32_t c) { return u_hasBinaryProperty(UChar32(c), UCHAR_CASE_IGNORABLE) != 0; };
  size_t j = i;
  while (j > 0 && ignorable(u[j - 1])) --j;
  bool final = j > 0 && is_cased(u[j - 1]);
  if (final) {
    size_t k = i + 1;
    while (k < u.size() && ignorable(u[k])) ++k;
    final = k == u.size() || !is_cased(u[k]);
  }
  utf8_append(out, final ? 0x3C2 : 0x3C3);
}

}  // namespace

std::string to_lower(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_mapped(out, s, Mapping::Lower);
  return out;
}

std::string to_upper(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_mapped(out, s, Mapping::Upper);
  return out;
}

std::string to_title(std::string_view s) {
  std::u32string u = utf8_decode(s);
  std::string out;
  out.reserve(s.size());
  bool prev_cased = false;
  for (size_t i = 0; i < u.size(); ++i) {
    if (prev_cased)
      append_lower_at(out, u, i);
    else
      append_mapped(out, u[i], Mapping::Title);
    prev_cased = is_cased(u[i]);
  }
  return out;
}

std::string capitalize(std::string_view s) {
  std::u32string u = utf8_decode(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 0)
      append_mapped(out, u[i], Mapping::Title);
    else
      append_lower_at(out, u, i);
  }
  return out;
}

}  // namespace qlora::unicode
