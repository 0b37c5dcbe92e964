// NF4 on the CPU: the instruction-set tables against the scalar definition, the quantization rules
// of docs/formats.md §1 on constructed inputs, and the linear ops against dequantize + matmul.
// (Compatibility with bitsandbytes itself is test_nf4_bnb.cpp.)
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/cpu/float_bits.h"
#include "kernels/cpu/nf4_cpu_isa.h"
#include "kernels/nf4.h"
#include "kernels/ops.h"

using namespace qlora;
using namespace qlora::kernels;
using cpu::Elem;

namespace {

// Fresh seed per run, printed so that a failure can be replayed (QLORA_TEST_SEED=...).
uint64_t test_seed() {
  static uint64_t seed = [] {
    if (const char* s = std::getenv("QLORA_TEST_SEED")) return static_cast<uint64_t>(std::stoull(s));
    return static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}();
  }();
  return seed;
}

struct SeedPrinter : ::testing::Environment {
  void SetUp() override { std::printf("[nf4_cpu] QLORA_TEST_SEED=%llu\n", (unsigned long long)test_seed()); }
};
const auto* kSeedEnv = ::testing::AddGlobalTestEnvironment(new SeedPrinter);

at::Generator gen(uint64_t salt) {
  return at::make_generator<at::CPUGeneratorImpl>(test_seed() ^ (salt * 0x9E3779B97F4A7C15ull));
}

// Restores the run-time table choice after a test that switches it.
struct IsaGuard {
  std::string saved = cpu::nf4_isa().name;
  ~IsaGuard() { cpu::nf4_isa_select(saved.c_str()); }
};

// Random floats with a spread of magnitudes plus specials sprinkled in.
std::vector<float> nasty_floats(size_t n, std::mt19937_64& rng, bool specials) {
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> pick(0, 99), ex(-30, 30);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = std::ldexp(nd(rng), ex(rng) / 3);
    if (!specials) continue;
    const int p = pick(rng);
    if (p == 0) x = std::nanf("");
    if (p == 1) x = INFINITY;
    if (p == 2) x = -INFINITY;
    if (p == 3) x = 1e-41f;  // subnormal
    if (p == 4) x = 0.f;
    if (p == 5) x = -0.f;
  }
  return v;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

std::vector<std::string> vector_isas() { return {"avx2", "avx512"}; }

}  // namespace

TEST(FloatBits, HalfAndBFloat16MatchC10) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ours = cpu::f16_to_f32(static_cast<uint16_t>(h));
    const float ref = static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()));
    ASSERT_TRUE(same_bits(ours, ref) || (std::isnan(ours) && std::isnan(ref))) << std::hex << h;
  }
  std::mt19937_64 rng(test_seed());
  std::vector<float> xs = nasty_floats(1 << 20, rng, true);
  // Exact tie and boundary cases of both formats.
  for (float f : {65504.f, 65519.99f, 65520.f, 65536.f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f,
                  1.0009766f, 1.0004883f, 1.0014648f, 3.3895314e38f, 1.00390625f, 1.01171875f})
    for (float s : {1.f, -1.f}) xs.push_back(s * f);
  for (float f : xs) {
    const uint16_t h = cpu::f32_to_f16(f), r = c10::Half(f).x;
    const uint16_t b = cpu::f32_to_bf16(f), rb = c10::BFloat16(f).x;
    if (std::isnan(f)) {
      EXPECT_TRUE((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) << f;
      EXPECT_EQ(b, static_cast<uint16_t>((cpu::f32_bits(f) >> 16) | 0x40));
      continue;
    }
    ASSERT_EQ(h, r) << "f32_to_f16(" << f << ")";
    ASSERT_EQ(b, rb) << "f32_to_bf16(" << f << ")";
  }
}

