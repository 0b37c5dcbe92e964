// trainer/io/safetensors + hf_checkpoint against the `safetensors` library (the judge).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <limits>
#include <span>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/safetensors.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

std::string to_hex(const void* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    s += d[b[i] >> 4];
    s += d[b[i] & 15];
  }
  return s;
}

class Safetensors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new stdfs::path(test::temp_dir("fixtures"));
    test::ProcResult r = test::run_python("safetensors_ref.py", {"write", dir_->string()});
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static stdfs::path* dir_;
};
stdfs::path* Safetensors::dir_ = nullptr;

// Writes a raw safetensors file from a header string and a data buffer.
void write_raw(const stdfs::path& p, const std::string& header, const std::string& data, int64_t len_override = -1) {
  std::ofstream o(p, std::ios::binary);
  uint64_t n = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  o.write(reinterpret_cast<const char*>(&n), 8);
  o << header << data;
}

}  // namespace

TEST_F(Safetensors, ReadsEveryDtypeTheLibraryWrites) {
  io::SafetensorsFile f(*dir_ / "ref.safetensors");
  auto exp = nlohmann::json::parse(fs::read_file(*dir_ / "ref.json"));
  ASSERT_EQ(f.tensors().size(), exp.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hello");
  for (auto it = exp.begin(); it != exp.end(); ++it) {
    SCOPED_TRACE(it.key());
    ASSERT_TRUE(f.contains(it.key()));
    at::Tensor t = f.tensor(it.key());
    EXPECT_EQ(t.sizes().vec(), it.value()["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(to_hex(t.data_ptr(), t.nbytes()), it.value()["hex"].get<std::string>());
    auto b = f.bytes(it.key());
    EXPECT_EQ(b.size(), t.nbytes());
  }
  EXPECT_EQ(f.tensor("bf16").scalar_type(), at::kBFloat16);
  EXPECT_EQ(f.tensor("bool").scalar_type(), at::kBool);
  EXPECT_EQ(f.tensor("scalar").dim(), 0);
  EXPECT_THROW(f.tensor("nope"), UserError);
}

TEST_F(Safetensors, LibraryReadsWhatWeWrite) {
  auto p = test::temp_dir() / "ours.safetensors";
  io::SafetensorsWriter w;
  std::map<std::string, at::Tensor> ts = {
      {"a.weight", at::randn({5, 3})},
      {"b", at::randn({7}).to(at::kBFloat16)},
      {"c", at::arange(10, at::kLong)},
      {"d", at::randn({2, 2}).to(at::kHalf)},
      {"empty", at::zeros({0, 4})},
      {"s", at::scalar_tensor(2.0)},
      {"u8", at::randint(0, 255, {11}, at::kByte)},
      {"tr", at::randn({4, 6}).t()},  // non-contiguous input
  };
  for (auto& [k, v] : ts) w.add(k, v);
  w.set_metadata("extra", "1");
  w.write(p);
  // header padded to a multiple of 8
  std::string raw = fs::read_file(p);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.substr(8, 16), "{\"__metadata__\":");

  test::ProcResult r = test::run_python("safetensors_ref.py", {"check", p.string()});
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("metadata {\"extra\": \"1\", \"format\": \"pt\"}"), std::string::npos) << r.output;
  for (auto& [k, v] : ts) {
    at::Tensor c = v.contiguous();
    std::string hex = c.numel() ? to_hex(c.data_ptr(), c.nbytes()) : "-";
    EXPECT_NE(r.output.find(k + " "), std::string::npos) << k;
    EXPECT_NE(r.output.find(hex), std::string::npos) << k << "\n" << r.output;
  }
  // and we read our own file back
  io::SafetensorsFile f(p);
  for (auto& [k, v] : ts) EXPECT_TRUE(at::equal(f.tensor(k), v.contiguous())) << k;
}

TEST_F(Safetensors, ShardedCheckpointWithIndex) {
  io::HfCheckpoint ck(*dir_ / "sharded");
  EXPECT_GT(ck.files().size(), 1u);
  auto exp = nlohmann::json::parse(fs::read_file(*dir_ / "sharded.json"));
  ASSERT_EQ(ck.names().size(), exp.size());
  for (auto it = exp.begin(); it != exp.end(); ++it) {
    at::Tensor t = ck.tensor(it.key());
    EXPECT_EQ(to_hex(t.data_ptr(), t.nbytes()), it.value().get<std::string>()) << it.key();
  }
  EXPECT_EQ(ck.total_bytes(), 6u * 64 * 64 * 4);
}

TEST_F(Safetensors, MalformedFilesAreRejectedLikeTheLibraryDoes) {
  auto d = test::temp_dir();
  std::string four(4, '\0');
  const std::string ok_hdr = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  struct Case {
    std::string name, header, data;
    int64_t len_override;
    std::string msg;  // expected fragment of our error
  };
  std::vector<Case> cases = {
      {"hole", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'), -1, "hole"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
       std::string(6, '\0'), -1, "overlap"},
      {"size", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four, -1, "need"},
      {"trailing", ok_hdr, four + "xx", -1, "trailing"},
      {"truncated", ok_hdr, "\0\0", -1, "truncated"},
      {"dup",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       std::string(8, '\0'), -1, "duplicate"},
      {"badjson", R"({"a":{"dtype":"F32",)", four, -1, "JSON"},
      {"dtype", R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", four, -1, "dtype"},
      {"hugelen", ok_hdr, four, 200'000'000, "limit"},
      {"pastend", ok_hdr, four, 5000, "past the end"},
  };
  std::vector<std::string> paths;
  for (const auto& c : cases) {
    auto p = d / (c.name + ".safetensors");
    write_raw(p, c.header, c.data, c.len_override);
    paths.push_back(p.string());
    try {
      io::SafetensorsFile f(p);
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(c.msg), std::string::npos) << c.name << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    }
  }
  // The reference library rejects every one of them too.
  paths.insert(paths.begin(), "reject");
  test::ProcResult r = test::run_python("safetensors_ref.py", paths);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const auto& c : cases) EXPECT_NE(r.output.find(c.name + ".safetensors rejected"), std::string::npos) << r.output;
}

