#include "trainer/unicode/normalize.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <stdexcept>

namespace qlora::unicode {

void normalize(std::string& s, NormalForm form) {
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

}  // namespace qlora::unicode
