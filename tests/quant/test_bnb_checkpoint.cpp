// `qlora quantize` and the bitsandbytes 4-bit state-dict entries (trainer/quant/), judged by
// transformers + bitsandbytes on the CPU (tests/python/bnb_checkpoint.py): tiny random Llama,
// Qwen2 (biases) and Phi-3 (fused projections) models are made at test time, quantized by us and
// by transformers itself, and both are loaded with from_pretrained.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "kernels/ops.h"
#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/safetensors.h"
#include "trainer/quant/bnb_nf4.h"
#include "trainer/quant/quantize_checkpoint.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

bool bits_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

struct Arch {
  std::string name;
  int64_t linears = 0;  // 4-bit linear modules of its two layers
  stdfs::path base, ours_dq, ours_nodq, work;
  test::ProcResult q_dq, q_nodq, compare;
  nlohmann::json report;
};

class BnbCheckpoint : public ::testing::Test {
 protected:
  static inline std::map<std::string, Arch> archs;

  static void SetUpTestSuite() {
    for (const auto& [name, linears] : {std::pair<const char*, int64_t>{"llama", 14}, {"qwen2", 14}, {"phi3", 8}}) {
      Arch a;
      a.name = name;
      a.linears = linears;
      a.work = test::temp_dir(std::string("bnb_ckpt_") + name);
      a.base = a.work / "base";
      a.ours_dq = a.work / "ours_dq";
      a.ours_nodq = a.work / "ours_nodq";
      test::run_python("bnb_checkpoint.py", {"make", a.base.string(), name});
      a.q_dq = test::run_qlora("quantize --model " + test::quote(a.base.string()) + " --out " +
                               test::quote(a.ours_dq.string()));
      a.q_nodq = test::run_qlora("quantize --model " + test::quote(a.base.string()) + " --out " +
                                 test::quote(a.ours_nodq.string()) + " --double-quant false");
      if (a.q_dq.code == 0 && a.q_nodq.code == 0) {
        const stdfs::path rp = a.work / "report.json";
        a.compare = test::run_python("bnb_checkpoint.py", {"compare", a.base.string(), a.ours_dq.string(),
                                                           a.ours_nodq.string(), a.work.string(), rp.string()});
        if (a.compare.code == 0) a.report = nlohmann::json::parse(std::ifstream(rp));
      }
      archs[name] = std::move(a);
    }
  }

  static const Arch& arch(const std::string& n) { return archs.at(n); }
};

TEST_F(BnbCheckpoint, QuantizeCommandSucceeds) {
  for (const auto& [name, a] : archs) {
    SCOPED_TRACE(name);
    EXPECT_EQ(a.q_dq.code, 0) << a.q_dq.output;
    EXPECT_EQ(a.q_nodq.code, 0) << a.q_nodq.output;
    EXPECT_NE(a.q_dq.output.find("quantized " + std::to_string(a.linears) + " linear weights"), std::string::npos)
        << a.q_dq.output;
    EXPECT_TRUE(stdfs::exists(a.ours_dq / "model.safetensors"));
    EXPECT_TRUE(stdfs::exists(a.ours_dq / "generation_config.json"));  // other files copied
    ASSERT_EQ(a.compare.code, 0) << a.compare.output;
  }
}

// Same config entry, keys, dtypes, shapes and quant_state JSON as transformers' own save_pretrained.
TEST_F(BnbCheckpoint, LayoutEqualsTransformersOwn) {
  for (const auto& [name, a] : archs) {
    ASSERT_FALSE(a.report.is_null()) << a.compare.output;
    for (const char* tag : {"dq", "nodq"}) {
      SCOPED_TRACE(name + std::string(" ") + tag);
      const nlohmann::json& r = a.report[tag];
      EXPECT_EQ(r["linear4bit_modules"], a.linears);
      EXPECT_EQ(r["linear4bit_modules"], r["ref_linear4bit_modules"]);
      EXPECT_TRUE(r["quantization_config_equal"].get<bool>())
          << r["quantization_config_ours"].dump() << " vs " << r["quantization_config_ref"].dump();
      EXPECT_TRUE(r["keys_equal"].get<bool>()) << r["keys_only_ours"].dump() << " / " << r["keys_only_ref"].dump();
      EXPECT_TRUE(r["dtype_shape_mismatch"].empty()) << r["dtype_shape_mismatch"].dump();
      EXPECT_TRUE(r["json_diff"].empty()) << r["json_diff"].dump();  // same dict, same bytes
      // Non-code tensors (embeddings, norms, lm_head, biases, quant maps, nested absmax) identical.
      EXPECT_TRUE(r["other_tensor_diff"].empty()) << r["other_tensor_diff"].dump();
    }
  }
}

