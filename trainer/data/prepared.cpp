#include "trainer/data/prepared.h"

#include <sys/stat.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/common/mapped_file.h"
#include "trainer/common/sha256.h"
#include "trainer/data/data_files.h"
#include "trainer/tokenizer/chat_template.h"

namespace qlora::data {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

static_assert(std::endian::native == std::endian::little, "prepared-data entries are little-endian");

// Bumped whenever the prepared rows or the entry layout change for the same inputs (tokenization,
// masking, shuffling, packing, the fingerprint): older entries then simply stop matching.
constexpr uint32_t kFormatVersion = 2;
constexpr char kMagic[8] = {'Q', 'L', 'P', 'R', 'E', 'P', '\r', '\n'};
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 64 + 8;  // magic, version, reserved, key, meta length
constexpr size_t kDigestBytes = 64;                  // hex SHA-256 of everything before it

// The one list of DataStats fields: serialization in both directions goes through it.
template <class Stats, class F>
void visit_stats(Stats& s, F&& f) {
  f("records", s.records);
  f("skipped_invalid", s.skipped_invalid);
  f("truncated", s.truncated);
  f("dropped_no_targets", s.dropped_no_targets);
  f("train_samples", s.train_samples);
  f("val_samples", s.val_samples);
  f("train_rows", s.train_rows);
  f("val_rows", s.val_rows);
  f("train_tokens", s.train_tokens);
  f("train_target_tokens", s.train_target_tokens);
  f("dropped_truncated", s.dropped_truncated);
  f("no_eos", s.no_eos);
  f("train_lengths", s.train_lengths);
  f("val_lengths", s.val_lengths);
}

// Key material: tagged, length-prefixed fields, so that no two different inputs run together.
class KeyHasher {
 public:
  KeyHasher() { add("format", "qlora prepared data " + std::to_string(kFormatVersion)); }
  void add(std::string_view tag, std::string_view value) {
    const std::string head = std::string(tag) + "\x1f" + std::to_string(value.size()) + "\x1f";
    h_.update(head.data(), head.size());
    h_.update(value.data(), value.size());
  }
  void add(std::string_view tag, int64_t v) { add(tag, std::to_string(v)); }
  std::string digest() { return h_.hex_digest(); }

 private:
  Sha256 h_;
};

std::string double_bits(double d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(std::bit_cast<uint64_t>(d)));
  return buf;
}

json part_meta(const PackedData& p) {
  return {{"tokens", p.input_ids.size()}, {"row_begin", p.row_begin.size()}, {"samples", p.sample_begin.size()},
          {"pad_id", p.pad_id},           {"sequence_len", p.sequence_len},  {"fingerprint", p.fingerprint}};
}

// ---- reading -------------------------------------------------------------------------------------

struct Corrupt : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Unreadable : std::runtime_error {  // there, but cannot be opened
  using std::runtime_error::runtime_error;
};

// A token array to point into the mapped entry: where it starts and how many values.
struct MapAt {
  TokenArray* array;
  uint64_t offset;
  size_t count;
};

class EntryReader {
 public:
  EntryReader(std::FILE* f, uint64_t size) : f_(f), size_(size), left_(size) {}
  void read(void* dst, size_t n, bool hash = true) {
    if (n > left_) throw Corrupt("truncated");
    if (n && std::fread(dst, 1, n, f_) != n)
      throw Corrupt(std::ferror(f_) ? std::string("read error: ") + std::strerror(errno) : "truncated");
    left_ -= n;
    if (hash) h_.update(dst, n);
  }
  template <class T>
  void read_vec(std::vector<T>& v, int64_t n) {
    if (n < 0 || static_cast<uint64_t>(n) > left_ / sizeof(T)) throw Corrupt("truncated");
    v.resize(static_cast<size_t>(n));
    read(v.data(), v.size() * sizeof(T));
  }
  // n int32 values: into memory, or (map_at set) hashed and skipped, their offset recorded for a
  // mapping of the file.
  void read_tokens(TokenArray& a, int64_t n, std::vector<MapAt>* map_at) {
    if (!map_at) {
      read_vec(a.owned(), n);
      return;
    }
    if (n < 0 || static_cast<uint64_t>(n) > left_ / sizeof(int32_t)) throw Corrupt("truncated");
    map_at->push_back({&a, offset(), static_cast<size_t>(n)});
    std::vector<char> buf(size_t{1} << 20);
    for (uint64_t rest = static_cast<uint64_t>(n) * sizeof(int32_t); rest > 0;) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(rest, buf.size()));
      read(buf.data(), take);
      rest -= take;
    }
  }
  uint64_t left() const { return left_; }
  uint64_t offset() const { return size_ - left_; }
  std::string digest() { return h_.hex_digest(); }

 private:
  std::FILE* f_;
  uint64_t size_, left_;
  Sha256 h_;
};

