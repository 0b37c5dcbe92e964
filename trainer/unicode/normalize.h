// Unicode normalization of UTF-8 text (NFC/NFD/NFKC/NFKD) with ICU.
#pragma once
#include <string>

namespace qlora::unicode {

enum class NormalForm { NFC, NFD, NFKC, NFKD };
// Normalizes s in place. ASCII text is returned untouched (it is invariant under all four).
void normalize(std::string& s, NormalForm form);

}  // namespace qlora::unicode