// Without double quantization our checkpoint IS transformers' own: same codes, same float
// absmax, bit-identical logits. (A code may differ only at a midpoint near-tie, which random
// weights of this size essentially never produce; then the logits are only close.)
TEST_F(BnbCheckpoint, NoDoubleQuantLogitsEqualTransformersOwn) {
  for (const auto& [name, a] : archs) {
    SCOPED_TRACE(name);
    ASSERT_FALSE(a.report.is_null()) << a.compare.output;
    const nlohmann::json& r = a.report["nodq"];
    EXPECT_GT(r["n_codes"].get<int64_t>(), 300000);
    EXPECT_LE(r["code_diff"].get<int64_t>(), 2);
    if (r["code_diff"] == 0) {
      EXPECT_TRUE(r["logits_bit_equal"].get<bool>()) << "max abs diff " << r["logits_max_abs_diff"];
    } else {
      EXPECT_LT(r["logits_rel_norm_diff"].get<double>(), 1e-3);
    }
  }
}

// With double quantization the 4-bit codes, offset and nested absmax are transformers' own; the
// 8-bit absmax codes differ where bitsandbytes' CPU quantizer (coarse lookup table) does not pick
// the nearest map entry (ours does, like its CUDA kernel; tests/kernels/test_nf4_bnb.cpp). Giving
// transformers' model our 8-bit codes makes its logits bit-identical to ours: nothing else differs.
TEST_F(BnbCheckpoint, DoubleQuantDiffersOnlyInBnbCpuEightBitCodes) {
  for (const auto& [name, a] : archs) {
    SCOPED_TRACE(name);
    ASSERT_FALSE(a.report.is_null()) << a.compare.output;
    const nlohmann::json& r = a.report["dq"];
    EXPECT_LE(r["code_diff"].get<int64_t>(), 2);
    EXPECT_LE(r["q8_diff"].get<double>(), 0.01 * r["q8_total"].get<double>())
        << r["q8_diff"] << " of " << r["q8_total"];
    EXPECT_EQ(r["swapped_modules"], a.linears);
    if (r["code_diff"] == 0) {
      EXPECT_TRUE(r["logits_bit_equal_after_swapping_8bit_codes"].get<bool>())
          << "max abs diff " << r["logits_max_abs_diff_after_swap"];
    }
    EXPECT_LT(r["logits_rel_norm_diff"].get<double>(), 1e-2);
    std::printf(
        "[bnb_ckpt] %s dq: 8-bit codes differ %s of %s; logits rel diff %.2e (bit-equal: %s; after giving "
        "transformers our 8-bit codes: %s)\n",
        name.c_str(), r["q8_diff"].dump().c_str(), r["q8_total"].dump().c_str(),
        r["logits_rel_norm_diff"].get<double>(), r["logits_bit_equal"].dump().c_str(),
        r["logits_bit_equal_after_swapping_8bit_codes"].dump().c_str());
  }
}

// Our reader on transformers' own checkpoints: dequantizing what we read equals bitsandbytes'
// dequantization bit for bit.
TEST_F(BnbCheckpoint, ReaderMatchesBitsandbytesOnTransformersCheckpoints) {
  for (const auto& [name, a] : archs) {
    SCOPED_TRACE(name);
    ASSERT_FALSE(a.report.is_null()) << a.compare.output;
    io::SafetensorsFile deq(a.work / "bnb_dequant.safetensors");
    int checked = 0;
    for (const char* tag : {"dq", "nodq"}) {
      io::HfCheckpoint ref(a.work / (std::string("ref_") + tag));
      const std::vector<std::string> mods = quant::bnb_nf4_modules(ref);
      EXPECT_EQ(static_cast<int64_t>(mods.size()), a.linears);
      for (const std::string& m : mods) {
        kernels::NF4Tensor w = quant::read_bnb_nf4(ref, m);
        EXPECT_EQ(w.double_quant(), std::string(tag) == "dq");
        EXPECT_EQ(w.dtype, at::kBFloat16);
        at::Tensor mine = kernels::nf4_dequantize(w, at::kFloat);
        EXPECT_TRUE(bits_equal(mine, deq.tensor(std::string(tag) + ":" + m))) << m;
        ++checked;
      }
    }
    EXPECT_EQ(checked, 2 * a.linears);
  }
}

