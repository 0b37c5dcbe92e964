#include "trainer/tokenizer/byte_level.h"

#include "trainer/unicode/utf8.h"

namespace qlora::tok {

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet a = [] {
    ByteLevelAlphabet r;
    r.char_to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t c = self ? char32_t(b) : char32_t(0x100 + n++);
      unicode::utf8_append(r.byte_to_utf8[b], c);
      r.char_to_byte[c] = int16_t(b);
    }
    return r;
  }();
  return a;
}

}  // namespace qlora::tok
