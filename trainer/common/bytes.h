// Byte sizes as configs and command lines write them.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace qlora {

// "0", "4096", "512KB", "512m", "1.5GB", "2GiB", "300 MiB" -> bytes. K/KB, M/MB, G/GB, T/TB are
// powers of 1000, KiB/MiB/GiB/TiB powers of 1024, B or no unit is bytes; letters in any case,
// spaces ignored, a fraction rounded down to whole bytes. nullopt for anything else (a sign,
// several dots, no digits, an unknown unit, more than 9e18 bytes). Callers that take "auto" or
// refuse 0 check that themselves.
std::optional<uint64_t> parse_byte_size(std::string_view text);

}  // namespace qlora
