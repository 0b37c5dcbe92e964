#include "trainer/data/data_files.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::data {

namespace stdfs = std::filesystem;

namespace {

constexpr const char* kExtensions = ".parquet, .arrow, .jsonl, .json, .jsonl.gz, .json.gz, .csv or .tsv";

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The kind of a file by its name; false when the name says nothing.
bool kind_by_name(const std::string& name, DataFile* f) {
  const std::string n = lower(name);
  auto ends = [&](const char* e) { return n.ends_with(e); };
  if (ends(".jsonl.gz") || ends(".json.gz")) {
    f->kind = FileKind::json;
    f->gzip = true;
  } else if (ends(".jsonl") || ends(".json")) {
    f->kind = FileKind::json;
  } else if (ends(".parquet")) {
    f->kind = FileKind::parquet;
  } else if (ends(".arrow")) {
    f->kind = FileKind::arrow;
  } else if (ends(".csv")) {
    f->kind = FileKind::csv;
  } else if (ends(".tsv")) {
    f->kind = FileKind::tsv;
  } else {
    return false;
  }
  return true;
}

std::string head_bytes(const stdfs::path& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  return s;
}

// The datasets library's split keywords and word separators (data_files.py).
const std::vector<std::pair<std::string, std::vector<std::string>>>& split_keywords() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> k = {
      {"train", {"train", "training"}},
      {"validation", {"validation", "valid", "dev", "val"}},
      {"test", {"test", "testing", "eval", "evaluation"}},
  };
  return k;
}

bool is_sep(char c) { return c == '-' || c == '.' || c == '_' || c == ' ' || (c >= '0' && c <= '9'); }

// Glob "kw[sep]*": the name starts with the keyword and a separator.
bool starts_kw_sep(const std::string& s, const std::string& kw) {
  return s.size() > kw.size() && s.compare(0, kw.size(), kw) == 0 && is_sep(s[kw.size()]);
}
// Glob "*[sep]kw": the name ends with a separator and the keyword.
bool ends_sep_kw(const std::string& s, const std::string& kw) {
  return s.size() > kw.size() && s.ends_with(kw) && is_sep(s[s.size() - kw.size() - 1]);
}
// Glob "*[sep]kw[sep]*": a separator, the keyword and a separator somewhere in the name.
bool has_sep_kw_sep(const std::string& s, const std::string& kw) {
  for (size_t p = s.find(kw, 1); p != std::string::npos; p = s.find(kw, p + 1))
    if (is_sep(s[p - 1]) && p + kw.size() < s.size() && is_sep(s[p + kw.size()])) return true;
  return false;
}

struct Rel {
  std::string rel;                // "data/train-00000-of-00001.parquet"
  std::vector<std::string> dirs;  // {"data"}
  std::string base;               // "train-00000-of-00001.parquet"
};

// The data files under `dir` (relative, '/'-separated, sorted), leaving out what the datasets
// library leaves out: hidden files and folders, "__" folders, its metadata files, and here also
// files without a data extension.
std::vector<Rel> list_files(const stdfs::path& dir) {
  static const std::set<std::string> ignored = {"README.md",          "config.json",    "dataset_info.json",
                                                "dataset_infos.json", "dummy_data.zip", "dataset_dict.json",
                                                "state.json"};
  std::vector<Rel> out;
  std::error_code ec;
  for (auto it = stdfs::recursive_directory_iterator(dir, stdfs::directory_options::follow_directory_symlink, ec);
       !ec && it != stdfs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.starts_with(".") || (it->is_directory(ec) && name.starts_with("__"))) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(ec) || ignored.count(name)) continue;
    DataFile f;
    if (!kind_by_name(name, &f)) continue;
    Rel r;
    r.rel = stdfs::relative(it->path(), dir, ec).generic_string();
    r.base = name;
    const stdfs::path parent = stdfs::path(r.rel).parent_path();
    for (const auto& part : parent) r.dirs.push_back(part.string());
    out.push_back(std::move(r));
  }
  if (ec) user_error(dir.string(), ": cannot list the directory (", ec.message(), ")");
  std::sort(out.begin(), out.end(), [](const Rel& a, const Rel& b) { return a.rel < b.rel; });
  return out;
}