std::shared_ptr<PackedData> read_part(EntryReader& r, const json& m, std::vector<MapAt>* map_at) {
  auto p = std::make_shared<PackedData>();
  p->pad_id = m.at("pad_id").get<int32_t>();
  p->sequence_len = m.at("sequence_len").get<int64_t>();
  p->fingerprint = m.at("fingerprint").get<uint64_t>();
  const auto tokens = m.at("tokens").get<int64_t>();
  r.read_tokens(p->input_ids, tokens, map_at);
  r.read_tokens(p->labels, tokens, map_at);
  r.read_vec(p->row_begin, m.at("row_begin").get<int64_t>());
  r.read_vec(p->sample_begin, m.at("samples").get<int64_t>());
  return p;
}

void check_part(const PackedData& p, const char* which) {
  const auto n = static_cast<int64_t>(p.input_ids.size());
  auto bad = [&](const std::string& what) { throw Corrupt(std::string(which) + ": " + what); };
  if (p.row_begin.empty() || p.row_begin.front() != 0 || p.row_begin.back() != n) bad("row boundaries");
  for (size_t i = 1; i < p.row_begin.size(); ++i)
    if (p.row_begin[i] < p.row_begin[i - 1] || p.row_begin[i] - p.row_begin[i - 1] > p.sequence_len)
      bad("row boundaries");
  for (size_t i = 0; i < p.sample_begin.size(); ++i)
    if (p.sample_begin[i] < 0 || p.sample_begin[i] >= n || (i && p.sample_begin[i] <= p.sample_begin[i - 1]))
      bad("sample boundaries");
  if (p.sequence_len < 2) bad("sequence_len");
}

// The entry at `path` for `key`; nullopt when there is none. Corrupt (or a read error) when the
// file is there but is not a whole, intact entry for this key.
// `mapped`: the token arrays are a read-only mapping of the file (streaming) when the entry's
// layout allows it (entries written since the header is padded to 8 bytes), else read into memory.
std::optional<Datasets> load_entry(const stdfs::path& path, const std::string& key, std::vector<std::string>* log,
                                   std::vector<std::string>* warnings, bool mapped) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    throw Unreadable(std::strerror(errno));
  }
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  struct stat st {};
  if (::fstat(::fileno(f), &st) != 0) throw Corrupt(std::string("cannot stat: ") + std::strerror(errno));
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderBytes + kDigestBytes) throw Corrupt("truncated");
  EntryReader r(f, size - kDigestBytes);
  char magic[8];
  uint32_t version = 0, reserved = 0;
  char stored_key[64];
  uint64_t meta_len = 0;
  r.read(magic, sizeof magic);
  if (std::memcmp(magic, kMagic, sizeof magic) != 0) throw Corrupt("not a prepared-data file");
  r.read(&version, sizeof version);
  r.read(&reserved, sizeof reserved);
  if (version != kFormatVersion)
    throw Corrupt("format version " + std::to_string(version) + ", expected " + std::to_string(kFormatVersion));
  r.read(stored_key, sizeof stored_key);
  if (std::string_view(stored_key, sizeof stored_key) != key) throw Corrupt("written for other data");
  r.read(&meta_len, sizeof meta_len);
  if (meta_len > r.left()) throw Corrupt("truncated");
  std::string meta_text(meta_len, '\0');
  r.read(meta_text.data(), meta_text.size());
  std::vector<MapAt> map_at;
  if (r.offset() % sizeof(int64_t) != 0) mapped = false;
  Datasets out;
  std::vector<std::string> lines, warned;
  try {
    const json meta = json::parse(meta_text);
    out.stats = stats_from_json(meta.at("stats").dump());
    lines = meta.at("log").get<std::vector<std::string>>();
    warned = meta.at("warnings").get<std::vector<std::string>>();
    out.train = read_part(r, meta.at("train"), mapped ? &map_at : nullptr);
    out.val = read_part(r, meta.at("val"), mapped ? &map_at : nullptr);
  } catch (const Corrupt&) { throw; } catch (const std::exception& e) {
    throw Corrupt("header: " + first_line(e.what()));
  }
  if (r.left() != 0) throw Corrupt("size does not match its header");
  const std::string computed = r.digest();
  char stored[kDigestBytes];
  EntryReader tail(f, kDigestBytes);
  tail.read(stored, sizeof stored, /*hash=*/false);
  if (std::string_view(stored, sizeof stored) != computed) throw Corrupt("checksum mismatch");
  if (!map_at.empty()) {
    std::shared_ptr<const fs::MappedFile> m;
    try {
      m = fs::map_file(path);
    } catch (const UserError& e) { throw Unreadable(e.what()); }
    if (m->size != size) throw Corrupt("changed while being read");
    for (const MapAt& a : map_at)
      *a.array = TokenArray(reinterpret_cast<const int32_t*>(m->data + a.offset), a.count, m);
  }
  check_part(*out.train, "train");
  check_part(*out.val, "validation");
  if (out.stats.train_rows != out.train->num_rows() || out.stats.val_rows != out.val->num_rows())
    throw Corrupt("stats do not match the rows");
  *log = std::move(lines);
  *warnings = std::move(warned);
  return out;
}

