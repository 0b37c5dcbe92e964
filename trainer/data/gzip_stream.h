// Reading gzip-compressed files (zlib) as a std::istream.
#pragma once
#include <filesystem>
#include <istream>
#include <memory>

namespace qlora::data {

// The decompressed content of the gzip file at `path` (concatenated members are read on). A
// file that is not gzip, a truncated or corrupt one is a UserError "path: ..." thrown from the
// stream's reads (its exceptions() include badbit).
std::unique_ptr<std::istream> open_gzip(const std::filesystem::path& path);

}  // namespace qlora::data