// Writer -> reader round trip, odd element counts and every block size.
TEST(BnbNf4, RoundTrip) {
  const stdfs::path dir = test::temp_dir("bnb_roundtrip");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(std::random_device{}());
  io::SafetensorsWriter w;
  std::vector<std::pair<std::string, kernels::NF4Tensor>> ws;
  int i = 0;
  for (int64_t bs : {32, 64, 4096}) {
    for (bool dq : {true, false}) {
      for (at::ScalarType st : {at::kBFloat16, at::kHalf, at::kFloat}) {
        const std::string p = "model.layers." + std::to_string(i++) + ".mlp.up_proj";
        ws.emplace_back(p, kernels::nf4_quantize((at::randn({37, 51}, g) * 0.1).to(st), bs, dq));
        quant::add_bnb_nf4(w, p, ws.back().second);
      }
    }
  }
  w.write(dir / "model.safetensors");
  io::HfCheckpoint ck(dir);
  EXPECT_EQ(quant::bnb_nf4_modules(ck).size(), ws.size());
  for (const auto& [p, t] : ws) {
    SCOPED_TRACE(p);
    EXPECT_EQ(ck.info(p + ".weight").shape, (std::vector<int64_t>{(37 * 51 + 1) / 2, 1}));
    kernels::NF4Tensor r = quant::read_bnb_nf4(ck, p);
    EXPECT_EQ(r.shape, t.shape);
    EXPECT_EQ(r.blocksize, t.blocksize);
    EXPECT_EQ(r.dtype, t.dtype);
    EXPECT_TRUE(bits_equal(r.packed, t.packed));
    EXPECT_TRUE(bits_equal(r.absmax, t.absmax));
    EXPECT_EQ(r.double_quant(), t.double_quant());
    if (t.double_quant()) {
      EXPECT_TRUE(bits_equal(r.nested_absmax, t.nested_absmax));
      EXPECT_EQ(std::memcmp(&r.nested_offset, &t.nested_offset, 4), 0);
    }
    EXPECT_TRUE(bits_equal(kernels::nf4_dequantize(r, at::kFloat), kernels::nf4_dequantize(t, at::kFloat)));
  }
}

// nested_offset is written as Python writes it (so the quant_state bytes equal transformers').
TEST(BnbNf4, FloatReprMatchesPython) {
  std::mt19937_64 rng(std::random_device{}());
  std::vector<float> vs = {0.f,     -0.f,          1.f,      0.5f,        1e-5f,   1e-4f,       1.5e-5f, 123.f, 1e16f,
                           1.5e16f, 3.4028235e38f, 1.4e-45f, 0.13025284f, 0.0001f, 0.00012345f, 65504.f, -2.5f};
  std::uniform_int_distribution<int> ex(-40, 40);
  std::normal_distribution<float> nd;
  for (int i = 0; i < 3000; ++i) vs.push_back(std::ldexp(nd(rng), ex(rng)));
  const stdfs::path dir = test::temp_dir("float_repr");
  {
    std::ofstream f(dir / "floats.txt");
    for (float v : vs) {
      uint8_t b[4];
      std::memcpy(b, &v, 4);
      char hex[9];
      std::snprintf(hex, sizeof hex, "%02x%02x%02x%02x", b[0], b[1], b[2], b[3]);
      f << hex << "\n";
    }
  }
  test::ProcResult r = test::run_python("float_repr.py", {(dir / "floats.txt").string()});
  ASSERT_EQ(r.code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line) && i < vs.size()) {
    EXPECT_EQ(quant::python_float_repr(vs[i]), line) << "float " << vs[i];
    ++i;
  }
  EXPECT_EQ(i, vs.size());
}

