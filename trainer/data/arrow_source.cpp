// The only file that includes Arrow's headers (they are heavy).
#include "trainer/data/arrow_source.h"

#include <arrow/array.h>
#include <arrow/csv/api.h>
#include <arrow/io/file.h>
#include <arrow/ipc/reader.h>
#include <arrow/record_batch.h>
#include <arrow/type.h>
#include <arrow/util/float16.h>
#include <parquet/arrow/reader.h>
#include <parquet/exception.h>
#include <parquet/file_reader.h>
#include <parquet/metadata.h>

#include <fstream>

#include "trainer/common/error.h"
#include "trainer/unicode/utf8.h"

namespace qlora::data {

namespace {

using ojson = nlohmann::ordered_json;

// Arrow's message on one line, valid UTF-8 and not too long (a CSV message quotes the row).
std::string one_line(std::string m) {
  for (size_t at; (at = unicode::utf8_find_invalid(m)) != std::string::npos;) m[at] = '?';
  for (char& c : m)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  while (!m.empty() && m.back() == ' ') m.pop_back();
  if (m.size() > 300) {
    size_t cut = 300;
    while (cut > 0 && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;  // whole characters
    m = m.substr(0, cut) + "...";
  }
  return m;
}

template <class T>
T take(arrow::Result<T> r, const std::string& name, const char* what) {
  if (!r.ok()) user_error(name, ": ", what, ": ", one_line(r.status().message()));
  return std::move(r).ValueUnsafe();
}
void check(const arrow::Status& s, const std::string& name, const char* what) {
  if (!s.ok()) user_error(name, ": ", what, ": ", one_line(s.message()));
}

// Whether a record can hold values of `t`: null, booleans, integers, floats, strings, lists and
// structs of those, and dictionary-encoded values. "" when it can, else the offending type.
std::string unsupported(const arrow::DataType& t) {
  using arrow::Type;
  switch (t.id()) {
    case Type::NA:
    case Type::BOOL:
    case Type::INT8:
    case Type::INT16:
    case Type::INT32:
    case Type::INT64:
    case Type::UINT8:
    case Type::UINT16:
    case Type::UINT32:
    case Type::UINT64:
    case Type::HALF_FLOAT:
    case Type::FLOAT:
    case Type::DOUBLE:
    case Type::STRING:
    case Type::LARGE_STRING:
    case Type::STRING_VIEW: return "";
    case Type::LIST:
    case Type::LARGE_LIST:
    case Type::FIXED_SIZE_LIST:
    case Type::LIST_VIEW:
    case Type::LARGE_LIST_VIEW:
    case Type::STRUCT:
      for (const auto& f : t.fields())
        if (std::string u = unsupported(*f->type()); !u.empty()) return u;
      return "";
    case Type::DICTIONARY: return unsupported(*static_cast<const arrow::DictionaryType&>(t).value_type());
    default: return t.ToString();
  }
}

// Column and struct field names become JSON keys: they must be UTF-8.
void check_names(const arrow::Field& f, const std::string& name) {
  if (unicode::utf8_find_invalid(f.name()) != std::string::npos)
    user_error(name, ": a column or field name is not valid UTF-8 (", one_line(f.name()), ")");
  for (const auto& sub : f.type()->fields()) check_names(*sub, name);
}

void check_schema(const arrow::Schema& schema, const std::string& name) {
  for (const auto& f : schema.fields()) check_names(*f, name);
  for (const auto& f : schema.fields())
    if (std::string u = unsupported(*f->type()); !u.empty())
      user_error(name, ": column \"", f->name(), "\" has type ", f->type()->ToString(),
                 ", which a record cannot hold (", u == f->type()->ToString() ? "" : "it contains " + u + "; ",
                 "expected strings, numbers, booleans, lists or structs of them)");
}

struct Converter {
  const std::string& name;
  int64_t row = 0;  // file row, for messages

  std::string string_at(std::string_view v, const std::string& column) const {
    if (size_t at = unicode::utf8_find_invalid(v); at != std::string::npos)
      user_error(name, ": row ", row, ": column \"", column, "\": invalid UTF-8 at byte ", at);
    return std::string(v);
  }

  template <class ListArray>
  ojson list(const ListArray& a, int64_t i, const std::string& column) const {
    ojson out = ojson::array();
    const auto values = a.values();
    const int64_t begin = a.value_offset(i), n = a.value_length(i);
    for (int64_t k = 0; k < n; ++k) out.push_back(value(*values, begin + k, column));
    return out;
  }

  ojson value(const arrow::Array& a, int64_t i, const std::string& column) const {
    using arrow::Type;
    if (a.IsNull(i)) return nullptr;
    switch (a.type_id()) {
      case Type::NA: return nullptr;
      case Type::BOOL: return static_cast<const arrow::BooleanArray&>(a).Value(i);
      case Type::INT8: return static_cast<const arrow::Int8Array&>(a).Value(i);
      case Type::INT16: return static_cast<const arrow::Int16Array&>(a).Value(i);
      case Type::INT32: return static_cast<const arrow::Int32Array&>(a).Value(i);
      case Type::INT64: return static_cast<const arrow::Int64Array&>(a).Value(i);
      case Type::UINT8: return static_cast<const arrow::UInt8Array&>(a).Value(i);
      case Type::UINT16: return static_cast<const arrow::UInt16Array&>(a).Value(i);
      case Type::UINT32: return static_cast<const arrow::UInt32Array&>(a).Value(i);
      case Type::UINT64: return static_cast<const arrow::UInt64Array&>(a).Value(i);
      case Type::HALF_FLOAT:
        return arrow::util::Float16::FromBits(static_cast<const arrow::HalfFloatArray&>(a).Value(i)).ToDouble();
      case Type::FLOAT: return static_cast<double>(static_cast<const arrow::FloatArray&>(a).Value(i));
      case Type::DOUBLE: return static_cast<const arrow::DoubleArray&>(a).Value(i);
      case Type::STRING: return string_at(static_cast<const arrow::StringArray&>(a).GetView(i), column);
      case Type::LARGE_STRING: return string_at(static_cast<const arrow::LargeStringArray&>(a).GetView(i), column);
      case Type::STRING_VIEW: return string_at(static_cast<const arrow::StringViewArray&>(a).GetView(i), column);
      case Type::LIST: return list(static_cast<const arrow::ListArray&>(a), i, column);
      case Type::LARGE_LIST: return list(static_cast<const arrow::LargeListArray&>(a), i, column);
      case Type::FIXED_SIZE_LIST: return list(static_cast<const arrow::FixedSizeListArray&>(a), i, column);
      case Type::LIST_VIEW: return list(static_cast<const arrow::ListViewArray&>(a), i, column);
      case Type::LARGE_LIST_VIEW: return list(static_cast<const arrow::LargeListViewArray&>(a), i, column);
      case Type::STRUCT: {
        const auto& s = static_cast<const arrow::StructArray&>(a);
        ojson out = ojson::object();
        const auto& fields = s.struct_type()->fields();
        for (int f = 0; f < s.num_fields(); ++f) out[fields[f]->name()] = value(*s.field(f), i, column);
        return out;
      }
      case Type::DICTIONARY: {
        const auto& d = static_cast<const arrow::DictionaryArray&>(a);
        return value(*d.dictionary(), d.GetValueIndex(i), column);
      }
      default: user_error(name, ": row ", row, ": column \"", column, "\": unsupported type ", a.type()->ToString());
    }
  }
};

// Turns record batches into chunks of records.
class Emitter {
 public:
  Emitter(const std::string& name, const std::function<void(std::vector<Record>&)>& fn, size_t chunk)
      : name_(name), fn_(fn), chunk_(chunk) {}

  void add(const arrow::RecordBatch& batch) {
    check(batch.ValidateFull(), name_, "invalid data");
    const auto& schema = *batch.schema();
    if (!checked_) {
      check_schema(schema, name_);
      checked_ = true;
    }
    Converter conv{name_};
    for (int64_t i = 0; i < batch.num_rows(); ++i, ++row_) {
      conv.row = row_;
      ojson obj = ojson::object();
      for (int c = 0; c < batch.num_columns(); ++c) {
        const std::string& col = schema.field(c)->name();
        obj[col] = conv.value(*batch.column(c), i, col);
      }
      out_.push_back(Record{std::move(obj), name_ + ": row " + std::to_string(row_)});
      if (out_.size() >= chunk_) flush();
    }
  }
  void flush() {
    if (!out_.empty()) fn_(out_);
    out_.clear();
  }

 private:
  const std::string& name_;
  const std::function<void(std::vector<Record>&)>& fn_;
  size_t chunk_;
  std::vector<Record> out_;
  int64_t row_ = 0;
  bool checked_ = false;
};

void read_parquet(const std::string& name, Emitter& emit, size_t chunk) {
  auto file = take(arrow::io::ReadableFile::Open(name), name, "cannot open");
  std::unique_ptr<parquet::arrow::FileReader> reader;
  try {
    reader = take(parquet::arrow::OpenFile(file, arrow::default_memory_pool()), name, "not a readable Parquet file");
  } catch (const parquet::ParquetException& e) {
    user_error(name, ": not a readable Parquet file: ", one_line(e.what()));
  }
  reader->set_batch_size(static_cast<int64_t>(std::max<size_t>(chunk, 1)));
  std::shared_ptr<arrow::Schema> schema;
  check(reader->GetSchema(&schema), name, "cannot read the Parquet schema");
  check_schema(*schema, name);
  // One row group at a time: memory stays bounded by the largest row group.
  for (int g = 0; g < reader->num_row_groups(); ++g) {
    try {
      auto batches = take(reader->GetRecordBatchReader({g}), name, "cannot read row group");
      for (;;) {
        std::shared_ptr<arrow::RecordBatch> batch;
        check(batches->ReadNext(&batch), name, "cannot read a row group");
        if (!batch) break;
        emit.add(*batch);
      }
    } catch (const parquet::ParquetException& e) { user_error(name, ": row group ", g, ": ", one_line(e.what())); }
  }
}

void read_ipc(const std::string& name, Emitter& emit) {
  std::string magic(6, '\0');
  {
    std::ifstream in(name, std::ios::binary);
    in.read(magic.data(), 6);
    magic.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  }
  auto file = take(arrow::io::ReadableFile::Open(name), name, "cannot open");
  if (magic == "ARROW1") {  // the IPC file format (Feather v2)
    auto reader = take(arrow::ipc::RecordBatchFileReader::Open(file), name, "not a readable Arrow file");
    for (int b = 0; b < reader->num_record_batches(); ++b)
      emit.add(*take(reader->ReadRecordBatch(b), name, "cannot read a record batch"));
    return;
  }
  // The IPC stream format, as the datasets library writes its cache files.
  auto reader = take(arrow::ipc::RecordBatchStreamReader::Open(file), name,
                     "not a readable Arrow file (expected the IPC stream or file format)");
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    check(reader->ReadNext(&batch), name, "cannot read a record batch");
    if (!batch) break;
    emit.add(*batch);
  }
}

void read_csv(const std::string& name, char delimiter, Emitter& emit) {
  auto read = arrow::csv::ReadOptions::Defaults();
  read.use_threads = false;
  auto parse = arrow::csv::ParseOptions::Defaults();
  parse.delimiter = delimiter;
  auto convert = arrow::csv::ConvertOptions::Defaults();
  // Every value is text (our formats read text fields); missing values are null, spelled as
  // pandas spells them (the datasets library reads CSV with pandas).
  convert.default_column_type = arrow::utf8();
  convert.strings_can_be_null = true;
  convert.null_values = {"",     "#N/A", "#N/A N/A", "#NA",  "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                         "<NA>", "N/A",  "NA",       "NULL", "NaN",     "None",     "n/a",  "nan",  "null"};
  auto file = take(arrow::io::ReadableFile::Open(name), name, "cannot open");
  auto reader = take(arrow::csv::StreamingReader::Make(arrow::io::default_io_context(), file, read, parse, convert),
                     name, "malformed CSV");
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    check(reader->ReadNext(&batch), name, "malformed CSV");
    if (!batch) break;
    emit.add(*batch);
  }
}

}  // namespace

void read_arrow_records(const DataFile& file, const std::function<void(std::vector<Record>&)>& fn, size_t chunk) {
  const std::string name = file.path.string();
  std::error_code ec;
  if (std::filesystem::file_size(file.path, ec) == 0 && !ec) return;  // empty: the caller reports an empty dataset
  Emitter emit(name, fn, chunk);
  switch (file.kind) {
    case FileKind::parquet: read_parquet(name, emit, chunk); break;
    case FileKind::arrow: read_ipc(name, emit); break;
    case FileKind::csv: read_csv(name, ',', emit); break;
    case FileKind::tsv: read_csv(name, '\t', emit); break;
    case FileKind::json: user_error(name, ": not an Arrow, Parquet or CSV file");
  }
  emit.flush();
}

uint64_t parquet_data_bytes(const std::filesystem::path& file) {
  try {
    auto reader = parquet::ParquetFileReader::OpenFile(file.string(), /*memory_map=*/false);
    const std::shared_ptr<parquet::FileMetaData> meta = reader->metadata();
    uint64_t bytes = 0;
    for (int g = 0; g < meta->num_row_groups(); ++g)
      bytes += static_cast<uint64_t>(std::max<int64_t>(meta->RowGroup(g)->total_byte_size(), 0));
    return bytes;
  } catch (const std::exception&) { return 0; }
}

}  // namespace qlora::data