// Every vector table must give the scalar table's bits, on inputs that cover odd starts, odd
// lengths, every block size and the special values.
TEST(Nf4Isa, VectorTablesMatchScalar) {
  std::mt19937_64 rng(test_seed() + 1);
  const cpu::Nf4Isa& ref = cpu::nf4_isa_scalar();
  int tested = 0;
  for (const std::string& name : vector_isas()) {
    if (!cpu::nf4_isa_supported(name.c_str())) {
      std::printf("[ SKIPPED  ] %s: this CPU lacks it; its table is compiled but not run here\n", name.c_str());
      continue;
    }
    const cpu::Nf4Isa& isa = name == "avx2" ? cpu::nf4_isa_avx2() : cpu::nf4_isa_avx512();
    ++tested;
    for (int rep = 0; rep < 300; ++rep) {
      const int64_t n = std::uniform_int_distribution<int64_t>(1, 4500)(rng);
      std::vector<float> x = nasty_floats(n, rng, rep % 3 == 0);
      std::vector<uint16_t> xb(n), xh(n);
      for (int64_t i = 0; i < n; ++i) {
        xb[i] = cpu::f32_to_bf16(x[i]);
        xh[i] = cpu::f32_to_f16(x[i]);
      }
      for (Elem t : {Elem::F32, Elem::BF16, Elem::F16}) {
        const void* src = t == Elem::F32    ? static_cast<const void*>(x.data())
                          : t == Elem::BF16 ? static_cast<const void*>(xb.data())
                                            : static_cast<const void*>(xh.data());
        const float a0 = ref.absmax(src, t, n), a1 = isa.absmax(src, t, n);
        ASSERT_TRUE(same_bits(a0, a1)) << name << " absmax n=" << n << " " << a0 << " vs " << a1;
        const float scale = nf4::block_scale(a0);
        std::vector<uint8_t> q0((n + 1) / 2, 0xAA), q1((n + 1) / 2, 0x55);
        ref.quantize(src, t, n, scale, q0.data());
        isa.quantize(src, t, n, scale, q1.data());
        ASSERT_EQ(q0, q1) << name << " quantize n=" << n << " type " << int(t);
      }
      // dequant from an odd or even start, every output type
      std::vector<uint8_t> packed((n + 1) / 2 + 1);
      for (auto& b : packed) b = static_cast<uint8_t>(rng());
      const int64_t e0 = std::uniform_int_distribution<int64_t>(0, 3)(rng);
      const int64_t len = std::max<int64_t>(0, n - e0);
      const int64_t bs = int64_t(32) << (rng() % 4);
      std::vector<float> sc(len / bs + 2);
      for (auto& s : sc) {
        s = std::ldexp(1.f + (rng() % 1000) / 1000.f, int(rng() % 60) - 30);
        if (rng() % 7 == 0) s = INFINITY;  // NaN products (0 * inf)
        if (rng() % 11 == 0) s = 1e-40f;   // subnormal results
        if (rng() % 13 == 0) s = 3e38f;    // overflow to inf in bf16 / fp16
      }
      for (Elem t : {Elem::F32, Elem::BF16, Elem::F16}) {
        // One element more than written: data() is never null, even for len 0 (memcmp's contract).
        std::vector<uint32_t> d0(len + 1, 0xDEADBEEF), d1(len + 1, 0x12345678);
        ref.dequant(packed.data(), e0, len, sc.data(), bs, d0.data(), t);
        isa.dequant(packed.data(), e0, len, sc.data(), bs, d1.data(), t);
        const size_t bytes = len * (t == Elem::F32 ? 4 : 2);
        ASSERT_EQ(std::memcmp(d0.data(), d1.data(), bytes), 0) << name << " dequant e0=" << e0 << " len=" << len;
      }
    }
    // Fused products agree to float32 rounding (different summation order).
    for (int rep = 0; rep < 50; ++rep) {
      const int64_t bs = int64_t(32) << (rng() % 3);
      const int64_t K = std::uniform_int_distribution<int64_t>(1, 700)(rng);
      const int64_t e0 = std::uniform_int_distribution<int64_t>(0, 300)(rng);
      const int M = 1 + rng() % 4;
      std::vector<uint8_t> packed((e0 + K) / 2 + 1);
      for (auto& b : packed) b = static_cast<uint8_t>(rng());
      std::vector<float> sc(K / bs + 3), x(M * K), coef(M * 3);
      for (auto& v : sc) v = 0.5f + (rng() % 1000) / 1000.f;
      std::normal_distribution<float> nd;
      for (auto& v : x) v = nd(rng);
      for (auto& v : coef) v = nd(rng);
      float y0[4], y1[4];
      ref.dot_row(packed.data(), e0, K, sc.data(), bs, x.data(), K, M, y0);
      isa.dot_row(packed.data(), e0, K, sc.data(), bs, x.data(), K, M, y1);
      for (int m = 0; m < M; ++m) {
        double mag = 0;
        for (int64_t k = 0; k < K; ++k) mag += std::fabs(x[m * K + k]) * 1.5;
        EXPECT_NEAR(y0[m], y1[m], 1e-5 * mag + 1e-6) << name << " dot_row K=" << K << " e0=" << e0;
      }
      std::vector<float> a0(M * K, 0.25f), a1(M * K, 0.25f);
      ref.axpy_row(packed.data(), e0, K, sc.data(), bs, coef.data(), 3, M, a0.data(), K);
      isa.axpy_row(packed.data(), e0, K, sc.data(), bs, coef.data(), 3, M, a1.data(), K);
      for (int64_t i = 0; i < M * K; ++i)
        ASSERT_NEAR(a0[i], a1[i], 1e-5 * (std::fabs(a0[i]) + 1)) << name << " axpy_row";
    }
  }
  if (tested == 0) GTEST_SKIP() << "no vector instruction set on this CPU";
}

