// A GGUF file as the base model: the reader, ggml dequantization and the HF view of the tensors,
// judged by the gguf package (its writer makes the files, gguf.quants.dequantize the values) and
// by transformers' own GGUF loading (from_pretrained(dir, gguf_file=...)).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "tests/common/harness.h"
#include "tests/common/load_peak.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/gguf.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/gguf_base.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/model/model.h"
#include "trainer/quant/ggml_dequant.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace qlora;

namespace {

const test::stdfs::path& quants_dir() {
  static const test::stdfs::path d = [] {
    auto p = test::temp_dir("gguf_quants");
    test::run_python("gguf_ref.py", {"quants", p.string()});
    return p;
  }();
  return d;
}

void write_bytes(const test::stdfs::path& p, const std::string& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
}

// The message of the UserError `fn` throws ("" and a test failure when it throws none).
template <class F>
std::string user_error_of(F&& fn) {
  try {
    fn();
  } catch (const UserError& e) { return e.what(); }
  ADD_FAILURE() << "no UserError";
  return "";
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& s, const std::string& v) {
  put<uint64_t>(s, v.size());
  s += v;
}

// A minimal valid GGUF: one u32 key, one F32 tensor [2, 32] at offset 0, alignment 32.
std::string tiny_gguf(uint32_t type = 0, uint64_t offset = 0, uint64_t ne0 = 32) {
  std::string h = "GGUF";
  put<uint32_t>(h, 3);
  put<uint64_t>(h, 1);
  put<uint64_t>(h, 1);
  put_str(h, "llama.block_count");
  put<uint32_t>(h, 4);
  put<uint32_t>(h, 2);
  put_str(h, "w");
  put<uint32_t>(h, 2);
  put<uint64_t>(h, ne0);
  put<uint64_t>(h, 2);
  put<uint32_t>(h, type);
  put<uint64_t>(h, offset);
  while (h.size() % 32) h.push_back('\0');
  h += std::string(2 * 32 * 4, '\1');
  return h;
}

}  // namespace