// Split name of a Hub shard "data/<split>-NNNNN-of-NNNNN*.*", or "".
std::string shard_split(const Rel& r) {
  if (r.dirs.size() != 1 || r.dirs[0] != "data") return "";
  const std::string& b = r.base;
  // <split>-ddddd-of-ddddd then anything, with a '.' somewhere after; the split is the longest match.
  for (size_t p = b.size(); p-- > 1;) {
    if (b[p] != '-' || p + 15 > b.size()) continue;
    auto digits = [&](size_t at) {
      for (size_t i = at; i < at + 5; ++i)
        if (!std::isdigit(static_cast<unsigned char>(b[i]))) return false;
      return true;
    };
    if (digits(p + 1) && b.compare(p + 6, 4, "-of-") == 0 && digits(p + 10) && b.find('.', p + 15) != std::string::npos)
      return b.substr(0, p);
  }
  return "";
}

using SplitFiles = std::vector<std::pair<std::string, std::vector<std::string>>>;  // split -> rel paths

// Files per split, as datasets' get_data_patterns and DataFilesDict.from_patterns resolve them.
SplitFiles splits_of(const std::vector<Rel>& files) {
  SplitFiles out;
  // 1. Hub shards: data/<split>-00000-of-00002.parquet
  std::map<std::string, std::vector<std::string>> shards;
  for (const Rel& r : files)
    if (std::string s = shard_split(r); !s.empty()) shards[s].push_back(r.rel);
  if (!shards.empty()) {
    for (const auto& [name, kws] : split_keywords())
      if (auto it = shards.find(name); it != shards.end()) out.emplace_back(name, it->second);
    for (const auto& [name, list] : shards)
      if (name != "train" && name != "validation" && name != "test") out.emplace_back(name, list);
    return out;
  }
  // 2. split keywords in directory names, 3. in file names: for each split, the files of each
  // pattern in turn (keyword by keyword), a file counted once.
  using Pred = bool (*)(const Rel&, const std::string&);
  const std::vector<Pred> dir_patterns = {
      [](const Rel& r, const std::string& kw) {
        return std::any_of(r.dirs.begin(), r.dirs.end(), [&](const std::string& d) { return d == kw; });
      },
      [](const Rel& r, const std::string& kw) {
        return std::any_of(r.dirs.begin(), r.dirs.end(), [&](const std::string& d) { return starts_kw_sep(d, kw); });
      },
      [](const Rel& r, const std::string& kw) {
        return std::any_of(r.dirs.begin(), r.dirs.end(), [&](const std::string& d) { return ends_sep_kw(d, kw); });
      },
      [](const Rel& r, const std::string& kw) {
        return std::any_of(r.dirs.begin(), r.dirs.end(), [&](const std::string& d) { return has_sep_kw_sep(d, kw); });
      },
  };
  const std::vector<Pred> name_patterns = {
      [](const Rel& r, const std::string& kw) { return starts_kw_sep(r.base, kw); },
      [](const Rel& r, const std::string& kw) { return has_sep_kw_sep(r.base, kw); },
  };
  for (const auto* patterns : {&dir_patterns, &name_patterns}) {
    for (const auto& [name, kws] : split_keywords()) {
      std::vector<std::string> list;
      for (const std::string& kw : kws)
        for (Pred p : *patterns)
          for (const Rel& r : files)
            if (p(r, kw) && std::find(list.begin(), list.end(), r.rel) == list.end()) list.push_back(r.rel);
      if (!list.empty()) out.emplace_back(name, std::move(list));
    }
    if (!out.empty()) return out;
  }
  // 4. everything is train
  std::vector<std::string> all;
  for (const Rel& r : files) all.push_back(r.rel);
  if (!all.empty()) out.emplace_back("train", std::move(all));
  return out;
}

