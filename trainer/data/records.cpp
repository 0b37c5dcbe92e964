// JSON Lines / JSON array reading with "path:line: ..." errors.
#include "trainer/data/records.h"

#include <fstream>
#include <iterator>
#include <memory>

#include "trainer/common/ascii.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/data/arrow_source.h"
#include "trainer/data/gzip_stream.h"
#include "trainer/unicode/utf8.h"

namespace qlora::data {

namespace stdfs = std::filesystem;

namespace {

using ojson = nlohmann::ordered_json;

// nlohmann's message without its "[json.exception.parse_error.101] parse error at line 1, " prefix.
std::string parse_message(const nlohmann::json::exception& e, bool keep_column) {
  std::string m = e.what();
  size_t p = m.find("] ");
  if (p != std::string::npos) m = m.substr(p + 2);
  if (m.starts_with("parse error at line ")) {
    size_t comma = m.find(", ");
    if (comma != std::string::npos) m = m.substr(comma + 2);  // "column 8: syntax error ..."
  }
  if (!keep_column && m.starts_with("column ")) {
    size_t colon = m.find(": ");
    if (colon != std::string::npos) m = m.substr(colon + 2);
  }
  if (m.starts_with("parse error: ")) m = m.substr(13);
  return "invalid JSON: " + m;
}

std::string invalid_utf8(std::string_view line, size_t at) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "invalid UTF-8 (byte 0x%02X at column %zu)", static_cast<unsigned char>(line[at]),
                at + 1);
  return buf;
}

size_t line_of(const std::string& text, size_t byte) {
  return 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + std::min(byte, text.size()), '\n'));
}

// Start offsets of the top-level elements of a JSON array text (a light scanner: strings and
// nesting only); the full parse validates the text.
std::vector<size_t> array_element_offsets(const std::string& text, size_t open) {
  std::vector<size_t> starts;
  int depth = 0;
  bool in_str = false, esc = false, want_value = false;
  for (size_t i = open; i < text.size(); ++i) {
    char c = text[i];
    if (in_str) {
      if (esc)
        esc = false;
      else if (c == '\\')
        esc = true;
      else if (c == '"')
        in_str = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (depth == 1 && want_value && c != ']') {
      starts.push_back(i);
      want_value = false;
    }
    if (c == '"') {
      in_str = true;
    } else if (c == '[' || c == '{') {
      if (++depth == 1) want_value = true;
    } else if (c == ']' || c == '}') {
      if (--depth == 0) break;
    } else if (c == ',' && depth == 1) {
      want_value = true;
    }
  }
  return starts;
}

// Reads one line (without its '\n') into `line`; false at the end of the input. A line longer
// than `limit` bytes is read to its end but not kept: `*too_long` says so and `*length` has its
// length, so one huge line costs no more memory than the limit.
bool read_line(std::istream& in, std::string& line, size_t limit, bool* too_long, size_t* length) {
  line.clear();
  *too_long = false;
  *length = 0;
  char buf[1 << 16];
  bool any = false;
  for (;;) {
    in.getline(buf, sizeof buf);
    const auto n = static_cast<size_t>(in.gcount());
    const bool full = in.fail() && !in.eof() && n == sizeof buf - 1;  // no '\n' within the buffer yet
    if (n == 0 && !any && in.fail()) return false;
    any = true;
    const size_t kept = full || in.eof() ? n : n - 1;  // gcount counts the extracted '\n'
    *length += kept;
    if (*length > limit) {
      *too_long = true;
      line.clear();
    } else {
      line.append(buf, kept);
    }
    if (!full) {
      in.clear(in.eof() ? std::ios::eofbit : std::ios::goodbit);
      return true;
    }
    in.clear();  // a full buffer set failbit; the line goes on
  }
}

}  // namespace

std::string json_type(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::object: return "object";
    case ojson::value_t::array: return "array";
    case ojson::value_t::string: return "string";
    case ojson::value_t::boolean: return "boolean";
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned:
    case ojson::value_t::number_float: return "number";
    default: return "value";
  }
}

