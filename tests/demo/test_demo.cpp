// The committed demo (data/demo/): the model and tokenizer are what transformers expects, the
// recipe's decoder (data/demo/recipe/llama.h) computes the same loss as LlamaForCausalLM, the
// base model cannot do the fine-tuning task, and the generator reproduces the datasets.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

#include "data/demo/recipe/llama.h"
#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/io/hf_checkpoint.h"

using namespace qlora;
namespace stdfs = std::filesystem;
using nlohmann::json;

namespace {

stdfs::path demo_dir() { return test::source_dir() / "data/demo"; }
stdfs::path model_dir() { return demo_dir() / "model"; }

std::vector<std::string> read_lines(const stdfs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) lines.push_back(l);
  return lines;
}

// Runs the demo's data generator (data/demo/recipe/make_data.py) with the venv's Python.
test::ProcResult make_data(const std::vector<std::string>& args) {
  std::string cmd = std::string(QLORA_TEST_PYTHON) + " " + test::quote((demo_dir() / "recipe/make_data.py").string());
  for (const auto& a : args) cmd += " " + test::quote(a);
  return test::run(cmd);
}

class Demo : public ::testing::Test {
 protected:
  // Held-out text (the generator's corpus under another seed: sentences the model never saw
  // verbatim), tokenized by libsentencepiece, plus transformers' view of the same.
  static void SetUpTestSuite() {
    dir_ = new stdfs::path(test::temp_dir("fixtures"));
    test::ProcResult g =
        make_data({"--out", dir_->string(), "--only", "corpus", "--seed", "7", "--corpus-lines", "24"});
    ASSERT_EQ(g.code, 0) << g.output;
    lines_ = new std::vector<std::string>(read_lines(*dir_ / "corpus.txt"));
    // Task texts too (instruction words the corpus never has go through byte fallback).
    for (const auto& l : read_lines(demo_dir() / "eval.jsonl")) {
      if (lines_->size() >= 40) break;
      const json record = json::parse(l);  // a temporary in the range expression would die first
      for (const auto& m : record["messages"]) lines_->push_back(m["content"]);
    }
    ASSERT_TRUE(sp_.Load((model_dir() / "tokenizer.model").string()).ok());
    config_ = demo::LlamaConfig::from_hf_json(json::parse(fs::read_file(model_dir() / "config.json")));

    // The batch: the first 16 corpus lines as [BOS] ids [EOS], right-padded; labels -100 on pads.
    std::vector<std::vector<int64_t>> rows;
    size_t T = 0;
    for (size_t i = 0; i < 16; ++i) {
      std::vector<int> ids;
      ASSERT_TRUE(sp_.Encode((*lines_)[i], &ids).ok());
      std::vector<int64_t> r{config_.bos_token_id};
      r.insert(r.end(), ids.begin(), ids.end());
      r.push_back(config_.eos_token_id);
      T = std::max(T, r.size());
      rows.push_back(r);
    }
    input_ids_ = new at::Tensor(at::full({int64_t(rows.size()), int64_t(T)}, config_.pad_token_id, at::kLong));
    labels_ = new at::Tensor(at::full({int64_t(rows.size()), int64_t(T)}, -100, at::kLong));
    for (size_t i = 0; i < rows.size(); ++i)
      for (size_t t = 0; t < rows[i].size(); ++t) (*input_ids_)[i][t] = (*labels_)[i][t] = rows[i][t];

    auto to_list = [](const at::Tensor& t) {
      json a = json::array();
      for (int64_t i = 0; i < t.size(0); ++i) {
        auto row = t[i].contiguous();
        a.push_back(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel()));
      }
      return a;
    };
    json req = {{"lines", *lines_}, {"input_ids", to_list(*input_ids_)}, {"labels", to_list(*labels_)}};
    fs::write_file_atomic(*dir_ / "request.json", req.dump());
    test::ProcResult r = test::run_python(
        "demo_ref.py",
        {"check", model_dir().string(), (*dir_ / "request.json").string(), (*dir_ / "ref.json").string()});
    ASSERT_EQ(r.code, 0) << r.output;
    ref_ = new json(json::parse(fs::read_file(*dir_ / "ref.json")));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete lines_;
    delete input_ids_;
    delete labels_;
    delete ref_;
  }
  void SetUp() override { ASSERT_NE(ref_, nullptr) << "fixtures failed"; }

  static stdfs::path* dir_;
  static std::vector<std::string>* lines_;
  static sentencepiece::SentencePieceProcessor sp_;
  static demo::LlamaConfig config_;
  static at::Tensor *input_ids_, *labels_;
  static json* ref_;
};
stdfs::path* Demo::dir_ = nullptr;
std::vector<std::string>* Demo::lines_ = nullptr;
sentencepiece::SentencePieceProcessor Demo::sp_;
demo::LlamaConfig Demo::config_;
at::Tensor* Demo::input_ids_ = nullptr;
at::Tensor* Demo::labels_ = nullptr;
json* Demo::ref_ = nullptr;

}  // namespace