nlohmann::json read_json_file(const stdfs::path& path) {
  try {
    return nlohmann::json::parse(fs::read_file(path));
  } catch (const nlohmann::json::exception& e) { user_error(path.string(), ": invalid JSON (", e.what(), ")"); }
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

DataFile classify_file(const stdfs::path& path, const std::string& ds_type) {
  DataFile f;
  f.path = path;
  const std::string name = path.filename().string();
  if (!ds_type.empty()) {
    if (ds_type == "json") {
      f.kind = FileKind::json;
      const std::string h = head_bytes(path, 2);
      f.gzip = h.size() == 2 && static_cast<unsigned char>(h[0]) == 0x1f && static_cast<unsigned char>(h[1]) == 0x8b;
    } else if (ds_type == "parquet") {
      f.kind = FileKind::parquet;
    } else if (ds_type == "arrow") {
      f.kind = FileKind::arrow;
    } else if (ds_type == "csv") {
      f.kind = lower(name).ends_with(".tsv") ? FileKind::tsv : FileKind::csv;
    } else {
      user_error(path.string(), ": ds_type: expected json, parquet, arrow or csv, got \"", ds_type, "\"");
    }
    return f;
  }
  if (kind_by_name(name, &f)) return f;
  const std::string h = head_bytes(path, 8);
  if (h.starts_with("PAR1"))
    f.kind = FileKind::parquet;
  else if (h.starts_with("ARROW1") || h.starts_with("\xFF\xFF\xFF\xFF"))
    f.kind = FileKind::arrow;
  else if (h.size() >= 2 && static_cast<unsigned char>(h[0]) == 0x1f && static_cast<unsigned char>(h[1]) == 0x8b)
    f.gzip = true;
  return f;
}

std::vector<std::string> directory_splits(const stdfs::path& dir) {
  std::error_code ec;
  if (!stdfs::is_directory(dir, ec)) return {};
  if (stdfs::exists(dir / "dataset_dict.json", ec))
    return read_json_file(dir / "dataset_dict.json").value("splits", std::vector<std::string>{});
  std::vector<std::string> out;
  for (const auto& [name, files] : splits_of(list_files(dir))) out.push_back(name);
  return out;
}

std::vector<DataFile> resolve_data_files(const Source& source) {
  const stdfs::path& path = source.path;
  const std::string name = path.string();
  std::error_code ec;
  if (!stdfs::exists(path, ec))
    user_error(name, ": no such file or directory (expected a dataset file or a directory of them)");
  if (!stdfs::is_directory(path, ec)) return {classify_file(path, source.ds_type)};

  // Folders written by save_to_disk: a DatasetDict (one folder per split) or one Dataset.
  if (stdfs::exists(path / "dataset_dict.json", ec)) {
    const auto splits = directory_splits(path);
    if (std::find(splits.begin(), splits.end(), source.split) == splits.end())
      user_error(name, ": split: no split \"", source.split, "\" in this DatasetDict (it has ",
                 splits.empty() ? "none" : join(splits), ")");
    return resolve_data_files(Source{path / source.split, "train", source.ds_type});
  }
  if (stdfs::exists(path / "state.json", ec)) {
    const nlohmann::json state = read_json_file(path / "state.json");
    std::vector<DataFile> out;
    if (state.contains("_data_files") && state["_data_files"].is_array()) {
      for (const auto& f : state["_data_files"])
        if (f.is_object() && f.contains("filename") && f["filename"].is_string())
          out.push_back(DataFile{path / f["filename"].get<std::string>(), FileKind::arrow, false});
    }
    if (out.empty()) user_error((path / "state.json").string(), ": lists no data files (\"_data_files\")");
    return out;
  }

  const std::vector<Rel> files = list_files(path);
  if (files.empty()) user_error(name, ": no data files in the directory (expected ", kExtensions, " files)");
  const SplitFiles splits = splits_of(files);
  std::vector<std::string> names;
  for (const auto& [split, list] : splits) {
    names.push_back(split);
    if (split != source.split) continue;
    std::vector<DataFile> out;
    for (const std::string& rel : list) out.push_back(classify_file(path / rel, ""));
    return out;
  }
  user_error(name, ": split: no files for split \"", source.split, "\" in the directory (it has ", join(names), ")");
}

}  // namespace qlora::data
