// SentencePieceModel: libsentencepiece with the model's normalizer switched off.
//
// The Debian package ships no sentencepiece_model.pb.h, so the few ModelProto fields we need
// (pieces, trainer_spec ids, normalizer_spec flags) are read straight from the protobuf wire
// format, and the normalizer_spec is overridden by appending fields (for a singular protobuf
// field the last occurrence wins).
#include <sentencepiece_processor.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "trainer/common/error.h"
#include "trainer/tokenizer/model.h"

namespace qlora::tok {

namespace {

// Minimal protobuf wire-format reader.
struct Wire {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;

  bool done() const { return !ok || p >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) return ok = false, 0;
      unsigned char b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    return ok = false, 0;
  }
  // Reads one field: number, wire type, and for length-delimited fields the payload.
  bool field(uint32_t& num, uint32_t& type, std::string_view& payload, uint64_t& scalar) {
    uint64_t key = varint();
    if (!ok) return false;
    num = uint32_t(key >> 3);
    type = uint32_t(key & 7);
    switch (type) {
      case 0: scalar = varint(); break;
      case 1:
        if (end - p < 8) return ok = false;
        std::memcpy(&scalar, p, 8), p += 8;
        break;
      case 2: {
        uint64_t n = varint();
        if (!ok || uint64_t(end - p) < n) return ok = false;
        payload = std::string_view(reinterpret_cast<const char*>(p), n);
        p += n;
        break;
      }
      case 5: {
        if (end - p < 4) return ok = false;
        uint32_t v;
        std::memcpy(&v, p, 4), p += 4;
        scalar = v;
        break;
      }
      default: return ok = false;
    }
    return ok;
  }
};

Wire wire_of(std::string_view s) {
  auto* b = reinterpret_cast<const unsigned char*>(s.data());
  return Wire{b, b + s.size()};
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) out += char((v & 0x7F) | 0x80), v >>= 7;
  out += char(v);
}
void put_key(std::string& out, uint32_t num, uint32_t type) { put_varint(out, (uint64_t(num) << 3) | type); }

}  // namespace

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceModel::SentencePieceModel(const std::string& path) : impl_(std::make_unique<Impl>()) {
  std::ifstream f(path, std::ios::binary);
  if (!f) user_error(path, ": cannot open the SentencePiece model");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string proto = ss.str();

  // Walk ModelProto: 1 pieces, 2 trainer_spec, 3 normalizer_spec; rebuild it with the
  // normalizer_spec overridden.
  std::string patched;
  patched.reserve(proto.size() + 32);
  bool saw_normalizer = false;
  Wire w = wire_of(proto);
  uint32_t num, type;
  std::string_view payload;
  uint64_t scalar;
  const unsigned char* field_start = w.p;
  while (!w.done()) {
    field_start = w.p;
    if (!w.field(num, type, payload, scalar)) break;
    std::string_view raw(reinterpret_cast<const char*>(field_start), w.p - field_start);
    if (num == 1 && type == 2) {
      Piece pc;
      Wire pw = wire_of(payload);
      uint32_t n2, t2;
      std::string_view pl2;
      uint64_t s2;
      while (!pw.done() && pw.field(n2, t2, pl2, s2)) {
        if (n2 == 1 && t2 == 2) pc.piece = std::string(pl2);
        if (n2 == 2 && t2 == 5) {
          uint32_t bits = uint32_t(s2);
          std::memcpy(&pc.score, &bits, 4);
        }
        if (n2 == 3 && t2 == 0) pc.type = int(s2);
      }
      if (!pw.ok) user_error(path, ": malformed SentencePiece model (piece ", spec_.pieces.size(), ")");
      spec_.pieces.push_back(std::move(pc));
      patched += raw;
    } else if (num == 2 && type == 2) {
      Wire tw = wire_of(payload);
      uint32_t n2, t2;
      std::string_view pl2;
      uint64_t s2;
      while (!tw.done() && tw.field(n2, t2, pl2, s2)) {
        if (t2 != 0) continue;
        int v = int(int64_t(s2));  // int32 fields: negatives are 10-byte two's complement
        switch (n2) {
          case 3: spec_.model_type = v; break;
          case 35: spec_.byte_fallback = s2 != 0; break;
          case 40: spec_.unk_id = v; break;
          case 41: spec_.bos_id = v; break;
          case 42: spec_.eos_id = v; break;
          case 43: spec_.pad_id = v; break;
        }
      }
      patched += raw;
    } else if (num == 3 && type == 2) {
      saw_normalizer = true;
      Wire nw = wire_of(payload);
      uint32_t n2, t2;
      std::string_view pl2;
      uint64_t s2;
      while (!nw.done() && nw.field(n2, t2, pl2, s2))
        if (n2 == 3 && t2 == 0) spec_.add_dummy_prefix = s2 != 0;
      // name "identity", empty precompiled_charsmap, add_dummy_prefix false,
      // remove_extra_whitespaces false.
      std::string ns(payload);
      put_key(ns, 1, 2), put_varint(ns, 8), ns += "identity";
      put_key(ns, 2, 2), put_varint(ns, 0);
      put_key(ns, 3, 0), put_varint(ns, 0);
      put_key(ns, 4, 0), put_varint(ns, 0);
      put_key(patched, 3, 2), put_varint(patched, ns.size()), patched += ns;
    } else {
      patched += raw;
    }
  }
  if (!w.ok || spec_.pieces.empty()) user_error(path, ": not a SentencePiece model (cannot parse its protobuf)");
  if (!saw_normalizer) {
    std::string ns;
    put_key(ns, 1, 2), put_varint(ns, 8), ns += "identity";
    put_key(ns, 3, 0), put_varint(ns, 0);
    put_key(ns, 4, 0), put_varint(ns, 0);
    put_key(patched, 3, 2), put_varint(patched, ns.size()), patched += ns;
  }
  auto st = impl_->sp.LoadFromSerializedProto(patched);
  if (!st.ok()) user_error(path, ": libsentencepiece cannot load it: ", st.ToString());
  for (size_t i = 0; i < spec_.pieces.size(); ++i) piece_to_id_.emplace(spec_.pieces[i].piece, int32_t(i));
}

SentencePieceModel::~SentencePieceModel() = default;

void SentencePieceModel::tokenize(std::string_view piece, std::vector<int32_t>& out) const {
  thread_local std::vector<int> ids;
  ids.clear();
  auto st = impl_->sp.Encode(piece, &ids);
  if (!st.ok()) throw std::runtime_error("sentencepiece Encode: " + st.ToString());
  out.insert(out.end(), ids.begin(), ids.end());
}

std::optional<int32_t> SentencePieceModel::token_to_id(std::string_view token) const {
  auto it = piece_to_id_.find(token);
  if (it == piece_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string* SentencePieceModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= spec_.pieces.size()) return nullptr;
  return &spec_.pieces[id].piece;
}

}  // namespace qlora::tok