TEST_F(Demo, TokenizerIdsEqualTransformers) {
  const json& ids = (*ref_)["ids"];
  ASSERT_EQ(ids.size(), lines_->size());
  for (size_t i = 0; i < lines_->size(); ++i) {
    std::vector<int> sp_ids;
    ASSERT_TRUE(sp_.Encode((*lines_)[i], &sp_ids).ok());
    std::vector<int> ours{int(config_.bos_token_id)};  // add_bos_token: true
    ours.insert(ours.end(), sp_ids.begin(), sp_ids.end());
    EXPECT_EQ(ids[i].get<std::vector<int>>(), ours) << (*lines_)[i];
  }
  const json& sp = (*ref_)["special"];
  EXPECT_EQ(sp["bos"], sp_.bos_id());
  EXPECT_EQ(sp["eos"], sp_.eos_id());
  EXPECT_EQ(sp["pad"], sp_.pad_id());
  EXPECT_EQ(sp["unk"], sp_.unk_id());
  EXPECT_EQ((*ref_)["vocab_size"], sp_.GetPieceSize());
  // The model's config agrees with its tokenizer.
  EXPECT_EQ(config_.vocab_size, sp_.GetPieceSize());
  EXPECT_EQ(config_.bos_token_id, sp_.bos_id());
  EXPECT_EQ(config_.eos_token_id, sp_.eos_id());
  EXPECT_EQ(config_.pad_token_id, sp_.pad_id());
}

