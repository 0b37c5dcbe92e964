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

// A file written out of place: bytes go to a temporary sibling; commit() fsyncs, renames it over
// `path` and fsyncs the directory. A crash leaves either the old file or the new one, never a mix;
// without commit() (an error, an exception) the temporary file is removed. Failures are
// UserErrors naming `path`.
class AtomicFile {
 public:
  explicit AtomicFile(stdfs::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void commit();

 private:
  stdfs::path path_, tmp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` atomically (an AtomicFile written at once).
void write_file_atomic(const stdfs::path& path, std::string_view bytes);

// fsync a file or a directory by path (throws std::system_error on failure).
void fsync_path(const stdfs::path& path);

// A unique sibling name for building `final_path` out of place: "<dir>/.<name>.tmp-<pid>-<n>".
stdfs::path temp_sibling(const stdfs::path& final_path);

// The path the user knows: every component named like a temp_sibling (".<name>.tmp-<pid>-<n>")
// becomes <name> again, so errors about a file being staged name the file it will become
// ("run/checkpoints/checkpoint-000004/adapter_model.safetensors"), never the staging folder.
stdfs::path public_path(const stdfs::path& path);

// Builds a directory out of place and publishes it with one rename.
//   StagedDir out(final_dir);   // creates the temporary sibling
//   ... write into out.path() ...
//   out.commit();               // fsyncs every file and the dir, renames over final_dir
// If commit() is never called the temporary directory is removed. Errors (a full disk included)
// are UserErrors naming final_dir or the file inside it, never the temporary name.
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

// A "<key>: <n> kB" field of /proc/self/status in bytes (key with its colon, e.g. "VmRSS:"),
// 0 if unknown.
uint64_t proc_status_bytes(const char* key);

// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
uint64_t peak_rss_bytes();

}  // namespace qlora::fs