// Malformed entries: one UserError line naming the file and the key.
TEST(BnbNf4, ReaderRejectsMalformedEntries) {
  kernels::NF4Tensor t = kernels::nf4_quantize(at::randn({8, 64}), 64, true);
  auto write_with = [&](const std::string& tag, const std::function<void(io::SafetensorsWriter&)>& edit) {
    const stdfs::path dir = test::temp_dir("bnb_bad_" + tag);
    io::SafetensorsWriter w;
    edit(w);
    w.write(dir / "model.safetensors");
    return dir;
  };
  auto expect_error = [&](const stdfs::path& dir, const std::string& needle) {
    SCOPED_TRACE(needle);
    io::HfCheckpoint ck(dir);
    try {
      quant::read_bnb_nf4(ck, "m");
      ADD_FAILURE() << "no error; expected one containing " << needle;
    } catch (const UserError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_NE(msg.find(dir.string()), std::string::npos) << msg;  // the file, or the directory if missing
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  auto json_bytes = [](const std::string& s) {
    at::Tensor b = at::empty({static_cast<int64_t>(s.size())}, at::kByte);
    std::memcpy(b.data_ptr(), s.data(), s.size());
    return b;
  };
  auto base = [&](io::SafetensorsWriter& w, const std::string& json, bool with_nested_map = true) {
    w.add("m.weight", t.packed.reshape({-1, 1}));
    w.add("m.weight.absmax", t.absmax);
    w.add("m.weight.quant_map", kernels::nf4_code_table());
    w.add("m.weight.nested_absmax", t.nested_absmax);
    if (with_nested_map) w.add("m.weight.nested_quant_map", kernels::dynamic_map(true));
    w.add("m.weight.quant_state.bitsandbytes__nf4", json_bytes(json));
  };
  const std::string good = quant::bnb_quant_state_json(t);
  expect_error(write_with("fp4", [&](auto& w) { base(w, std::string(good).replace(good.find("nf4"), 3, "fp4")); }),
               "quant_type");
  expect_error(write_with("json", [&](auto& w) { base(w, "{not json"); }), "not valid JSON");
  expect_error(write_with("shape",
                          [&](auto& w) {
                            std::string j = good;
                            j.replace(j.find("[8, 64]") != std::string::npos ? j.find("[8, 64]") : j.find("[8,64]"),
                                      j.find("[8, 64]") != std::string::npos ? 7 : 6, "[8, 66]");
                            base(w, j);
                          }),
               "bytes of packed codes");
  expect_error(write_with("nomap", [&](auto& w) { base(w, good, false); }), "nested_quant_map: missing");
  expect_error(write_with("qmap",
                          [&](auto& w) {
                            w.add("m.weight", t.packed.reshape({-1, 1}));
                            w.add("m.weight.absmax", t.absmax);
                            w.add("m.weight.quant_map", kernels::nf4_code_table() * 2);
                            w.add("m.weight.nested_absmax", t.nested_absmax);
                            w.add("m.weight.nested_quant_map", kernels::dynamic_map(true));
                            w.add("m.weight.quant_state.bitsandbytes__nf4", json_bytes(good));
                          }),
               "quant_map: not the NF4 code table");
}

// The command's own errors: one line, exit code 2, no output directory left behind.
TEST(QuantizeCommand, UserErrors) {
  const stdfs::path dir = test::temp_dir("quantize_errors");
  test::ProcResult r = test::run_qlora("quantize --model " + test::quote((dir / "nope").string()) + " --out " +
                                       test::quote((dir / "out").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(dir / "out"));
  // a model that is already quantized
  stdfs::create_directories(dir / "q");
  std::ofstream(dir / "q" / "config.json") << R"({"quantization_config": {"quant_method": "bitsandbytes"}})";
  r = test::run_qlora("quantize --model " + test::quote((dir / "q").string()) + " --out " +
                      test::quote((dir / "out").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("already quantized"), std::string::npos) << r.output;
  // bad block size
  r = test::run_qlora("quantize --model " + test::quote((dir / "q").string()) + " --out " +
                      test::quote((dir / "out").string()) + " --blocksize 48");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--blocksize"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(dir / "out"));
}

TEST(QuantizeCommand, WhichTensorsAreQuantized) {
  io::TensorInfo lin{"", "BF16", {64, 32}, 0, 0};
  EXPECT_TRUE(quant::is_quantized_linear_weight("model.layers.3.self_attn.q_proj.weight", lin));
  EXPECT_TRUE(quant::is_quantized_linear_weight("model.layers.0.mlp.down_proj.weight", lin));
  EXPECT_FALSE(quant::is_quantized_linear_weight("model.embed_tokens.weight", lin));
  EXPECT_FALSE(quant::is_quantized_linear_weight("lm_head.weight", lin));
  EXPECT_FALSE(quant::is_quantized_linear_weight("model.layers.0.self_attn.q_proj.bias", lin));
  io::TensorInfo norm{"", "BF16", {64}, 0, 0};
  EXPECT_FALSE(quant::is_quantized_linear_weight("model.layers.0.input_layernorm.weight", norm));
  EXPECT_FALSE(quant::is_quantized_linear_weight("model.layers.0.self_attn.q_norm.weight", norm));
  io::TensorInfo ints{"", "I64", {4, 4}, 0, 0};
  EXPECT_FALSE(quant::is_quantized_linear_weight("model.layers.0.x.weight", ints));
}

}  // namespace
