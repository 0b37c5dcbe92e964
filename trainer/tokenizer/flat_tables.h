// Open-addressing tables for the BPE hot path (node-based std::unordered_map lookups were a
// third of the encode time): the merge ranks, and the pre-token -> ids cache.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace qlora::tok {

inline uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// 64-bit hash of a short byte string: 8 bytes at a time, then the tail.
inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = mix64(h ^ w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  return mix64(h ^ tail ^ (uint64_t(s.size() - i) << 56));
}

// (left id, right id) -> (rank, merged id); linear probing at load <= 1/2.
class MergeTable {
 public:
  struct Value {
    int32_t rank, new_id;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, {0, 0}});
    mask_ = cap - 1;
  }
  // Keeps the first value inserted for a key (the lowest rank).
  void insert(int32_t a, int32_t b, Value v) {
    uint64_t k = key(a, b);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == k) return;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {k, v};
        return;
      }
    }
  }
  const Value* find(int32_t a, int32_t b) const {
    uint64_t k = key(a, b);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == k) return &slots_[i].v;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are non-negative, so no real key is this
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  struct Slot {
    uint64_t key;
    Value v;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Pre-token bytes -> ids, keys and ids stored in two arenas. Grows by doubling up to
// `max_entries`, then stops inserting (like tokenizers' own bounded cache). Not synchronized:
// the owner locks.
class PieceCache {
 public:
  explicit PieceCache(size_t max_entries) : max_entries_(max_entries) { rehash(1024); }
  size_t size() const { return size_; }
  // Appends the cached ids of `key` to out; false when absent.
  bool get(std::string_view key, uint64_t h, std::vector<int32_t>& out) const {
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key_len == kEmpty) return false;
      if (s.hash == h && s.key_len == key.size() &&
          std::memcmp(keys_.data() + s.key_off, key.data(), key.size()) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.ids_len);
        return true;
      }
    }
  }
  void put(std::string_view key, uint64_t h, const std::vector<int32_t>& ids) {
    if (size_ >= max_entries_) return;
    if (2 * (size_ + 1) > slots_.size()) rehash(slots_.size() * 2);
    size_t i = h & mask_;
    for (;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key_len == kEmpty) break;
      if (s.hash == h && s.key_len == key.size() && std::memcmp(keys_.data() + s.key_off, key.data(), key.size()) == 0)
        return;  // another thread got here first
    }
    slots_[i] = {h, uint32_t(keys_.size()), uint32_t(key.size()), uint32_t(ids_.size()), uint32_t(ids.size())};
    keys_.insert(keys_.end(), key.begin(), key.end());
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    ++size_;
  }

 private:
  static constexpr uint32_t kEmpty = ~uint32_t(0);
  struct Slot {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, ids_len;
  };
  void rehash(size_t cap) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(cap, Slot{0, 0, kEmpty, 0, 0});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.key_len == kEmpty) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].key_len != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::vector<char> keys_;
  std::vector<int32_t> ids_;
  size_t mask_ = 0, size_ = 0, max_entries_;
};

}  // namespace qlora::tok
