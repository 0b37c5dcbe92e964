// The UTF-8 codec: code point iteration, encoding, validation (Unicode Table 3-7: no overlongs,
// surrogates or code points above U+10FFFF), Rust's from_utf8_lossy, and whole-string
// conversion to and from UTF-32 for code that indexes text by code point.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace qlora::unicode {

// Decodes the code point at s[i] and advances i. Invalid bytes decode as U+FFFD, one byte each.
char32_t utf8_next(std::string_view s, size_t& i);
// Byte length of the UTF-8 sequence that starts with `lead` (1 for ASCII and invalid bytes).
inline int utf8_seq_len(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }
void utf8_append(std::string& out, char32_t cp);
bool utf8_valid(std::string_view s);
// Offset of the first byte of the first ill-formed sequence, or npos when s is valid UTF-8.
size_t utf8_find_invalid(std::string_view s);
// Rust's String::from_utf8_lossy (and Python's errors="replace"): every maximal ill-formed
// subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// Number of code points of valid UTF-8 text (counts the bytes that are not continuation bytes).
size_t utf8_count(std::string_view s);

// UTF-8 -> UTF-32 (invalid bytes become U+FFFD, one each, as in utf8_next) and back.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);

}  // namespace qlora::unicode
