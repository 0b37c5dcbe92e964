// Reading dataset files: JSON Lines (one object per line) or a JSON array of objects.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace qlora::data {

struct Record {
  nlohmann::ordered_json value;  // one JSON object, keys in file order
  std::string where;             // "path:line", the prefix of every message about it
};

// The longest line of a JSON Lines file: a longer one is an error (or skipped), never read whole.
inline constexpr size_t kMaxLineBytes = size_t{64} << 20;

// Reads `path` in chunks of records and calls `fn` with each chunk, in file order.
// Format: .jsonl is JSON Lines; .json is a JSON array when it starts with '[', else JSON Lines
// (as HF datasets reads it). Blank lines are skipped.
// A path that does not exist or is a directory is a UserError naming it as such. Malformed
// input is a UserError "path:line: what is wrong" (invalid UTF-8, bad JSON, not an object, a
// line longer than kMaxLineBytes), or, with skip_invalid, skipped and added to *skipped.
void read_records(const std::filesystem::path& path, bool skip_invalid, int64_t* skipped,
                  const std::function<void(std::vector<Record>&)>& fn, size_t chunk = 2048);

// "string", "number", "array", ... (JSON's names, for messages).
std::string json_type(const nlohmann::ordered_json& j);

}  // namespace qlora::data
