#include "trainer/unicode/utf8.h"

namespace qlora::unicode {

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

size_t utf8_find_invalid(std::string_view s) {
  size_t i = 0, bad = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int n = well_formed_at(s, i, bad);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

bool utf8_valid(std::string_view s) { return utf8_find_invalid(s) == std::string_view::npos; }

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

size_t utf8_count(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(c);
      ++i;
    } else {
      out.push_back(utf8_next(s, i));
    }
  }
  return out;
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

}  // namespace qlora::unicode
