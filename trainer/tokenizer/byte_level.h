// The GPT-2 byte-level alphabet, which byte-level BPE tokenizers use to spell arbitrary bytes as
// printable characters.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace qlora::tok {

// Bytes `!`..`~`, 0xA1..0xAC, 0xAE..0xFF stand for themselves; the other 68 bytes map, in
// order, to U+0100 + n (space -> "Ġ", newline -> "Ċ").
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;  // UTF-8 text of each byte's character
  std::array<int16_t, 0x180> char_to_byte;    // code point -> byte, -1 when not in the alphabet
};
const ByteLevelAlphabet& byte_level_alphabet();

}  // namespace qlora::tok