TEST(Nf4Isa, ChoiceIsReported) {
  const std::string name = cpu_isa_name();
  EXPECT_TRUE(name == "scalar" || name == "avx2" || name == "avx512") << name;
  if (!std::getenv("QLORA_CPU_ISA")) {
    if (cpu::nf4_isa_supported("avx512")) {
      EXPECT_EQ(name, "avx512");
    } else if (cpu::nf4_isa_supported("avx2")) {
      EXPECT_EQ(name, "avx2");
    }
  }
}

// The quantization rules on constructed values, for every table.
TEST(Nf4Quantize, RulesOfReference) {
  IsaGuard guard;
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    if (!cpu::nf4_isa_select(isa)) continue;
    SCOPED_TRACE(isa);
    // One block of 64 with absmax exactly 1: each value x is its own scaled value.
    std::vector<float> v(64, 0.f);
    v[0] = 1.f;
    for (int i = 0; i < 15; ++i) {
      v[1 + 2 * i] = nf4::kMidpoints[i];                       // on the midpoint: lower code
      v[2 + 2 * i] = std::nextafter(nf4::kMidpoints[i], 2.f);  // just above: upper code
    }
    v[31] = std::nanf("");
    v[32] = -1.f;
    v[33] = -0.f;
    at::Tensor x = at::from_blob(v.data(), {64}, at::kFloat).clone();
    NF4Tensor q = nf4_quantize(x, 64, false);
    ASSERT_EQ(q.absmax.item<float>(), 1.f);
    auto code = [&](int i) {
      uint8_t b = q.packed.data_ptr<uint8_t>()[i / 2];
      return (i & 1) ? b & 15 : b >> 4;
    };
    EXPECT_EQ(code(0), 15);
    for (int i = 0; i < 15; ++i) {
      EXPECT_EQ(code(1 + 2 * i), i) << "midpoint " << i;
      EXPECT_EQ(code(2 + 2 * i), i + 1) << "above midpoint " << i;
    }
    EXPECT_EQ(code(31), 0) << "NaN takes code 0";
    EXPECT_EQ(code(32), 0);
    EXPECT_EQ(code(33), 7);
    // NaN is ignored by absmax.
    v.assign(64, 0.5f);
    v[5] = std::nanf("");
    v[6] = -0.75f;
    EXPECT_EQ(nf4_quantize(at::from_blob(v.data(), {64}, at::kFloat).clone(), 64, false).absmax.item<float>(), 0.75f);
    // All-zero block: +0.0 (code 7), absmax 0; odd n pads the last low nibble with code 7.
    at::Tensor z = at::zeros({3, 33});
    NF4Tensor qz = nf4_quantize(z, 32, false);
    EXPECT_EQ(qz.packed.numel(), 50);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(qz.packed.data_ptr<uint8_t>()[i], 0x77);
    at::Tensor dz = nf4_dequantize(qz, at::kFloat);
    for (int i = 0; i < 99; ++i) EXPECT_TRUE(same_bits(dz.data_ptr<float>()[i], 0.f));
    EXPECT_EQ(dz.sizes(), z.sizes());
  }
}