TEST(HfCheckpoint, RefusesPickleWithHowToConvert) {
  auto d = test::temp_dir();
  std::ofstream(d / "pytorch_model.bin") << "not really";
  try {
    io::HfCheckpoint ck(d);
    FAIL();
  } catch (const UserError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("pytorch_model.bin"), std::string::npos) << m;
    EXPECT_NE(m.find("save_pretrained"), std::string::npos) << m;
  }
  EXPECT_THROW(io::HfCheckpoint(d / "missing"), UserError);
}

TEST(HfCheckpoint, IndexNamingMissingShardIsAnError) {
  auto d = test::temp_dir();
  std::ofstream(d / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":4},"weight_map":{"w":"model-00001-of-00002.safetensors"}})";
  try {
    io::HfCheckpoint ck(d);
    FAIL();
  } catch (const UserError& e) { EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what(); }
}

// Shapes whose element count or byte size does not fit 64 bits (even beside a zero dimension,
// where the byte size is 0), dimensions past int64, offsets past the buffer: refused when the
// header is read, naming the file and the tensor, never later as an internal error.
TEST(SafetensorsHeader, ShapesWhoseSizeOverflowsAreRejectedWhenTheHeaderIsRead) {
  auto d = test::temp_dir();
  struct Case {
    std::string name, header, data, msg;
  };
  const std::string p62 = "4611686018427387904";  // 2^62
  const std::string p63 = "9223372036854775808";  // 2^63, past int64
  std::vector<Case> cases = {
      // 8 * (2^62)^3 wraps a 128-bit product to 0, which "matches" data_offsets [0, 0].
      {"wrap128", R"({"t":{"dtype":"F64","shape":[)" + p62 + "," + p62 + "," + p62 + R"(],"data_offsets":[0,0]}})", "",
       "too many elements"},
      {"zero_beside_huge", R"({"t":{"dtype":"F32","shape":[0,)" + p62 + "," + p62 + R"(],"data_offsets":[0,0]}})", "",
       "too many elements"},
      {"dim_past_int64", R"({"t":{"dtype":"U8","shape":[0,)" + p63 + R"(],"data_offsets":[0,0]}})", "",
       "non-negative integers"},
      {"bytes_overflow", R"({"t":{"dtype":"F32","shape":[)" + p62 + R"(],"data_offsets":[0,4]}})", std::string(4, '\0'),
       "overflows a 64-bit byte size"},
      {"negative_dim", R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0'),
       "non-negative integers"},
      {"offset_past_buffer", R"({"t":{"dtype":"U8","shape":[)" + p62 + R"(],"data_offsets":[0,)" + p62 + "]}}",
       std::string(4, '\0'), "run past the"},
  };
  for (const auto& c : cases) {
    auto p = d / (c.name + ".safetensors");
    write_raw(p, c.header, c.data);
    try {
      io::SafetensorsFile f(p);
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const UserError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(c.msg), std::string::npos) << c.name << ": " << m;
      EXPECT_NE(m.find(p.string() + ": tensor \"t\""), std::string::npos) << c.name << ": " << m;
    }
  }
  // A very long tensor name is echoed shortened, not in full.
  const std::string long_name(5000, 'x');
  write_raw(d / "long.safetensors", "{\"" + long_name + R"(":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
            std::string(4, '\0'));
  try {
    io::SafetensorsFile f(d / "long.safetensors");
    ADD_FAILURE() << "accepted";
  } catch (const UserError& e) {
    EXPECT_LT(std::string(e.what()).size(), 400u) << e.what();
    EXPECT_NE(std::string(e.what()).find("(5000 bytes)"), std::string::npos) << e.what();
  }
}

