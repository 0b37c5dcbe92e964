// TensorBoard event files (report_to: tensorboard), written without a protobuf library.
//
// An event file is a sequence of TFRecords: the data's length (uint64, little-endian), the masked
// CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data. Each record's data is a
// tensorboard.Event message (tensorboard/compat/proto/event.proto): wall_time = 1 (double),
// step = 2 (int64), file_version = 3 ("brain.Event:2", the first record of a file) or summary = 5.
// A Summary holds Values (tag = 1; simple_value = 2 for a scalar; metadata = 9 and tensor = 8 for
// text: a DT_STRING scalar tensor whose metadata names the "text" plugin).
//
// Files are named as TensorBoard's writers name them, events.out.tfevents.<unix time>.<hostname>
// .<pid>, and a new file's time is later than every existing file's in the directory, so that
// TensorBoard, which reads a directory's files in name order, reads it last.
//
// Resume (truncate_event_files): the events after the resumed checkpoint's step are removed from
// the files that hold them, each file rewritten out of place (temporary sibling, fsync, rename),
// before the resumed run opens its new file, which starts with a SessionLog START at the step
// after (so that a TensorBoard already showing the removed events drops them too). A crash midway leaves every file either as it was
// or rewritten, and the next resume does the same again; nothing at or before the step is lost.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace qlora::run {

// CRC-32C (Castagnoli) and TFRecord's masked form of it.
uint32_t crc32c(std::string_view data);
uint32_t masked_crc32c(std::string_view data);

// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
std::string tfrecord(std::string_view data);

// Serialized tensorboard.Event messages.
std::string file_version_event(double wall_time);
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
std::string text_event(double wall_time, int64_t step, const std::string& tag, const std::string& text);
// session_log = 7 with status START: a TensorBoard that is already running and has read the events
// a resume removes drops those at `step` and after when it reads this (its restart purge).
std::string session_start_event(double wall_time, int64_t step);

// What truncate_event_files reads of an event: its step and, for a summary, the first value's tag.
struct EventInfo {
  int64_t step = 0;
  bool has_summary = false;
  std::string tag;
};
// Reads an Event message's step and tag; false if it is not a well-formed message.
bool read_event_info(std::string_view event, EventInfo* out);

// The records of an event file: the data of each whole, checksummed record, up to the first one
// that is torn (a crash while writing) or damaged. `intact` says whether the whole file was read.
struct EventRecords {
  std::vector<std::string> records;
  bool intact = true;
};
EventRecords read_event_records(const std::filesystem::path& file);

// A name TensorBoard reads as an event file (it holds "tfevents").
bool is_event_file(const std::filesystem::path& p);

// One new event file in `dir` (created if needed), appended to and flushed after each batch of
// events. A write that fails (a full disk) prints one warning and turns the writer off: the run
// goes on, with metrics.jsonl.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::filesystem::path& dir);  // UserError if it cannot be created
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
  void add_scalar(const std::string& tag, int64_t step, double value);
  void add_text(const std::string& tag, int64_t step, const std::string& text);
  void add_session_start(int64_t step);
  void flush();
  const std::filesystem::path& path() const { return path_; }

 private:
  void write(const std::string& event);
  std::filesystem::path path_;
  std::FILE* f_ = nullptr;
};

// On resume at `step`: every event file in `dir` keeps its events up to `step`, except a text
// summary tagged `restated_tag` at exactly `step` (the resumed run writes it again); a torn or
// damaged tail is dropped. Files that change are rewritten atomically; the others are not
// touched. Returns the number of events removed. A missing directory is left missing.
int64_t truncate_event_files(const std::filesystem::path& dir, int64_t step, const std::string& restated_tag);

// A fresh run: removes the event files in `dir` (of an earlier start that left no checkpoint).
// Returns how many.
int64_t remove_event_files(const std::filesystem::path& dir);

// Checks, before a run writes anything, that `dir` can be created and written: a UserError
// naming `key_where` (e.g. "cfg.yaml:12: logging_dir") otherwise. Creates nothing.
void check_logging_dir(const std::filesystem::path& dir, const std::string& key_where);

}  // namespace qlora::run