namespace {

// JSON Lines or a JSON array, plain or gzip-compressed.
void read_json(const DataFile& file, bool skip_invalid, int64_t* skipped,
               const std::function<void(std::vector<Record>&)>& fn, size_t chunk) {
  const stdfs::path& path = file.path;
  const std::string name = path.string();
  auto open = [&]() -> std::unique_ptr<std::istream> {
    if (file.gzip) return open_gzip(path);
    auto f = std::make_unique<std::ifstream>(path, std::ios::binary);
    if (!*f) user_error(name, ": cannot open dataset file");
    return f;
  };
  std::unique_ptr<std::istream> in_ptr = open();
  std::istream& in = *in_ptr;
  auto bad = [&](size_t line, const std::string& what) {
    if (!skip_invalid) user_error(name, ":", line, ": ", what);
    if (skipped) ++*skipped;
  };

  // Peek at the first non-blank character (after a UTF-8 BOM) to pick the format.
  std::string ext = file.gzip ? path.stem().extension().string() : path.extension().string();
  char first = 0;
  {
    std::string head(4096, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<size_t>(in.gcount()));
    size_t i = head.starts_with("\xEF\xBB\xBF") ? 3 : 0;
    while (i < head.size() && ascii_is_space(head[i])) ++i;
    if (i < head.size()) first = head[i];
    in.clear();
    in.seekg(0);
  }
  if (file.gzip) {  // no seeking back in a compressed stream: start again
    in_ptr = open();
  }
  std::istream& in2 = *in_ptr;
  if (first == 0) return;  // empty file: the caller reports an empty dataset

  std::vector<Record> batch;
  auto flush = [&] {
    if (!batch.empty()) fn(batch);
    batch.clear();
  };

  if (first == '[' && !ext.starts_with(".jsonl")) {
    std::string text;
    if (file.gzip) {
      text.assign(std::istreambuf_iterator<char>(in2), std::istreambuf_iterator<char>());
    } else {
      text = fs::read_file(path);
    }
    size_t bom = text.starts_with("\xEF\xBB\xBF") ? 3 : 0;
    if (size_t at = unicode::utf8_find_invalid(text); at != std::string::npos) {
      size_t line_start = text.rfind('\n', at == 0 ? 0 : at - 1);
      line_start = line_start == std::string::npos ? 0 : line_start + 1;
      user_error(name, ":", line_of(text, at), ": ",
                 invalid_utf8(std::string_view(text).substr(line_start), at - line_start));
    }
    ojson all;
    try {
      all = ojson::parse(text.begin() + bom, text.end());
    } catch (const nlohmann::json::parse_error& e) {
      user_error(name, ":", line_of(text, e.byte == 0 ? 0 : e.byte - 1 + bom), ": ", parse_message(e, false));
    } catch (const nlohmann::json::exception& e) {  // a number out of range (1e400): no position given
      user_error(name, ": ", parse_message(e, false));
    }
    std::vector<size_t> starts = array_element_offsets(text, text.find('['));
    for (size_t i = 0; i < all.size(); ++i) {
      size_t line = i < starts.size() ? line_of(text, starts[i]) : 1;
      if (!all[i].is_object()) {
        bad(line, "expected a JSON object, got " + json_type(all[i]));
        continue;
      }
      batch.push_back(Record{std::move(all[i]), name + ":" + std::to_string(line)});
      if (batch.size() >= chunk) flush();
    }
    flush();
    return;
  }

  std::string line;
  size_t lineno = 0;
  bool too_long = false;
  size_t length = 0;
  while (read_line(in2, line, kMaxLineBytes, &too_long, &length)) {
    ++lineno;
    if (too_long) {
      bad(lineno, "the line is " + std::to_string(length) + " bytes long; a record may have at most " +
                      std::to_string(kMaxLineBytes >> 20) + " MiB");
      continue;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (lineno == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);
    if (std::all_of(line.begin(), line.end(), ascii_is_space)) continue;
    if (size_t at = unicode::utf8_find_invalid(line); at != std::string::npos) {
      bad(lineno, invalid_utf8(line, at));
      continue;
    }
    ojson j;
    try {
      j = ojson::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
      bad(lineno, parse_message(e, true));
      continue;
    }
    if (!j.is_object()) {
      bad(lineno, "expected a JSON object, got " + json_type(j));
      continue;
    }
    batch.push_back(Record{std::move(j), name + ":" + std::to_string(lineno)});
    if (batch.size() >= chunk) flush();
  }
  flush();
}

}  // namespace

void read_records(const Source& source, bool skip_invalid, int64_t* skipped,
                  const std::function<void(std::vector<Record>&)>& fn, size_t chunk) {
  for (const DataFile& file : resolve_data_files(source)) {
    if (file.kind == FileKind::json)
      read_json(file, skip_invalid, skipped, fn, chunk);
    else
      read_arrow_records(file, fn, chunk);
  }
}

void read_records(const std::filesystem::path& path, bool skip_invalid, int64_t* skipped,
                  const std::function<void(std::vector<Record>&)>& fn, size_t chunk) {
  read_records(Source{path}, skip_invalid, skipped, fn, chunk);
}

}  // namespace qlora::data