// Dequantize is T(code * absmax) with one rounding; quantize then dequantize stays within half a
// code step of the input; every table agrees; bf16/fp16 inputs quantize like their float32 values.
TEST(Nf4Quantize, RoundTripAllBlocksizesAndDtypes) {
  IsaGuard guard;
  at::Generator g = gen(3);
  for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
    at::Tensor w = at::randn({37, 130}, g) * 0.02;  // blocks cross rows; n = 4810
    NF4Tensor ref;
    for (const char* isa : {"scalar", "avx2", "avx512"}) {
      if (!cpu::nf4_isa_select(isa)) continue;
      SCOPED_TRACE(std::string(isa) + " bs=" + std::to_string(bs));
      NF4Tensor q = nf4_quantize(w, bs, true);
      ASSERT_EQ(q.nblocks(), (4810 + bs - 1) / bs);
      if (!ref.packed.defined()) ref = q;
      EXPECT_TRUE(at::equal(q.packed, ref.packed));
      EXPECT_TRUE(at::equal(q.absmax, ref.absmax));
      EXPECT_TRUE(at::equal(q.nested_absmax, ref.nested_absmax));
      at::Tensor am = nf4_absmax(q);
      at::Tensor d32 = nf4_dequantize(q, at::kFloat);
      // Definition, element by element.
      const uint8_t* p = q.packed.data_ptr<uint8_t>();
      for (int64_t i = 0; i < 4810; i += 7) {
        const int c = (i & 1) ? (p[i / 2] & 15) : (p[i / 2] >> 4);
        const float expect = nf4::kCodes[c] * am.data_ptr<float>()[i / bs];
        ASSERT_TRUE(same_bits(d32.data_ptr<float>()[i], expect)) << i;
      }
      EXPECT_TRUE(at::equal(nf4_dequantize(q, at::kBFloat16), d32.to(at::kBFloat16)));
      EXPECT_TRUE(at::equal(nf4_dequantize(q, at::kHalf), d32.to(at::kHalf)));
      // Error bound: half the widest code gap (0.1609) times the block's absmax, plus the DQ error.
      at::Tensor err = (d32 - w).abs().view(-1);
      at::Tensor bound = am.repeat_interleave(bs).narrow(0, 0, 4810) * 0.1609 + 1e-3;
      EXPECT_TRUE((err <= bound).all().item<bool>());
      // bf16 / fp16 input: same codes as quantizing the (exactly converted) float32 values.
      for (at::ScalarType st : {at::kBFloat16, at::kHalf}) {
        at::Tensor wl = w.to(st);
        NF4Tensor ql = nf4_quantize(wl, bs, false), qf = nf4_quantize(wl.to(at::kFloat), bs, false);
        EXPECT_TRUE(at::equal(ql.packed, qf.packed));
        EXPECT_TRUE(at::equal(ql.absmax, qf.absmax));
        EXPECT_EQ(ql.dtype, st);
      }
    }
  }
}

