// BPE as huggingface/tokenizers runs it (models/bpe/model.rs, word.rs): characters (or byte
// fallback tokens, or unk) -> merges by rank with a priority queue -> ids.
#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>

#include "trainer/common/error.h"
#include "trainer/tokenizer/byte_level.h"
#include "trainer/tokenizer/model.h"
#include "trainer/unicode/utf8.h"

namespace qlora::tok {

BpeModel::BpeModel(StringMap<int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions opt)
    : vocab_(std::move(vocab)), opt_(std::move(opt)) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0) user_error("model.vocab: negative id ", id, " for token \"", tok, "\"");
    max_id = std::max(max_id, id);
  }
  vocab_r_.resize(size_t(max_id + 1));
  for (const auto& [tok, id] : vocab_) vocab_r_[id] = tok;

  const size_t prefix_len = opt_.continuing_subword_prefix.size();
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      user_error("model.merges[", rank, "]: \"", a, " ", b, "\" uses a token missing from model.vocab");
    // The merged token drops b's continuing-subword prefix ("##" in WordPiece-style vocabularies).
    std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : b);
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      user_error("model.merges[", rank, "]: \"", a, " ", b, "\" makes \"", merged, "\", missing from model.vocab");
    // First occurrence wins: tokenizers keeps the lowest rank for a repeated pair.
    merges_.insert(ia->second, ib->second, {int32_t(rank), im->second});
  }
  if (opt_.unk_token) {
    auto it = vocab_.find(*opt_.unk_token);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(name));
    byte_fallback_id_[b] = it == vocab_.end() ? -1 : it->second;
  }
  byte_char_id_.fill(-1);
}

void BpeModel::set_byte_level_input(bool on) {
  byte_level_input_ = on;
  const auto& alpha = byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(alpha.byte_to_utf8[b]);
    byte_char_id_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= vocab_r_.size() || vocab_r_[id].empty()) return nullptr;
  return &vocab_r_[id];
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  const bool cacheable = piece.size() <= kMaxCachedBytes;
  const uint64_t h = cacheable ? hash_bytes(piece) : 0;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    if (cache_.get(piece, h, out)) return;
  }
  thread_local std::vector<int32_t> ids;
  ids.clear();
  compute(piece, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::unique_lock lock(cache_mu_);
    cache_.put(piece, h, ids);
  }
}

void BpeModel::compute(std::string_view piece, std::vector<int32_t>& ids) const {
  if (byte_level_input_) {
    bool all_bytes_known = true;
    for (unsigned char b : piece) all_bytes_known &= byte_char_id_[b] >= 0;
    if (!opt_.ignore_merges && all_bytes_known && opt_.continuing_subword_prefix.empty() &&
        opt_.end_of_word_suffix.empty()) {
      for (unsigned char b : piece) ids.push_back(byte_char_id_[b]);
      merge_all(ids);
      return;
    }
    // Rare paths (ignore_merges, bytes missing from the vocab): map to characters and go generic.
    std::string mapped;
    const auto& alpha = byte_level_alphabet();
    for (unsigned char b : piece) mapped += alpha.byte_to_utf8[b];
    if (opt_.ignore_merges) {
      auto it = vocab_.find(mapped);
      if (it != vocab_.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    symbols_of(mapped, ids);
    merge_all(ids);
    return;
  }
  if (opt_.ignore_merges) {
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  symbols_of(piece, ids);
  merge_all(ids);
}

// Initial symbols of a word: one per character; unknown characters become byte-fallback tokens
// when all their bytes exist, else unk (consecutive unks fused when fuse_unk), else nothing.
void BpeModel::symbols_of(std::string_view word, std::vector<int32_t>& ids) const {
  int32_t pending_unk = -1;  // an unk waiting to be fused with the next unknown character
  std::string buf;
  size_t i = 0;
  while (i < word.size()) {
    size_t start = i;
    unicode::utf8_next(word, i);
    std::string_view ch = word.substr(start, i - start);
    std::optional<int32_t> id;
    if (opt_.continuing_subword_prefix.empty() && opt_.end_of_word_suffix.empty()) {
      auto it = vocab_.find(ch);
      if (it != vocab_.end()) id = it->second;
    } else {
      buf.clear();
      if (start > 0) buf += opt_.continuing_subword_prefix;
      buf += ch;
      if (i == word.size()) buf += opt_.end_of_word_suffix;
      auto it = vocab_.find(buf);
      if (it != vocab_.end()) id = it->second;
    }
    if (id) {
      if (pending_unk >= 0) ids.push_back(pending_unk), pending_unk = -1;
      ids.push_back(*id);
      continue;
    }
    if (opt_.byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all &= byte_fallback_id_[b] >= 0;
      if (all) {
        if (pending_unk >= 0) ids.push_back(pending_unk), pending_unk = -1;
        for (unsigned char b : ch) ids.push_back(byte_fallback_id_[b]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !opt_.fuse_unk) ids.push_back(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) ids.push_back(pending_unk);
}

// Word::merge_all: a min-queue of (rank, position) over adjacent pairs; stale entries (a side was
// merged away since) are skipped. Symbols form a linked list over the initial positions.
void BpeModel::merge_all(std::vector<int32_t>& ids) const {
  const int n = int(ids.size());
  if (n < 2) return;
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    int32_t rank, pos, new_id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Sym> sym;
  thread_local std::vector<Cand> heap;  // std::*_heap on a reused buffer: no allocation per word
  sym.resize(n);
  for (int i = 0; i < n; ++i) sym[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1};
  heap.clear();
  auto push_pair = [&](int pos) {
    int nx = sym[pos].next;
    if (nx < 0) return;
    const MergeTable::Value* m = merges_.find(sym[pos].id, sym[nx].id);
    if (!m) return;
    heap.push_back({m->rank, pos, m->new_id});
    std::push_heap(heap.begin(), heap.end());
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    Cand c = heap.back();
    heap.pop_back();
    Sym& s = sym[c.pos];
    if (s.id < 0 || s.next < 0) continue;  // merged away, or nothing on the right anymore
    const MergeTable::Value* m = merges_.find(s.id, sym[s.next].id);
    if (!m || m->new_id != c.new_id) continue;  // stale
    int right = s.next;
    s.id = c.new_id;
    s.next = sym[right].next;
    sym[right].id = -1;
    if (s.next >= 0) sym[s.next].prev = c.pos;
    if (s.prev >= 0) push_pair(s.prev);
    push_pair(c.pos);
  }
  ids.clear();
  for (int i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
}

}  // namespace qlora::tok