TEST_F(Demo, ModelIsBf16LlamaInHfLayout) {
  EXPECT_EQ((*ref_)["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ((*ref_)["model_type"], "llama");
  EXPECT_EQ((*ref_)["dtype"], "torch.bfloat16");
  io::HfCheckpoint ckpt(model_dir());
  auto shapes = demo::llama_shapes(config_);
  EXPECT_EQ(ckpt.names().size(), shapes.size());
  int64_t params = 0;
  for (const auto& [name, shape] : shapes) {
    ASSERT_TRUE(ckpt.contains(name)) << name;
    EXPECT_EQ(ckpt.info(name).dtype, "BF16") << name;
    EXPECT_EQ(ckpt.info(name).shape, shape) << name;
    params += ckpt.info(name).numel();
  }
  EXPECT_GT(params, 1'000'000);  // "a few million parameters"
  EXPECT_LT(params, 10'000'000);
}

// The recipe's decoder (which pretrained the model) and LlamaForCausalLM compute the same loss
// on the committed weights, in fp32.
TEST_F(Demo, RecipeDecoderLossEqualsTransformers) {
  io::HfCheckpoint ckpt(model_dir());
  demo::Weights w;
  for (const auto& name : ckpt.names()) w[name] = ckpt.tensor(name).to(at::kFloat);
  const double ours = demo::causal_lm_loss(demo::llama_logits(w, config_, *input_ids_), *labels_).item<double>();
  const double theirs = (*ref_)["loss"];
  std::printf("held-out loss: recipe decoder %.7f, transformers %.7f\n", ours, theirs);
  EXPECT_NEAR(ours, theirs, 1e-4 * std::abs(theirs));
  // And the model is trained: held-out loss far below chance (ln 1024 = 6.93).
  EXPECT_LT(theirs, 1.5);
}

// The pretraining's packed rows (documents side by side, positions restarting, attention kept
// inside each document) give every document the logits it gets alone.
TEST_F(Demo, PackedRowEqualsDocumentsAlone) {
  io::HfCheckpoint ckpt(model_dir());
  demo::Weights w;
  for (const auto& name : ckpt.names()) w[name] = ckpt.tensor(name).to(at::kFloat);
  std::vector<std::vector<int64_t>> docs;
  for (size_t i = 0; i < 3; ++i) {
    std::vector<int> ids;
    ASSERT_TRUE(sp_.Encode((*lines_)[i], &ids).ok());
    docs.push_back({config_.bos_token_id});
    docs.back().insert(docs.back().end(), ids.begin(), ids.end());
  }
  std::vector<int64_t> row, pos, doc;
  for (size_t k = 0; k < docs.size(); ++k)
    for (size_t j = 0; j < docs[k].size(); ++j) {
      row.push_back(docs[k][j]);
      pos.push_back(j);
      doc.push_back(k);
    }
  const int64_t T = row.size();
  auto d = at::tensor(doc).view({1, T});
  auto allowed = d.unsqueeze(2).eq(d.unsqueeze(1)).logical_and(at::ones({T, T}, at::kBool).tril());
  auto packed = demo::llama_logits(w, config_, at::tensor(row).view({1, T}), at::tensor(pos).view({1, T}), allowed);
  int64_t at_pos = 0;
  for (const auto& dk : docs) {
    const int64_t n = dk.size();
    auto alone = demo::llama_logits(w, config_, at::tensor(dk).view({1, n}));
    EXPECT_TRUE(at::allclose(packed.slice(1, at_pos, at_pos + n), alone, 1e-4, 1e-4));
    at_pos += n;
  }
}

// Before fine-tuning the base model cannot answer the task's instructions (greedy decoding after
// the chat template's generation prompt; transformers generate): < 10% exact match.
TEST_F(Demo, BaseModelFailsTheTask) {
  test::ProcResult r = test::run_python(
      "demo_ref.py",
      {"accuracy", model_dir().string(), (demo_dir() / "eval.jsonl").string(), (*dir_ / "accuracy.json").string()});
  ASSERT_EQ(r.code, 0) << r.output;
  json acc = json::parse(fs::read_file(*dir_ / "accuracy.json"));
  EXPECT_EQ(acc["n"], read_lines(demo_dir() / "eval.jsonl").size());
  std::printf("base model exact match: %.3f of %d\n", acc["accuracy"].get<double>(), acc["n"].get<int>());
  EXPECT_LT(acc["accuracy"].get<double>(), 0.10) << acc.dump(1);
}

// The generator is deterministic: it remakes the committed datasets byte for byte.
TEST_F(Demo, GeneratorReproducesTheDatasets) {
  stdfs::path out = test::temp_dir("datasets");
  test::ProcResult g = make_data({"--out", out.string(), "--only", "datasets"});
  ASSERT_EQ(g.code, 0) << g.output;
  for (const char* f : {"train.jsonl", "eval.jsonl"}) {
    EXPECT_TRUE(fs::read_file(out / f) == fs::read_file(demo_dir() / f)) << f << " differs from the generator's";
  }
}

// The datasets are chat-format JSONL and the eval set is held out from the training set.
TEST_F(Demo, DatasetsAreChatJsonlWithHeldOutEval) {
  std::set<std::string> train_users, train_answers;
  for (const auto& l : read_lines(demo_dir() / "train.jsonl")) {
    json j = json::parse(l);
    ASSERT_EQ(j["messages"].size(), 2u);
    EXPECT_EQ(j["messages"][0]["role"], "user");
    EXPECT_EQ(j["messages"][1]["role"], "assistant");
    train_users.insert(j["messages"][0]["content"]);
    train_answers.insert(j["messages"][1]["content"]);
  }
  EXPECT_GE(train_users.size(), 1000u);
  auto eval = read_lines(demo_dir() / "eval.jsonl");
  EXPECT_GE(eval.size(), 100u);
  for (const auto& l : eval) {
    json j = json::parse(l);
    EXPECT_EQ(train_users.count(j["messages"][0]["content"]), 0u) << l;
    EXPECT_EQ(train_answers.count(j["messages"][1]["content"]), 0u) << l;
  }
}