// Double quantization: offset = mean(absmax); 8-bit codes are the exact nearest map entry of
// (absmax - offset) * (1/nested); reconstruction is two float32 roundings.
TEST(Nf4Quantize, DoubleQuantizedStatistics) {
  at::Generator g = gen(4);
  at::Tensor w = at::randn({1000, 64 * 3 + 32}, g) * at::rand({1000, 1}, g);
  NF4Tensor q = nf4_quantize(w, 32, true);
  NF4Tensor p = nf4_quantize(w, 32, false);
  ASSERT_TRUE(q.double_quant());
  const int64_t nb = q.nblocks();
  ASSERT_EQ(q.absmax.scalar_type(), at::kByte);
  ASSERT_EQ(q.nested_absmax.numel(), (nb + 255) / 256);
  EXPECT_TRUE(at::equal(q.packed, p.packed));
  const float offset = p.absmax.mean().item<float>();
  EXPECT_TRUE(same_bits(q.nested_offset, offset));
  at::Tensor map = dynamic_map(true);
  const float* m8 = map.data_ptr<float>();
  const float* am = p.absmax.data_ptr<float>();
  at::Tensor rec = nf4_absmax(q);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t nbk = b / 256;
    float nmax = 0;
    for (int64_t j = nbk * 256; j < std::min(nb, nbk * 256 + 256); ++j)
      nmax = std::fmax(nmax, std::fabs(am[j] - offset));
    ASSERT_TRUE(same_bits(q.nested_absmax.data_ptr<float>()[nbk], nmax));
    const float xs = (am[b] - offset) * (1.0f / nmax);
    const int c = q.absmax.data_ptr<uint8_t>()[b];
    for (int k = 0; k < 256; ++k)
      ASSERT_LE(std::fabs((double)m8[c] - xs), std::fabs((double)m8[k] - xs))
          << "block " << b << " code " << c << " vs " << k;
    volatile float prod = m8[c] * nmax;
    ASSERT_TRUE(same_bits(rec.data_ptr<float>()[b], prod + offset)) << b;
  }
  // Relative error of the reconstructed scales stays small (QLoRA: ~0.4% of the range).
  EXPECT_LT(((rec - p.absmax).abs().max() / p.absmax.max()).item<float>(), 0.01f);
}

// A constant tensor: every absmax equal, nested absmax 0; the scales come back exactly.
TEST(Nf4Quantize, ConstantTensorDoubleQuant) {
  at::Tensor w = at::full({4, 256}, 0.3f);
  NF4Tensor q = nf4_quantize(w, 64, true);
  EXPECT_TRUE(at::equal(nf4_absmax(q), at::full({16}, 0.3f)));
  EXPECT_TRUE(at::equal(nf4_dequantize(q, at::kFloat), w));
}

namespace {

double rel_err(const at::Tensor& a, const at::Tensor& ref) {
  const double den = ref.to(at::kDouble).norm().item<double>();
  return (a.to(at::kDouble) - ref.to(at::kDouble)).norm().item<double>() / std::max(den, 1e-30);
}

}  // namespace

// nf4_linear / nf4_linear_grad_input against dequantize + matmul in float32 (fresh random inputs),
// through both the fused (small M) and the tiled (large M) paths, every table and input dtype.
// The squared row norms DoRA starts from, without a dequantized copy: equal (in double) to those of
// the dequantized weight, for rows that start and end inside blocks (in % 64 != 0), odd element
// counts, and plain or double-quantized statistics.
TEST(Nf4RowSqNorms, EqualTheDequantizedWeights) {
  at::manual_seed(5);
  for (const auto& [rows, cols, bs, dq] : std::vector<std::tuple<int64_t, int64_t, int64_t, bool>>{
           {96, 64, 64, true}, {37, 100, 64, true}, {5, 33, 32, false}, {300, 257, 128, true}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
    const at::Tensor w = at::randn({rows, cols}) * 0.3;
    const kernels::NF4Tensor q = kernels::nf4_quantize(w, bs, dq);
    const at::Tensor ref = kernels::nf4_dequantize(q, at::kFloat).to(at::kDouble).pow(2).sum(1);
    const at::Tensor got = kernels::nf4_row_sq_norms(q);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{rows}));
    EXPECT_EQ(got.scalar_type(), at::kFloat);
    EXPECT_LE((got.to(at::kDouble) - ref).abs().div(ref).max().item<double>(), 1e-7);
  }
}