TEST(GgufReader, DequantizesEveryTypeAsTheGgufPackageDoes) {
  io::GgufFile f(quants_dir() / "quants.gguf");
  io::SafetensorsFile ref(quants_dir() / "quants_ref.safetensors");
  ASSERT_EQ(f.tensors().size(), ref.tensors().size());
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  std::set<std::string> types;
  for (const auto& info : ref.tensors()) {
    const io::GgufTensorInfo* t = f.find(info.name);
    ASSERT_NE(t, nullptr) << info.name;
    types.insert(io::ggml_type_name(t->type));
    at::Tensor ours = quant::gguf_tensor_f32(f, info.name);
    at::Tensor theirs = ref.tensor(info.name);
    ASSERT_EQ(ours.sizes(), theirs.sizes()) << info.name;
    // ggml's reference order of operations, float for float: equal, or within a rounding step
    const double scale = theirs.abs().max().item<double>();
    const double diff = (ours - theirs).abs().max().item<double>();
    EXPECT_LE(diff, scale * 1e-6) << info.name << " (" << io::ggml_type_name(t->type) << ")";
    EXPECT_GT(scale, 0) << info.name;
  }
  for (const char* ty : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"})
    EXPECT_TRUE(types.count(ty)) << ty;
}

TEST(GgufReader, EveryTruncationIsAUserErrorNamingTheFile) {
  const std::string whole = fs::read_file(quants_dir() / "quants.gguf");
  auto d = test::temp_dir();
  const auto p = d / "cut.gguf";
  // every prefix of the header and metadata, and a sample of the data section
  for (size_t n = 0; n < whole.size(); n += (n < 4096 ? 1 : 997)) {
    write_bytes(p, whole.substr(0, n));
    const std::string m = user_error_of([&] { io::GgufFile f(p); });
    EXPECT_NE(m.find(p.string()), std::string::npos) << n << ": " << m;
  }
}

TEST(GgufReader, MalformedHeadersNameTheKeyOrTensor) {
  auto d = test::temp_dir();
  const auto p = d / "bad.gguf";
  write_bytes(p, tiny_gguf());
  {
    io::GgufFile f(p);
    EXPECT_EQ(f.get_int("llama.block_count"), 2);
    ASSERT_EQ(f.tensors().size(), 1u);
    EXPECT_EQ(f.tensors()[0].shape(), (std::vector<int64_t>{2, 32}));
  }
  auto expect = [&](const std::string& bytes, const std::string& needle) {
    write_bytes(p, bytes);
    const std::string m = user_error_of([&] { io::GgufFile f(p); });
    EXPECT_NE(m.find(p.string() + ": "), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << "expected \"" << needle << "\" in: " << m;
  };
  std::string b = tiny_gguf();
  b[0] = 'X';
  expect(b, "not a GGUF file");
  b = tiny_gguf();
  b[4] = 9;
  expect(b, "version");
  b = tiny_gguf();
  std::memset(&b[8], 0xff, 8);  // tensor_count
  expect(b, "tensor_count");
  b = tiny_gguf();
  std::memset(&b[16], 0xff, 8);  // kv_count
  expect(b, "kv_count");
  b = tiny_gguf();
  std::memset(&b[24], 0x7f, 8);  // key length
  expect(b, "metadata key 0");
  b = tiny_gguf();
  b[24 + 8 + 17] = 42;  // value type
  expect(b, "llama.block_count: unknown value type 42");
  expect(tiny_gguf(/*type=*/17), "w: unknown ggml tensor type 17");
  expect(tiny_gguf(0, /*offset=*/64), "w: data [64, 320) lies outside");
  expect(tiny_gguf(0, /*offset=*/3), "w: offset 3 is not a multiple of the alignment 32");
  expect(tiny_gguf(2, 0, /*ne0=*/33), "w: row length 33 is not a multiple of the Q4_0 block size 32");
  // a known type we do not dequantize is refused when read, naming the tensor and the type
  write_bytes(p, tiny_gguf(/*Q5_0*/ 6, 0, 32));
  io::GgufFile f(p);
  const std::string m = user_error_of([&] { quant::gguf_tensor_f32(f, "w"); });
  EXPECT_NE(m.find(p.string() + ": w: ggml type Q5_0 cannot be read"), std::string::npos) << m;
}

namespace {
struct ModelCase {
  std::string arch, qtype;
};

void check_against_transformers(const ModelCase& c) {
  SCOPED_TRACE(c.arch + " " + c.qtype);
  auto d = test::temp_dir(c.arch + "_" + c.qtype);
  test::ProcResult r = test::run_python("gguf_ref.py", {"model", d.string(), c.arch, c.qtype});
  ASSERT_EQ(r.code, 0) << r.output;
  const auto gguf = d / "model.gguf";

  // config: the fields transformers derived from the same metadata
  const model::ModelConfig mc = model::read_model_config(gguf);
  const auto j = nlohmann::json::parse(fs::read_file(d / "ref_config.json"));
  EXPECT_EQ(mc.model_type, j["model_type"].get<std::string>());
  EXPECT_EQ(mc.vocab_size, j["vocab_size"].get<int64_t>());
  EXPECT_EQ(mc.hidden_size, j["hidden_size"].get<int64_t>());
  EXPECT_EQ(mc.intermediate_size, j["intermediate_size"].get<int64_t>());
  EXPECT_EQ(mc.num_hidden_layers, j["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(mc.num_attention_heads, j["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(mc.num_key_value_heads, j["num_key_value_heads"].get<int64_t>());
  // (Qwen2Config has no head_dim: hidden_size / num_attention_heads)
  EXPECT_EQ(mc.head_dim,
            j["head_dim"].is_null() ? mc.hidden_size / mc.num_attention_heads : j["head_dim"].get<int64_t>());
  EXPECT_EQ(mc.max_position_embeddings, j["max_position_embeddings"].get<int64_t>());
  EXPECT_FLOAT_EQ(static_cast<float>(mc.rms_norm_eps), j["rms_norm_eps"].get<float>());
  EXPECT_EQ(mc.tie_word_embeddings, j["tie_word_embeddings"].get<bool>());
  EXPECT_DOUBLE_EQ(mc.rope.theta, j["rope_theta"].get<double>());

  // tensors: every parameter transformers loaded, equal after dequantization
  auto src = model::open_tensor_source(gguf);
  io::SafetensorsFile ref(d / "ref.safetensors");
  size_t n = 0;
  for (const auto& info : ref.tensors()) {
    std::string name = info.name;
    if (name == "lm_head.weight" && mc.tie_word_embeddings) name = "model.embed_tokens.weight";
    ASSERT_TRUE(src->contains(name)) << name;
    EXPECT_EQ(src->shape(name), info.shape) << name;
    at::Tensor ours = src->tensor(name).to(at::kFloat);
    at::Tensor theirs = ref.tensor(info.name);
    EXPECT_TRUE(at::equal(ours, theirs)) << name << ": max diff " << (ours - theirs).abs().max().item<double>();
    ++n;
  }
  EXPECT_GT(n, 20u);

  // the whole model loads from the file, 16-bit and NF4
  model::ModelLoadOptions o;
  o.quantize = false;
  model::Model m = model::load_model(gguf, o);
  EXPECT_TRUE(at::equal(m.layers[1].q_proj.weight, ref.tensor("model.layers.1.self_attn.q_proj.weight")));
  EXPECT_TRUE(at::equal(m.layers[0].k_proj.weight, ref.tensor("model.layers.0.self_attn.k_proj.weight")));
  EXPECT_TRUE(at::equal(m.norm, ref.tensor("model.norm.weight")));
  o.quantize = true;
  model::Model q = model::load_model(gguf, o);
  EXPECT_TRUE(q.layers[0].q_proj.nf4.has_value());
}
}  // namespace

TEST(GgufBase, LlamaQ8_0EqualsTransformers) { check_against_transformers({"llama", "Q8_0"}); }
TEST(GgufBase, LlamaQ4_0EqualsTransformers) { check_against_transformers({"llama", "Q4_0"}); }
TEST(GgufBase, Qwen2Q4_1EqualsTransformers) { check_against_transformers({"qwen2", "Q4_1"}); }
TEST(GgufBase, Qwen3BF16EqualsTransformers) { check_against_transformers({"qwen3", "BF16"}); }
TEST(GgufBase, LlamaQ4_KEqualsTransformers) { check_against_transformers({"llama", "Q4_K"}); }
TEST(GgufBase, Qwen2Q5_KEqualsTransformers) { check_against_transformers({"qwen2", "Q5_K"}); }
TEST(GgufBase, Qwen3Q6_KEqualsTransformers) { check_against_transformers({"qwen3", "Q6_K"}); }
TEST(GgufBase, MistralAsLlamaArchF16EqualsTransformers) { check_against_transformers({"mistral", "F16"}); }

TEST(GgufBase, HfNamesMapToLlamaCppNames) {
  EXPECT_EQ(*model::gguf_name_of("model.layers.3.self_attn.q_proj.weight", "llama"), "blk.3.attn_q.weight");
  EXPECT_EQ(*model::gguf_name_of("model.layers.0.post_attention_layernorm.weight", "qwen2"), "blk.0.ffn_norm.weight");
  EXPECT_EQ(*model::gguf_name_of("model.layers.0.post_attention_layernorm.weight", "gemma2"),
            "blk.0.post_attention_norm.weight");
  EXPECT_EQ(*model::gguf_name_of("model.layers.0.pre_feedforward_layernorm.weight", "gemma3"), "blk.0.ffn_norm.weight");
  EXPECT_EQ(*model::gguf_name_of("model.layers.2.self_attn.qkv_proj.weight", "phi3"), "blk.2.attn_qkv.weight");
  EXPECT_EQ(*model::gguf_name_of("model.layers.2.mlp.gate_up_proj.weight", "phi3"), "blk.2.ffn_up.weight");
  EXPECT_EQ(*model::gguf_name_of("lm_head.weight", "llama"), "output.weight");
  EXPECT_FALSE(model::gguf_name_of("model.rotary_emb.inv_freq", "llama").has_value());
}

namespace {
void check_tokenizer(const std::string& kind) {
  SCOPED_TRACE(kind);
  auto d = test::temp_dir("tok_" + kind);
  test::ProcResult r = test::run_python("gguf_ref.py", {"tokenizer", d.string(), kind});
  ASSERT_EQ(r.code, 0) << r.output;
  const auto ref = nlohmann::json::parse(fs::read_file(d / "ref.json"));
  auto tk = model::load_base_tokenizer(d / "model.gguf");
  const auto& sp = tk->special();
  auto id_or_null = [](const std::optional<int32_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  EXPECT_EQ(id_or_null(sp.bos_id), ref["bos_id"]);
  EXPECT_EQ(id_or_null(sp.eos_id), ref["eos_id"]);
  EXPECT_EQ(id_or_null(sp.unk_id), ref["unk_id"]);
  EXPECT_EQ(id_or_null(sp.pad_id), ref["pad_id"]);
  EXPECT_EQ(tk->vocab_size(), ref["vocab_size"].get<int32_t>());
  EXPECT_EQ(tk->chat_template(), ref["chat_template"].get<std::string>());
  EXPECT_EQ(tk->chat_template_origin(), (d / "model.gguf").string() + ": tokenizer.chat_template");
  const auto& texts = ref["texts"];
  size_t bad = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string t = texts[i].get<std::string>();
    for (bool special : {true, false}) {
      const auto want = ref[special ? "ids_special" : "ids_plain"][i].get<std::vector<int32_t>>();
      const auto got = tk->encode(t, special);
      if (got != want && ++bad <= 5)
        ADD_FAILURE() << "text " << i << " (special " << special << "): \"" << t.substr(0, 60) << "\": " << got.size()
                      << " ids, transformers " << want.size();
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << 2 * texts.size() << " encodings";
  EXPECT_GT(texts.size(), 100u);

  // The digest the prepared-data cache keys on covers the tokenizer metadata, not the weights.
  const std::string whole = fs::read_file(d / "model.gguf"), digest = model::base_tokenizer_digest(d / "model.gguf");
  EXPECT_EQ(digest.size(), 64u);
  std::string other = whole;
  other.back() = static_cast<char>(other.back() ^ 1);  // the last byte of the (only) tensor
  fs::write_file_atomic(d / "weights.gguf", other);
  EXPECT_EQ(model::base_tokenizer_digest(d / "weights.gguf"), digest);
  other = whole;
  const size_t tmpl = other.find(ref["chat_template"].get<std::string>());
  ASSERT_NE(tmpl, std::string::npos);
  other[tmpl + 1] = static_cast<char>(other[tmpl + 1] ^ 1);
  fs::write_file_atomic(d / "template.gguf", other);
  EXPECT_NE(model::base_tokenizer_digest(d / "template.gguf"), digest);
}
}  // namespace

TEST(GgufTokenizer, SentencePieceIdsEqualTransformers) { check_tokenizer("spm"); }
TEST(GgufTokenizer, ByteLevelBpeIdsEqualTransformers) { check_tokenizer("bpe"); }

TEST(GgufTokenizer, MissingOrUnknownTokenizerIsAUserError) {
  auto d = test::temp_dir();
  const auto p = d / "m.gguf";
  write_bytes(p, tiny_gguf());
  std::string m = user_error_of([&] { model::load_base_tokenizer(p); });
  EXPECT_NE(m.find(p.string() + ": tokenizer.ggml.model: missing"), std::string::npos) << m;
}

// qlora train with base_model: a .gguf file (Q8_0 weights, its own tokenizer), then the PEFT and
// merged exports; the merged model is judged by transformers + PEFT on the same GGUF.
TEST(GgufBase, TrainAndExportFromAGgufBase) {
  auto d = test::temp_dir();
  ASSERT_EQ(test::run_python("train_fixture.py", {(d / "fix").string()}).code, 0);
  ASSERT_EQ(
      test::run_python("gguf_ref.py", {"from-hf", (d / "fix" / "model").string(), (d / "base.gguf").string(), "Q8_0"})
          .code,
      0);
  {
    std::ofstream o(d / "cfg.yaml");
    o << "base_model: " << (d / "base.gguf").string() << "\n"
      << "adapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"
      << "sequence_len: 256\nmicro_batch_size: 2\nmax_steps: 4\nlearning_rate: 0.002\n"
      << "datasets:\n  - path: " << (d / "fix" / "train.jsonl").string() << "\n    type: alpaca\n"
      << "output_dir: " << (d / "run").string() << "\n";
  }
  const std::string q = test::quote(test::qlora_exe().string());
  test::ProcResult t = test::run(q + " train " + test::quote((d / "cfg.yaml").string()));
  ASSERT_EQ(t.code, 0) << t.output;
  EXPECT_NE(t.output.find("step 4/4"), std::string::npos) << t.output;
  test::ProcResult p = test::run(q + " export " + test::quote((d / "run").string()) + " --format peft --out " +
                                 test::quote((d / "peft").string()));
  ASSERT_EQ(p.code, 0) << p.output;
  const auto ac = nlohmann::json::parse(fs::read_file(d / "peft" / "adapter_config.json"));
  EXPECT_EQ(ac["base_model_name_or_path"].get<std::string>(), (d / "base.gguf").string());
  test::ProcResult m =
      test::run(q + " export " + test::quote((d / "run").string()) +
                " --format merged --merge-into original --dtype fp32 --out " + test::quote((d / "merged").string()));
  ASSERT_EQ(m.code, 0) << m.output;
  test::ProcResult c = test::run_python(
      "gguf_ref.py", {"check-merged", d.string(), "base.gguf", (d / "peft").string(), (d / "merged").string()});
  EXPECT_EQ(c.code, 0) << c.output;
  EXPECT_NE(c.output.find("ok 21"), std::string::npos) << c.output;
}

namespace {
// A random llama-shaped F16 GGUF: 8 layers, hidden 1024, intermediate 2816, vocab 32000, untied
// (about 330 MB; the largest tensors are the 65 MB embeddings, 131 MB once dequantized to fp32).
void write_big_gguf(const test::stdfs::path& p) {
  const int64_t V = 32000, H = 1024, I = 2816, L = 8;
  io::GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", L);
  w.add_u32("llama.embedding_length", H);
  w.add_u32("llama.feed_forward_length", I);
  w.add_u32("llama.attention.head_count", 16);
  w.add_u32("llama.attention.head_count_kv", 16);
  w.add_u32("llama.vocab_size", V);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  auto rnd = [&](std::vector<int64_t> s) { return at::randn(s, g, at::kFloat).to(at::kHalf); };
  w.add_tensor("token_embd.weight", rnd({V, H}));
  w.add_tensor("output.weight", rnd({V, H}));
  w.add_tensor("output_norm.weight", rnd({H}).to(at::kFloat));
  for (int64_t l = 0; l < L; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    w.add_tensor(b + "attn_norm.weight", rnd({H}).to(at::kFloat));
    w.add_tensor(b + "ffn_norm.weight", rnd({H}).to(at::kFloat));
    for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output"}) w.add_tensor(b + m + ".weight", rnd({H, H}));
    w.add_tensor(b + "ffn_gate.weight", rnd({I, H}));
    w.add_tensor(b + "ffn_up.weight", rnd({I, H}));
    w.add_tensor(b + "ffn_down.weight", rnd({H, I}));
  }
  w.write(p);
}
}  // namespace

// Streaming a GGUF into NF4: peak RSS of load_model stays within the NF4 model + one tensor
// dequantized to fp32 + a fixed allowance, well under the 16-bit file. The load runs in a child
// process (this binary re-run with QLORA_GGUF_MEMORY_CHILD set), so its peak RSS is its own.
TEST(GgufBase, LoadPeakIsModelPlusOneTensor) {
  if (test::report_load_peak_if_child("QLORA_GGUF_MEMORY_CHILD")) return;
  if (!test::rss_is_measurable()) GTEST_SKIP() << "peak RSS is not measurable under AddressSanitizer";
  const auto p = test::temp_dir() / "big.gguf";
  write_big_gguf(p);
  uint64_t largest = 0;
  const uint64_t file_bytes = test::stdfs::file_size(p);
  {
    io::GgufFile f(p);
    for (const auto& t : f.tensors()) largest = std::max<uint64_t>(largest, static_cast<uint64_t>(t.numel()) * 4);
  }
  const test::LoadPeak lp =
      test::load_peak_in_child("QLORA_GGUF_MEMORY_CHILD", p, "GgufBase.LoadPeakIsModelPlusOneTensor");
  const uint64_t peak = lp.peak, baseline = lp.baseline;
  const int64_t model_bytes = lp.model_bytes;
  const double mib = 1024.0 * 1024.0;
  const uint64_t growth = peak - baseline;
  const uint64_t allowance = 64ull << 20;  // allocator slack, the fp32 copy of one linear while quantizing
  std::printf(
      "gguf load: peak - baseline %.1f MiB; NF4 model %.1f MiB + largest tensor in fp32 %.1f MiB; file %.1f MiB\n",
      growth / mib, model_bytes / mib, largest / mib, file_bytes / mib);
  EXPECT_LE(growth, static_cast<uint64_t>(model_bytes) + largest + allowance);
}
