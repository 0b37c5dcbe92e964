// Which files a dataset entry stands for, and how each is read: a single file (its type from
// `ds_type`, its extension or its first bytes), or a directory whose files of one split are read
// in order, chosen by the rules of the datasets library (load_dataset on a local folder).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace qlora::data {

// A dataset as the config names it.
struct Source {
  std::filesystem::path path;   // a data file or a directory of data files
  std::string split = "train";  // for a directory: which split's files
  std::string ds_type;          // "" (from the extension), or json, parquet, arrow, csv
};

enum class FileKind { json, parquet, arrow, csv, tsv };

struct DataFile {
  std::filesystem::path path;
  FileKind kind = FileKind::json;
  bool gzip = false;  // .jsonl.gz / .json.gz: JSON compressed with gzip
};

// How the file at `path` is read: ds_type when given, else its extension (.jsonl, .json,
// .jsonl.gz, .json.gz, .parquet, .arrow, .csv, .tsv), else its first bytes (Parquet's PAR1,
// Arrow's ARROW1 or stream header, gzip's 1f 8b), else JSON.
DataFile classify_file(const std::filesystem::path& path, const std::string& ds_type);

// The data files of `source`, in reading order. A file is itself; a directory resolves as the
// datasets library resolves it (data/<split>-NNNNN-of-NNNNN.* shards first, then split names in
// directory names, then in file names, else every file is train; hidden files and README.md and
// the like are left out), or, for a folder written by Dataset.save_to_disk (state.json) or
// DatasetDict.save_to_disk (dataset_dict.json), the Arrow files it lists. A path that does not
// exist, an empty directory or a split with no file is a UserError naming the path.
std::vector<DataFile> resolve_data_files(const Source& source);

// The split names the directory holds, in the datasets library's order (train, validation, test,
// then others); empty for a file. For messages.
std::vector<std::string> directory_splits(const std::filesystem::path& dir);

}  // namespace qlora::data