// The skinny (LoRA rank-r) product: every table gives the scalar table's bits, on strided and
// transposed inputs, ragged row counts and ranks that are not a multiple of the vector width;
// and the op equals a float64 product to float32 rounding, for any thread count.
TEST(SkinnyMm, TablesMatchScalarBitForBit) {
  std::mt19937_64 rng(test_seed() + 7);
  const cpu::Nf4Isa& ref = cpu::nf4_isa_scalar();
  int tested = 0;
  for (const std::string& name : vector_isas()) {
    if (!cpu::nf4_isa_supported(name.c_str())) continue;
    const cpu::Nf4Isa& isa = name == "avx2" ? cpu::nf4_isa_avx2() : cpu::nf4_isa_avx512();
    ++tested;
    for (int rep = 0; rep < 60; ++rep) {
      const int64_t rows = std::uniform_int_distribution<int64_t>(1, 150)(rng);
      const int64_t len = std::uniform_int_distribution<int64_t>(0, 300)(rng);
      const int64_t r = std::vector<int64_t>{1, 3, 7, 8, 9, 16, 20, 64}[rng() % 8];
      const bool trans = rng() % 2;  // a stored [len, rows] and read transposed
      std::vector<float> a = nasty_floats(rows * len + 1, rng, rep % 4 == 0), w = nasty_floats(len * r + 1, rng, false);
      const int64_t si = trans ? 1 : len, sk = trans ? rows : 1;
      const float alpha = rep % 3 == 0 ? 1.f : 0.37f;
      std::vector<float> o0(rows * r, 1.f), o1(rows * r, 2.f);
      ref.skinny(a.data(), si, sk, rows, len, w.data(), r, alpha, o0.data());
      isa.skinny(a.data(), si, sk, rows, len, w.data(), r, alpha, o1.data());
      for (int64_t i = 0; i < rows * r; ++i)
        ASSERT_TRUE(same_bits(o0[i], o1[i]) || (std::isnan(o0[i]) && std::isnan(o1[i])))
            << name << " skinny rows=" << rows << " len=" << len << " r=" << r << " trans=" << trans << " at " << i
            << ": " << o0[i] << " vs " << o1[i];
    }
  }
  if (tested == 0) GTEST_SKIP() << "no vector instruction set on this CPU";
}

TEST(SkinnyMm, EqualsFloat64Product) {
  IsaGuard guard;
  const int threads = at::get_num_threads();
  for (const char* table : {"scalar", "avx2", "avx512"}) {
    if (!cpu::nf4_isa_select(table)) continue;
    for (auto [M, L, r] : std::vector<std::array<int64_t, 3>>{
             {1, 5, 8}, {37, 64, 3}, {300, 257, 8}, {513, 1024, 16}, {64, 0, 8}, {0, 16, 8}, {9, 33, 65}}) {
      const at::Tensor x = at::randn({M, L}, gen(M * 131 + L)), w = at::randn({L, r}, gen(r + 5));
      const at::Tensor xt = at::randn({L, M}, gen(M + L * 7)).t();  // a transposed view, as dy^T
      for (const at::Tensor& a : {x, xt}) {
        at::Tensor ref = at::mm(a.to(at::kDouble), w.to(at::kDouble)) * 0.5;
        at::Tensor got = skinny_mm(a, w, 0.5);
        ASSERT_EQ(got.sizes(), ref.sizes());
        ASSERT_EQ(got.scalar_type(), at::kFloat);
        // |error| <= len * eps * sum |a||w| (fp32 FMA chain)
        const at::Tensor bound = at::mm(a.abs().to(at::kDouble), w.abs().to(at::kDouble)) * 0.5 * (L + 1) * 6e-8;
        EXPECT_TRUE(((got.to(at::kDouble) - ref).abs() <= bound + 1e-30).all().item<bool>())
            << table << " M=" << M << " L=" << L << " r=" << r;
        // The same bits with one thread as with all of them.
        at::set_num_threads(1);
        const at::Tensor one = skinny_mm(a, w, 0.5);
        at::set_num_threads(threads);
        EXPECT_TRUE(at::equal(one, got)) << table << " M=" << M << " differs between thread counts";
      }
    }
  }
  // Other dtypes go through at::mm.
  const at::Tensor xb = at::randn({5, 16}).to(at::kDouble), wb = at::randn({16, 4}).to(at::kDouble);
  EXPECT_TRUE(at::allclose(skinny_mm(xb, wb, 2.0), at::mm(xb, wb) * 2.0));
  EXPECT_THROW(skinny_mm(at::randn({3, 4}), at::randn({5, 2})), c10::Error);
}

