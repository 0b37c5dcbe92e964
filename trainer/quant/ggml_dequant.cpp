#include "trainer/quant/ggml_dequant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>

#include "trainer/common/error.h"
#include "trainer/io/gguf_reader.h"

namespace qlora::quant {

namespace {
using io::GgmlType;

float h2f(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return static_cast<float>(c10::Half(b, c10::Half::from_bits()));
}

// Each routine turns one block at `b` into its elements at `y`.
void block_q8_0(const uint8_t* b, float* y) {  // f16 d, int8 q[32]
  const float d = h2f(b);
  const auto* q = reinterpret_cast<const int8_t*>(b + 2);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(q[i]);
}

void block_q4_0(const uint8_t* b, float* y) {  // f16 d, u8 qs[16]: low nibbles first, minus 8
  const float d = h2f(b);
  const uint8_t* q = b + 2;
  for (int i = 0; i < 16; ++i) {
    y[i] = d * static_cast<float>((q[i] & 0xF) - 8);
    y[i + 16] = d * static_cast<float>((q[i] >> 4) - 8);
  }
}

void block_q4_1(const uint8_t* b, float* y) {  // f16 d, f16 m, u8 qs[16]
  const float d = h2f(b), m = h2f(b + 2);
  const uint8_t* q = b + 4;
  for (int i = 0; i < 16; ++i) {
    y[i] = d * static_cast<float>(q[i] & 0xF) + m;
    y[i + 16] = d * static_cast<float>(q[i] >> 4) + m;
  }
}

// The 6-bit scale and min of sub-block j out of a K-quant's 12 packed scale bytes.
void scale_min_k4(int j, const uint8_t* s, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

void block_q4_k(const uint8_t* b, float* y) {  // f16 d, f16 dmin, scales[12], qs[128]
  const float d = h2f(b), dmin = h2f(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    uint8_t sc, m;
    scale_min_k4(is, scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

void block_q5_k(const uint8_t* b, float* y) {  // f16 d, f16 dmin, scales[12], qh[32], qs[128]
  const float d = h2f(b), dmin = h2f(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32) {
    uint8_t sc, m;
    scale_min_k4(is, scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void block_q6_k(const uint8_t* b, float* y) {  // ql[128], qh[64], int8 scales[16], f16 d
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = h2f(b + 208);
  for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}

void block_f32(const uint8_t* b, float* y) { std::memcpy(y, b, 4); }
void block_f16(const uint8_t* b, float* y) { *y = h2f(b); }
void block_bf16(const uint8_t* b, float* y) {
  uint16_t v;
  std::memcpy(&v, b, 2);
  *y = static_cast<float>(c10::BFloat16(v, c10::BFloat16::from_bits()));
}

using BlockFn = void (*)(const uint8_t*, float*);
BlockFn block_fn(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return block_f32;
    case GgmlType::F16: return block_f16;
    case GgmlType::BF16: return block_bf16;
    case GgmlType::Q8_0: return block_q8_0;
    case GgmlType::Q4_0: return block_q4_0;
    case GgmlType::Q4_1: return block_q4_1;
    case GgmlType::Q4_K: return block_q4_k;
    case GgmlType::Q5_K: return block_q5_k;
    case GgmlType::Q6_K: return block_q6_k;
    default: return nullptr;
  }
}
}  // namespace

bool ggml_can_dequantize(uint32_t type) { return block_fn(type) != nullptr; }

void ggml_to_float(uint32_t type, std::span<const uint8_t> bytes, int64_t n, float* out) {
  const BlockFn fn = block_fn(type);
  const auto layout = io::ggml_block_layout(type);
  TORCH_CHECK(fn && layout, "ggml_to_float: unsupported ggml type ", io::ggml_type_name(type));
  const int64_t block = layout->first, bsize = layout->second;
  TORCH_CHECK(n % block == 0 && static_cast<uint64_t>(n / block * bsize) == bytes.size(),
              "ggml_to_float: ", bytes.size(), " bytes do not hold ", n, " ", io::ggml_type_name(type), " elements");
  const uint8_t* src = bytes.data();
  at::parallel_for(0, n / block, 4096 / block + 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) fn(src + i * bsize, out + i * block);
  });
}

at::Tensor gguf_tensor_f32(const io::GgufFile& f, const std::string& name) {
  const io::GgufTensorInfo* t = f.find(name);
  if (!t) user_error(f.path().string(), ": ", name, ": missing from the GGUF file");
  if (!ggml_can_dequantize(t->type))
    user_error(f.path().string(), ": ", name, ": ggml type ", io::ggml_type_name(t->type),
               " cannot be read (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)");
  at::Tensor out = at::empty(t->shape(), at::kFloat);
  ggml_to_float(t->type, f.bytes(name), t->numel(), out.data_ptr<float>());
  return out;
}

}  // namespace qlora::quant
