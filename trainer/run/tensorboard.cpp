#include "trainer/run/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::run {

namespace stdfs = std::filesystem;

// ---- CRC-32C and records -------------------------------------------------------------------

namespace {
const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> t = [] {
    std::array<uint32_t, 256> a{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli
      a[i] = c;
    }
    return a;
  }();
  return t;
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

uint64_t get_le(std::string_view s, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[i])) << (8 * i);
  return v;
}
}  // namespace

uint32_t crc32c(std::string_view data) {
  const auto& t = crc_table();
  uint32_t c = 0xFFFFFFFFu;
  for (char ch : data) c = t[(c ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

std::string tfrecord(std::string_view data) {
  std::string len;
  put_le(len, data.size(), 8);
  std::string r = len;
  put_le(r, masked_crc32c(len), 4);
  r.append(data);
  put_le(r, masked_crc32c(data), 4);
  return r;
}

EventRecords read_event_records(const stdfs::path& file) {
  EventRecords out;
  const std::string bytes = fs::read_file(file);
  std::string_view s = bytes;
  while (!s.empty()) {
    if (s.size() < 12 || get_le(s.substr(8), 4) != masked_crc32c(s.substr(0, 8))) {
      out.intact = false;
      break;
    }
    const uint64_t n = get_le(s, 8);
    if (n > s.size() - 12 || s.size() - 12 - n < 4) {
      out.intact = false;
      break;
    }
    const std::string_view data = s.substr(12, n);
    if (get_le(s.substr(12 + n), 4) != masked_crc32c(data)) {
      out.intact = false;
      break;
    }
    out.records.emplace_back(data);
    s.remove_prefix(16 + n);
  }
  return out;
}

// ---- protobuf wire format ------------------------------------------------------------------

namespace {
enum Wire { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void key(std::string& out, int field, Wire w) { varint(out, (static_cast<uint64_t>(field) << 3) | w); }

void bytes_field(std::string& out, int field, std::string_view v) {
  key(out, field, kBytes);
  varint(out, v.size());
  out.append(v);
}

void varint_field(std::string& out, int field, uint64_t v) {
  key(out, field, kVarint);
  varint(out, v);
}

void double_field(std::string& out, int field, double v) {
  uint64_t b;
  std::memcpy(&b, &v, 8);
  key(out, field, kFixed64);
  put_le(out, b, 8);
}

void float_field(std::string& out, int field, float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  key(out, field, kFixed32);
  put_le(out, b, 4);
}

// Event fields (event.proto); Summary.Value, SummaryMetadata, TensorProto (summary.proto, tensor.proto).
constexpr int kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5, kEventSessionLog = 7;
constexpr int kSessionStatus = 1;
constexpr uint64_t kSessionStart = 1;
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1, kValueSimple = 2, kValueTensor = 8, kValueMetadata = 9;
constexpr int kMetaPluginData = 1, kMetaDataClass = 4, kPluginName = 1;
constexpr int kTensorDtype = 1, kTensorShape = 2, kTensorStringVal = 8;
constexpr uint64_t kDtString = 7, kDataClassTensor = 2;

std::string event(double wall_time, int64_t step, const std::string& value) {
  std::string e;
  double_field(e, kEventWallTime, wall_time);
  if (step != 0) varint_field(e, kEventStep, static_cast<uint64_t>(step));
  std::string summary;
  bytes_field(summary, kSummaryValue, value);
  bytes_field(e, kEventSummary, summary);
  return e;
}

// A reader over one message's fields.
struct Reader {
  std::string_view s;
  bool ok = true;
  bool varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (s.empty()) return ok = false;
      const auto b = static_cast<unsigned char>(s[0]);
      s.remove_prefix(1);
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return ok = false;
  }
  // The next field: its number, wire type, and (for kBytes) its payload or (kVarint) its value.
  bool next(int* field, int* wire, std::string_view* payload, uint64_t* value) {
    uint64_t k;
    if (s.empty() || !varint(&k)) return false;
    *field = static_cast<int>(k >> 3);
    *wire = static_cast<int>(k & 7);
    switch (*wire) {
      case kVarint: return varint(value);
      case kFixed64:
      case kFixed32: {
        const size_t n = *wire == kFixed64 ? 8 : 4;
        if (s.size() < n) return ok = false;
        s.remove_prefix(n);
        return true;
      }
      case kBytes: {
        uint64_t n;
        if (!varint(&n) || n > s.size()) return ok = false;
        *payload = s.substr(0, n);
        s.remove_prefix(n);
        return true;
      }
      default: return ok = false;
    }
  }
};

// The tag of a Summary's first value.
bool summary_tag(std::string_view summary, std::string* tag) {
  Reader r{summary};
  int f, w;
  std::string_view p;
  uint64_t v;
  while (r.next(&f, &w, &p, &v)) {
    if (f != kSummaryValue || w != kBytes) continue;
    Reader vr{p};
    while (vr.next(&f, &w, &p, &v))
      if (f == kValueTag && w == kBytes) *tag = std::string(p);
    return vr.ok;
  }
  return r.ok;
}
}  // namespace

std::string file_version_event(double wall_time) {
  std::string e;
  double_field(e, kEventWallTime, wall_time);
  bytes_field(e, kEventFileVersion, "brain.Event:2");
  return e;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  bytes_field(v, kValueTag, tag);
  float_field(v, kValueSimple, value);
  return event(wall_time, step, v);
}

std::string text_event(double wall_time, int64_t step, const std::string& tag, const std::string& text) {
  std::string plugin, meta, tensor, v;
  bytes_field(plugin, kPluginName, "text");
  bytes_field(meta, kMetaPluginData, plugin);
  varint_field(meta, kMetaDataClass, kDataClassTensor);
  varint_field(tensor, kTensorDtype, kDtString);
  bytes_field(tensor, kTensorShape, "");  // a scalar: no dimensions
  bytes_field(tensor, kTensorStringVal, text);
  bytes_field(v, kValueTag, tag);
  bytes_field(v, kValueMetadata, meta);
  bytes_field(v, kValueTensor, tensor);
  return event(wall_time, step, v);
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string e, log;
  double_field(e, kEventWallTime, wall_time);
  if (step != 0) varint_field(e, kEventStep, static_cast<uint64_t>(step));
  varint_field(log, kSessionStatus, kSessionStart);
  bytes_field(e, kEventSessionLog, log);
  return e;
}

bool read_event_info(std::string_view ev, EventInfo* out) {
  *out = EventInfo{};
  Reader r{ev};
  int f, w;
  std::string_view p;
  uint64_t v;
  while (r.next(&f, &w, &p, &v)) {
    if (f == kEventStep && w == kVarint) out->step = static_cast<int64_t>(v);
    if (f == kEventSummary && w == kBytes) {
      out->has_summary = true;
      if (!summary_tag(p, &out->tag)) return false;
    }
  }
  return r.ok;
}

// ---- the writer ------------------------------------------------------------------------------

bool is_event_file(const stdfs::path& p) { return p.filename().string().find("tfevents") != std::string::npos; }

namespace {
double now_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// The <unix time> of an event file's name (events.out.tfevents.<time>.<host>...), -1 if none.
int64_t name_time(const std::string& name) {
  const std::string prefix = "events.out.tfevents.";
  if (!name.starts_with(prefix)) return -1;
  int64_t t = 0;
  size_t i = prefix.size();
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) t = t * 10 + (name[i] - '0');
  return t;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  std::string h = buf;
  for (char& c : h)
    if (c == '/' || c == ' ') c = '_';
  return h;
}

void warn_once(const stdfs::path& p, const std::string& what) {
  std::fprintf(stderr, "qlora: warning: %s: %s; TensorBoard logging stops here (metrics.jsonl goes on)\n",
               p.string().c_str(), what.c_str());
}
}  // namespace

TensorBoardWriter::TensorBoardWriter(const stdfs::path& dir) {
  std::error_code ec;
  stdfs::create_directories(dir, ec);
  if (ec) user_error(dir.string(), ": cannot create the TensorBoard log directory: ", ec.message());
  // Later than every event file already there, so TensorBoard reads this one last.
  int64_t t = static_cast<int64_t>(std::time(nullptr));
  for (const auto& e : stdfs::directory_iterator(dir, ec)) t = std::max(t, name_time(e.path().filename().string()) + 1);
  const std::string name =
      "events.out.tfevents." + std::to_string(t) + "." + host_name() + "." + std::to_string(::getpid());
  path_ = dir / name;
  f_ = std::fopen(path_.c_str(), "wbx");
  if (!f_) user_error(path_.string(), ": cannot create: ", std::strerror(errno));
  write(file_version_event(now_seconds()));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::write(const std::string& ev) {
  if (!f_) return;
  const std::string r = tfrecord(ev);
  if (std::fwrite(r.data(), 1, r.size(), f_) != r.size()) {
    warn_once(path_, std::string("cannot write: ") + std::strerror(errno));
    std::fclose(f_);
    f_ = nullptr;
  }
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value) {
  write(scalar_event(now_seconds(), step, tag, static_cast<float>(value)));
}

void TensorBoardWriter::add_text(const std::string& tag, int64_t step, const std::string& text) {
  write(text_event(now_seconds(), step, tag, text));
}

void TensorBoardWriter::add_session_start(int64_t step) { write(session_start_event(now_seconds(), step)); }

void TensorBoardWriter::flush() {
  if (f_ && std::fflush(f_) != 0) {
    warn_once(path_, std::string("cannot write: ") + std::strerror(errno));
    std::fclose(f_);
    f_ = nullptr;
  }
}

// ---- resume --------------------------------------------------------------------------------

int64_t truncate_event_files(const stdfs::path& dir, int64_t step, const std::string& restated_tag) {
  std::error_code ec;
  if (!stdfs::is_directory(dir, ec)) return 0;
  std::vector<stdfs::path> files;
  for (const auto& e : stdfs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!is_event_file(e.path()) || !e.is_regular_file(ec)) continue;
    // A temporary sibling left by a rewrite that was killed: TensorBoard would read it as a run's file.
    if (name.starts_with(".") && name.find(".tmp-") != std::string::npos) {
      stdfs::remove(e.path(), ec);
      continue;
    }
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  int64_t dropped = 0;
  for (const auto& f : files) {
    const EventRecords recs = read_event_records(f);
    std::string kept;
    int64_t gone = 0;
    for (const auto& r : recs.records) {
      EventInfo info;
      const bool drop = !read_event_info(r, &info) || info.step > step ||
                        (info.step == step && info.has_summary && info.tag == restated_tag);
      if (drop) {
        ++gone;
      } else {
        kept += tfrecord(r);
      }
    }
    if (gone == 0 && recs.intact) continue;
    if (!recs.intact)
      std::fprintf(stderr, "qlora: warning: %s: a torn or damaged record; the events before it are kept\n",
                   f.string().c_str());
    fs::write_file_atomic(f, kept);
    dropped += gone;
  }
  return dropped;
}

int64_t remove_event_files(const stdfs::path& dir) {
  std::error_code ec;
  if (!stdfs::is_directory(dir, ec)) return 0;
  std::vector<stdfs::path> files;
  for (const auto& e : stdfs::directory_iterator(dir, ec))
    if (is_event_file(e.path()) && e.is_regular_file(ec)) files.push_back(e.path());
  int64_t n = 0;
  for (const auto& f : files) {
    if (!stdfs::remove(f, ec) && ec) user_error(f.string(), ": cannot remove: ", ec.message());
    ++n;
  }
  return n;
}

void check_logging_dir(const stdfs::path& dir, const std::string& key_where) {
  std::error_code ec;
  if (stdfs::exists(dir, ec) && !stdfs::is_directory(dir, ec))
    user_error(key_where, ": ", dir.string(), " exists and is not a directory");
  stdfs::path p = dir;  // the nearest existing ancestor must be a writable directory
  while (!p.empty() && !stdfs::exists(p, ec) && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
  if (!stdfs::is_directory(p, ec))
    user_error(key_where, ": cannot create ", dir.string(), ": ", p.string(), " is not a directory");
  if (::access(p.c_str(), W_OK | X_OK) != 0)
    user_error(key_where, ": cannot create or write ", dir.string(), ": ", p.string(), " is not writable");
}

}  // namespace qlora::run
