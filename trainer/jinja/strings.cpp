// Python str operations on UTF-8 text, per code point as Python does them.
#include "trainer/jinja/strings.h"

#include "trainer/jinja/operations.h"
#include "trainer/unicode/char_class.h"
#include "trainer/unicode/utf8.h"

namespace qlora::jinja {

std::string str_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  std::u32string u = unicode::utf8_decode(s);
  std::u32string set = chars ? unicode::utf8_decode(*chars) : std::u32string();
  auto strip_it = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : unicode::py_isspace(c); };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return unicode::utf8_encode(std::u32string_view(u).substr(b, e - b));
}

ValueList py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  ValueList out;
  if (sep.is_none() || sep.is_undefined()) {
    std::u32string u = unicode::utf8_decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < u.size()) {
      while (i < u.size() && unicode::py_isspace(u[i])) ++i;
      if (i >= u.size()) break;
      size_t j = i;
      while (j < u.size() && !unicode::py_isspace(u[j])) ++j;
      words.emplace_back(i, j);
      i = j;
    }
    if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit + 1) {
      // The unsplit remainder keeps its inner whitespace (trailing/leading stripped on its side).
      if (!from_right) {
        size_t rest = words[maxsplit].first;
        size_t end = u.size();
        while (end > rest && unicode::py_isspace(u[end - 1])) --end;
        for (int64_t k = 0; k < maxsplit; ++k)
          out.emplace_back(
              unicode::utf8_encode(std::u32string_view(u).substr(words[k].first, words[k].second - words[k].first)));
        out.emplace_back(unicode::utf8_encode(std::u32string_view(u).substr(rest, end - rest)));
        return out;
      }
      size_t first_kept = words.size() - maxsplit;
      size_t begin = 0;
      while (begin < u.size() && unicode::py_isspace(u[begin])) ++begin;
      out.emplace_back(
          unicode::utf8_encode(std::u32string_view(u).substr(begin, words[first_kept - 1].second - begin)));
      for (size_t k = first_kept; k < words.size(); ++k)
        out.emplace_back(
            unicode::utf8_encode(std::u32string_view(u).substr(words[k].first, words[k].second - words[k].first)));
      return out;
    }
    for (auto [b, e] : words) out.emplace_back(unicode::utf8_encode(std::u32string_view(u).substr(b, e - b)));
    return out;
  }
  const std::string& d = need_string(sep, "separator");
  if (d.empty()) value_error("empty separator");
  std::vector<std::string> parts;
  if (!from_right) {
    size_t start = 0;
    int64_t n = 0;
    while (maxsplit < 0 || n < maxsplit) {
      size_t p = s.find(d, start);
      if (p == std::string::npos) break;
      parts.push_back(s.substr(start, p - start));
      start = p + d.size();
      ++n;
    }
    parts.push_back(s.substr(start));
  } else {
    size_t end = s.size();
    int64_t n = 0;
    std::vector<std::string> rev;
    while (maxsplit < 0 || n < maxsplit) {
      if (end < d.size()) break;
      size_t p = s.rfind(d, end - d.size());
      if (p == std::string::npos) break;
      rev.push_back(s.substr(p + d.size(), end - p - d.size()));
      end = p;
      ++n;
    }
    rev.push_back(s.substr(0, end));
    parts.assign(rev.rbegin(), rev.rend());
  }
  for (auto& p : parts) out.emplace_back(std::move(p));
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& neu, int64_t count) {
  std::string out;
  if (old.empty()) {  // inserts between characters (and at both ends)
    std::u32string u = unicode::utf8_decode(s);
    int64_t n = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || n < count) {
        out += neu;
        ++n;
      }
      if (i < u.size()) unicode::utf8_append(out, u[i]);
    }
    return out;
  }
  size_t start = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t p = s.find(old, start);
    if (p == std::string::npos) break;
    out.append(s, start, p - start);
    out += neu;
    start = p + old.size();
    ++n;
  }
  out.append(s, start, std::string::npos);
  return out;
}

bool affix_match(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) {
    const std::string& x = need_string(a, prefix ? "startswith argument" : "endswith argument");
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {
    for (const auto& a : affix.list())
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

bool py_islower(const std::string& s) {
  bool cased = false;
  for (char32_t c : unicode::utf8_decode(s)) {
    if (unicode::is_uppercase(c) || unicode::is_titlecase(c)) return false;
    cased = cased || unicode::is_lowercase(c);
  }
  return cased;
}

bool py_isupper(const std::string& s) {
  bool cased = false;
  for (char32_t c : unicode::utf8_decode(s)) {
    if (unicode::is_lowercase(c) || unicode::is_titlecase(c)) return false;
    cased = cased || unicode::is_uppercase(c);
  }
  return cased;
}

}  // namespace qlora::jinja