// ---- writing -------------------------------------------------------------------------------------

void write_entry(const stdfs::path& path, const std::string& key, const Datasets& d,
                 const std::vector<std::string>& log, const std::vector<std::string>& warnings) {
  std::string meta = json({{"stats", json::parse(stats_to_json(d.stats))},
                           {"log", log},
                           {"warnings", warnings},
                           {"train", part_meta(*d.train)},
                           {"val", part_meta(*d.val)}})
                         .dump();
  // Spaces after the JSON (still valid JSON) put the token arrays at 8-byte offsets, so that a
  // streaming run can map them in place.
  meta.resize((kHeaderBytes + meta.size() + 7) / 8 * 8 - kHeaderBytes, ' ');
  fs::AtomicFile f(path);
  Sha256 h;
  auto put = [&](const void* p, size_t n) {
    h.update(p, n);
    f.write(p, n);
  };
  const uint32_t version = kFormatVersion, reserved = 0;
  const uint64_t meta_len = meta.size();
  put(kMagic, sizeof kMagic);
  put(&version, sizeof version);
  put(&reserved, sizeof reserved);
  put(key.data(), key.size());
  put(&meta_len, sizeof meta_len);
  put(meta.data(), meta.size());
  for (const PackedData* p : {d.train.get(), d.val.get()}) {
    put(p->input_ids.data(), p->input_ids.size() * sizeof(int32_t));
    put(p->labels.data(), p->labels.size() * sizeof(int32_t));
    put(p->row_begin.data(), p->row_begin.size() * sizeof(int64_t));
    put(p->sample_begin.data(), p->sample_begin.size() * sizeof(int64_t));
  }
  const std::string digest = h.hex_digest();
  f.write(digest.data(), digest.size());
  f.commit();
}

}  // namespace

std::string stats_to_json(const DataStats& stats) {
  json j = json::object();
  visit_stats(stats, [&](const char* name, const auto& v) { j[name] = v; });
  return j.dump();
}

DataStats stats_from_json(const std::string& text) {
  const json j = json::parse(text);
  DataStats s;
  visit_stats(s, [&](const char* name, auto& v) { j.at(name).get_to(v); });
  return s;
}

