// Reading dataset files as records: JSON Lines (one object per line) or a JSON array of objects,
// plain or gzip-compressed; Parquet, Arrow and CSV/TSV (arrow_source.h); directories of them
// (data_files.h).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/data/data_files.h"

namespace qlora::data {

struct Record {
  nlohmann::ordered_json value;  // one JSON object, keys in file order
  std::string where;             // "path:line", the prefix of every message about it
};

// The longest line of a JSON Lines file: a longer one is an error (or skipped), never read whole.
inline constexpr size_t kMaxLineBytes = size_t{64} << 20;

// Reads the data files of `source` (data_files.h) in chunks of records and calls `fn` with each
// chunk, in file order.
// JSON: .jsonl is JSON Lines; .json is a JSON array when it starts with '[', else JSON Lines (as
// HF datasets reads it); either may be gzip-compressed (.jsonl.gz, .json.gz). Blank lines are
// skipped. `where` is "path:line". Malformed input is a UserError "path:line: what is wrong"
// (invalid UTF-8, bad JSON, not an object, a line longer than kMaxLineBytes), or, with
// skip_invalid, skipped and added to *skipped.
// Parquet, Arrow and CSV/TSV: one record per row (arrow_source.h), `where` "path: row N"; a
// malformed file is always a UserError.
// A path that does not exist, an empty directory or a split with no files is a UserError
// naming it as such.
void read_records(const Source& source, bool skip_invalid, int64_t* skipped,
                  const std::function<void(std::vector<Record>&)>& fn, size_t chunk = 2048);
// The same, for a file (or a directory's train split).
void read_records(const std::filesystem::path& path, bool skip_invalid, int64_t* skipped,
                  const std::function<void(std::vector<Record>&)>& fn, size_t chunk = 2048);

// "string", "number", "array", ... (JSON's names, for messages).
std::string json_type(const nlohmann::ordered_json& j);

}  // namespace qlora::data