// Non-finite weights: every float dtype's NaN and infinity is found at its element, in one pass
// over the bytes; HfCheckpoint refuses to hand out such a tensor, naming the file and tensor.
TEST(HfCheckpoint, NonFiniteWeightsAreRefusedNamingFileTensorAndElement) {
  for (at::ScalarType st : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    SCOPED_TRACE(c10::toString(st));
    at::Tensor t = at::randn({3000}).to(st);
    const std::string dt = st == at::kFloat ? "F32" : st == at::kBFloat16 ? "BF16" : st == at::kHalf ? "F16" : "F64";
    auto bytes = [&] { return std::span<const uint8_t>(static_cast<const uint8_t*>(t.data_ptr()), t.nbytes()); };
    EXPECT_FALSE(io::find_nonfinite(dt, bytes()).has_value());
    t[2500] = std::numeric_limits<double>::infinity();
    EXPECT_EQ(io::find_nonfinite(dt, bytes()).value_or(""), "Inf at element 2500");
    t[17] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_EQ(io::find_nonfinite(dt, bytes()).value_or(""), "NaN at element 17");
    // The largest finite value is not flagged.
    t[17] = 1;
    t[2500] = st == at::kHalf ? 65504.0 : st == at::kBFloat16 ? 3.3895313892515355e38 : 1e38;
    EXPECT_FALSE(io::find_nonfinite(dt, bytes()).has_value()) << *io::find_nonfinite(dt, bytes());
  }
  EXPECT_FALSE(io::find_nonfinite("I32", {}).has_value());

  auto d = test::temp_dir();
  at::Tensor w = at::randn({4, 8}).to(at::kBFloat16);
  w.view({-1})[17] = std::numeric_limits<float>::quiet_NaN();
  io::SafetensorsWriter sw;
  sw.add("model.layers.0.mlp.up_proj.weight", w);
  sw.add("model.norm.weight", at::ones({8}));
  sw.write(d / "model.safetensors");
  io::HfCheckpoint ck(d);
  EXPECT_NO_THROW(ck.tensor("model.norm.weight"));
  try {
    ck.tensor("model.layers.0.mlp.up_proj.weight");
    ADD_FAILURE() << "accepted";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), (d / "model.safetensors").string() +
                                         ": model.layers.0.mlp.up_proj.weight: non-finite values (NaN at element 17)");
  }
}