std::string prepared_key(const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                         const std::string& tokenizer_digest) {
  KeyHasher k;
  for (const auto& [tag, list] : {std::pair{"datasets", &spec.datasets}, {"test_datasets", &spec.test_datasets}}) {
    k.add(tag, static_cast<int64_t>(list->size()));
    for (const auto& ds : *list) {
      k.add("type", ds.type);
      k.add("field", ds.field);
      k.add("field_instruction", ds.field_instruction);
      k.add("field_input", ds.field_input);
      k.add("field_output", ds.field_output);
      k.add("field_messages", ds.field_messages);
      k.add("message_field_role", ds.message_field_role);
      k.add("message_field_content", ds.message_field_content);
      k.add("field_prompt", ds.field_prompt);
      k.add("field_completion", ds.field_completion);
      // The bytes, not the names: of the file, or of each file a directory's split resolves to.
      if (!ds.ds_type.empty()) k.add("ds_type", ds.ds_type);
      const std::vector<DataFile> files = resolve_data_files(Source{ds.path, ds.split, ds.ds_type});
      if (std::filesystem::is_directory(ds.path)) {
        k.add("split", ds.split);
        k.add("files", static_cast<int64_t>(files.size()));
      }
      for (const DataFile& f : files) k.add("content", sha256_file(f.path));
    }
  }
  k.add("sequence_len", spec.sequence_len);
  k.add("sample_packing", spec.sample_packing);
  k.add("train_on_inputs", spec.train_on_inputs);
  k.add("skip_invalid", spec.skip_invalid);
  k.add("val_set_size", double_bits(spec.val_set_size));
  k.add("seed", std::to_string(spec.seed));
  k.add("chat_template", spec.chat_template);
  k.add("chat_template_kwargs", static_cast<int64_t>(spec.chat_template_kwargs.size()));
  for (const auto& [name, value] : spec.chat_template_kwargs) {
    k.add("kwarg", name);
    k.add("value", value);
  }
  k.add("tokenizer", tokenizer_digest);
  // The templates themselves: the tokenizer's files hold its own, this program the built-in ones.
  k.add("tokenizer_template", tokenizer.chat_template());
  for (const auto& [name, text] : tokenizer.named_chat_templates()) {
    k.add("named_template", name);
    k.add("text", text);
  }
  if (auto b = tok::ChatTemplate::builtin_source(spec.chat_template)) k.add("builtin_template", *b);
  return k.digest();
}

stdfs::path prepared_entry(const stdfs::path& cache_dir, const std::string& key) {
  return cache_dir / ("prepared-" + key + ".bin");
}

Datasets prepare_datasets(const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                          const std::string& tokenizer_digest, const stdfs::path& cache_dir, const LogFn& log,
                          const LogFn& warn) {
  // The data warnings go where build_datasets puts them, and are kept in the entry to be repeated
  // on a load.
  auto data_warning = [&warn](const std::string& w) {
    if (warn)
      warn(w);
    else
      std::fprintf(stderr, "qlora: warning: %s\n", w.c_str());
  };
  if (cache_dir.empty()) return build_datasets(spec, tokenizer, log, data_warning);
  auto say = [&](const std::string& s) {
    if (log) log(s);
  };
  auto complain = [&](const std::string& s) {
    if (warn) warn(s);
  };
  std::string key;
  try {
    key = prepared_key(spec, tokenizer, tokenizer_digest);
  } catch (const UserError&) {
    return build_datasets(spec, tokenizer, log, data_warning);  // a data file it cannot read: it says which
  }
  const stdfs::path entry = prepared_entry(cache_dir, key);
  try {
    std::vector<std::string> lines, warned;
    if (std::optional<Datasets> d = load_entry(entry, key, &lines, &warned, streams(spec))) {
      for (const auto& l : lines) say(l);
      for (const auto& w : warned) data_warning(w);
      say("data: loaded prepared data from " + entry.string());
      return std::move(*d);
    }
  } catch (const Corrupt& e) {
    complain(entry.string() + ": prepared data is corrupt (" + e.what() + "); rebuilding");
  } catch (const Unreadable& e) {
    complain(entry.string() + ": cannot read the prepared data (" + e.what() + "); rebuilding");
  }

  std::vector<std::string> lines, warned;
  Datasets d = build_datasets(
      spec, tokenizer,
      [&](const std::string& l) {
        lines.push_back(l);
        say(l);
      },
      [&](const std::string& w) {
        warned.push_back(w);
        data_warning(w);
      });
  std::error_code ec;
  stdfs::create_directories(cache_dir, ec);
  if (ec) {
    complain(cache_dir.string() + ": dataset_prepared_path: cannot create the directory (" + ec.message() +
             "); the prepared data is not cached");
    return d;
  }
  try {
    write_entry(entry, key, d, lines, warned);
    std::error_code size_ec;
    const auto bytes = stdfs::file_size(entry, size_ec);
    say("data: prepared data written to " + entry.string() + (size_ec ? "" : " (" + fs::format_bytes(bytes) + ")"));
  } catch (const UserError& e) { complain(std::string(e.what()) + "; the prepared data is not cached"); }
  return d;
}

}  // namespace qlora::data
