// Parquet, Arrow IPC (the datasets library's cache files) and CSV/TSV files as records, read with
// Apache Arrow's C++ libraries. Only arrow_source.cpp includes Arrow's headers.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "trainer/data/data_files.h"
#include "trainer/data/records.h"

namespace qlora::data {

// Reads `file` (kind parquet, arrow, csv or tsv) a bounded piece at a time (a Parquet row group
// or record batch, an IPC record batch, a CSV block) and calls `fn` with chunks of at most
// `chunk` records, in file order. Each row becomes a JSON object with the columns as keys;
// `where` is "path: row N" (N counted from 0, as datasets indexes rows). A file Arrow cannot
// read, a column type a record cannot hold, or a malformed row is a UserError naming the file.
void read_arrow_records(const DataFile& file, const std::function<void(std::vector<Record>&)>& fn, size_t chunk);

// The uncompressed size of a Parquet file's data, from its footer (the row groups' total byte
// size), or 0 when the footer cannot be read. For sizing decisions, not for reading.
uint64_t parquet_data_bytes(const std::filesystem::path& file);

}  // namespace qlora::data
