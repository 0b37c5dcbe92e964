// Tokenizer models: what turns one pre-token into ids (huggingface/tokenizers' `Model`).
//   BpeModel            tokenizer.json "model": {"type": "BPE"} (byte-level or SentencePiece-style)
//   SentencePieceModel  a SentencePiece tokenizer.model run by libsentencepiece
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trainer/tokenizer/flat_tables.h"

namespace qlora::tok {

// Transparent string hash so maps keyed by std::string can be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-token (never empty) to `out`. Thread-safe.
  virtual void tokenize(std::string_view piece, std::vector<int32_t>& out) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  // nullptr when the model has no token with this id.
  virtual const std::string* id_to_token(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
};

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix, end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;  // unknown characters become <0xAB> byte tokens
  bool ignore_merges = false;  // a pre-token that is itself in the vocab is one token
};

// Byte-pair encoding with a rank per merge (rank = position in the merges list): repeatedly
// merge the adjacent pair of lowest rank, leftmost first on ties. Results per pre-token are
// cached (most words repeat), so a dataset pays for each distinct word once.
class BpeModel final : public Model {
 public:
  // Throws UserError (without a file name) when a merge names a token the vocab lacks.
  BpeModel(StringMap<int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opt);

  // Pre-tokens arrive as raw bytes instead of byte-level characters: the model maps each byte to
  // its GPT-2 alphabet token itself (only on a cache miss). Set by the pipeline when ByteLevel is
  // the last pre-tokenizer step, so the mapping costs nothing for cached words.
  void set_byte_level_input(bool on);

  void tokenize(std::string_view piece, std::vector<int32_t>& out) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  const std::string* id_to_token(int32_t id) const override;
  int32_t vocab_size() const override { return int32_t(vocab_.size()); }
  const BpeOptions& options() const { return opt_; }

 private:
  void compute(std::string_view piece, std::vector<int32_t>& out) const;
  void symbols_of(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_all(std::vector<int32_t>& ids) const;

  StringMap<int32_t> vocab_;
  std::vector<std::string> vocab_r_;  // id -> token ("" where the id is unused)
  MergeTable merges_;
  BpeOptions opt_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_fallback_id_;  // id of "<0xAB>", -1 if absent
  bool byte_level_input_ = false;
  std::array<int32_t, 256> byte_char_id_;  // id of each byte's GPT-2 character, -1 if absent

  // pre-token -> ids. Bounded like tokenizers' own cache: once full, new words are not added.
  static constexpr size_t kCacheCapacity = 1 << 18;
  static constexpr size_t kMaxCachedBytes = 256;
  mutable std::shared_mutex cache_mu_;
  mutable PieceCache cache_{kCacheCapacity};
};

// A SentencePiece model (BPE or Unigram) run by libsentencepiece with the model's own
// normalization switched off: HF's Llama tokenizer does no normalization and handles the
// "▁" prefix itself (Metaspace pre-tokenizer), so the pre-token handed in is already escaped.
class SentencePieceModel final : public Model {
 public:
  struct Piece {
    std::string piece;
    float score = 0;
    int type = 1;  // sentencepiece ModelProto.SentencePiece.Type: 1 normal, 2 unknown, 3 control,
                   // 4 user defined, 5 unused, 6 byte
  };
  struct Spec {
    std::vector<Piece> pieces;
    int model_type = 1;  // 1 unigram, 2 bpe, 3 word, 4 char
    int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
    bool byte_fallback = false;
    bool add_dummy_prefix = true;
  };
  // Loads a tokenizer.model; UserError naming the file when it is not a SentencePiece model.
  explicit SentencePieceModel(const std::string& path);
  ~SentencePieceModel() override;

  const Spec& spec() const { return spec_; }
  void tokenize(std::string_view piece, std::vector<int32_t>& out) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  const std::string* id_to_token(int32_t id) const override;
  int32_t vocab_size() const override { return int32_t(spec_.pieces.size()); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Spec spec_;
  StringMap<int32_t> piece_to_id_;
};

}  // namespace qlora::tok
