// File-system helpers that never leave a half-written output in place of a good one.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace qlora::fs {

namespace stdfs = std::filesystem;

// Reads a whole file; UserError naming the path if it cannot be read.
std::string read_file(const stdfs::path& path);

// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
// directory. A crash leaves either the old file or the new one, never a mix.
void write_file_atomic(const stdfs::path& path, std::string_view bytes);

// fsync a file or a directory by path (throws std::system_error on failure).
void fsync_path(const stdfs::path& path);

// A unique sibling name for building `final_path` out of place: "<dir>/.<name>.tmp-<pid>-<n>".
stdfs::path temp_sibling(const stdfs::path& final_path);

// Builds a directory out of place and publishes it with one rename.
//   StagedDir out(final_dir);   // creates the temporary sibling
//   ... write into out.path() ...
//   out.commit();               // fsyncs every file and the dir, renames over final_dir
// If commit() is never called the temporary directory is removed.
class StagedDir {
 public:
  explicit StagedDir(stdfs::path final_dir, bool replace_existing = false);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;
  const stdfs::path& path() const { return tmp_; }
  const stdfs::path& final_path() const { return final_; }
  void commit();

 private:
  stdfs::path final_;
  stdfs::path tmp_;
  bool replace_;
  bool done_ = false;
};

// Human-readable byte count ("1.5 GiB").
std::string format_bytes(uint64_t bytes);

// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
uint64_t peak_rss_bytes();

}  // namespace qlora::fs
