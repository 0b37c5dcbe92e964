// Unicode case mapping with ICU's root locale, so the result never depends on the C library's
// locale. Mappings are full: one code point may become several ('ß' -> "SS", 'İ' -> "i̇"), and
// a capital sigma lowercases to final 'ς' at the end of a word (Final_Sigma). Python's str
// methods and Rust's str::to_lowercase/to_uppercase map the same way.
#pragma once
#include <string>
#include <string_view>

namespace qlora::unicode {

// Python str.lower() / Rust str::to_lowercase.
std::string to_lower(std::string_view s);
// Python str.upper() / Rust str::to_uppercase.
std::string to_upper(std::string_view s);
// Python str.title(): a code point that follows a cased one is lowercased, any other is
// titlecased ('ǆ' -> 'ǅ', 'ß' -> "Ss").
std::string to_title(std::string_view s);
// Python str.capitalize(): the first code point titlecased, the rest lowercased.
std::string capitalize(std::string_view s);

}  // namespace qlora::unicode