TEST(Nf4Linear, MatchesDequantizeMatmul) {
  IsaGuard guard;
  at::Generator g = gen(5);
  struct Shape {
    int64_t N, K, bs;
    bool dq;
  };
  const Shape shapes[] = {{48, 64, 64, true}, {70, 96, 64, true},     {33, 130, 32, false},
                          {17, 33, 32, true}, {300, 256, 128, false}, {65, 4096 + 64, 4096, true}};
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    if (!cpu::nf4_isa_select(isa)) continue;
    for (const Shape& s : shapes) {
      NF4Tensor w = nf4_quantize(at::randn({s.N, s.K}, g) * 0.05, s.bs, s.dq);
      at::Tensor W = nf4_dequantize(w, at::kFloat);
      for (int64_t M : {1, 2, 3, 4, 5, 8, 9, 40}) {
        for (at::ScalarType st : {at::kFloat, at::kBFloat16, at::kHalf}) {
          SCOPED_TRACE(std::string(isa) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) +
                       " M=" + std::to_string(M) + " " + c10::toString(st));
          at::Tensor x = at::randn({M, s.K}, g).to(st);
          at::Tensor y = nf4_linear(x, w);
          ASSERT_EQ(y.scalar_type(), st);
          ASSERT_EQ(y.sizes(), (std::vector<int64_t>{M, s.N}));
          at::Tensor yref = at::matmul(x.to(at::kFloat), W.t());
          const double tol = st == at::kFloat ? 2e-6 : st == at::kBFloat16 ? 8e-3 : 1e-3;
          EXPECT_LT(rel_err(y, yref), tol);
          at::Tensor dy = at::randn({M, s.N}, g).to(st);
          at::Tensor dx = nf4_linear_grad_input(dy, w);
          ASSERT_EQ(dx.scalar_type(), st);
          ASSERT_EQ(dx.sizes(), (std::vector<int64_t>{M, s.K}));
          EXPECT_LT(rel_err(dx, at::matmul(dy.to(at::kFloat), W)), tol);
        }
      }
    }
  }
}

TEST(Nf4Linear, BatchedShapesAndEmpty) {
  at::Generator g = gen(6);
  NF4Tensor w = nf4_quantize(at::randn({24, 64}, g), 64, true);
  at::Tensor W = nf4_dequantize(w, at::kFloat);
  at::Tensor x = at::randn({2, 3, 64}, g);
  at::Tensor y = nf4_linear(x, w);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 24}));
  EXPECT_LT(rel_err(y, at::matmul(x, W.t())), 2e-6);
  EXPECT_EQ(nf4_linear(at::randn({0, 64}), w).sizes(), (std::vector<int64_t>{0, 24}));
  EXPECT_EQ(nf4_linear_grad_input(at::randn({2, 0, 24}), w).sizes(), (std::vector<int64_t>{2, 0, 64}));
  EXPECT_THROW(nf4_linear(at::randn({2, 63}), w), c10::Error);
  EXPECT_THROW(nf4_linear_grad_input(at::randn({2, 23}), w), c10::Error);
}
