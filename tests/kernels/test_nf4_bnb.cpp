// NF4 compatibility with bitsandbytes 0.50.2 on the CPU (the judge: tests/python/nf4_bnb.py).
//
// Fresh random inputs each run (seed printed; QLORA_TEST_SEED replays), > 10 million normal values
// plus edge cases. What must hold (docs/formats.md §1, kernels/README.md "Compatibility"):
//  - dequantizing the same packed bytes + statistics gives bit-identical output (f32, bf16, fp16),
//    both for our bytes (bitsandbytes dequantizes them) and for bitsandbytes' bytes (we do);
//  - our packed codes equal bitsandbytes' except (a) NaN / inf inputs and blocks holding a NaN
//    (deliberate: we follow the CUDA kernels), and (b) values within a few ulps of a midpoint in a
//    partial last block, where bitsandbytes' CPU path divides by absmax instead of multiplying by
//    the reciprocal; for (b) we check that our code is the CUDA rule's and bitsandbytes' is the
//    division's. Counted and printed.
//  - float absmax equal, except NaN blocks and a partial last block with absmax < 1e-38 (bnb
//    stores its clamp there); with double quantization: offset and nested absmax equal, the
//    absmax bnb reconstructs from our statistics equals ours bit for bit, and where our 8-bit
//    code differs from bnb-CPU's coarse-table pick, ours is the nearest map entry. Counted.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "kernels/nf4.h"
#include "kernels/ops.h"
#include "tests/common/harness.h"

using namespace qlora;
using namespace qlora::kernels;
namespace stdfs = std::filesystem;

namespace {

uint64_t test_seed() {
  static uint64_t seed = [] {
    if (const char* s = std::getenv("QLORA_TEST_SEED")) return static_cast<uint64_t>(std::stoull(s));
    return static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}();
  }();
  return seed;
}

struct Case {
  std::string name;
  at::Tensor x;  // input, its own dtype
  int64_t bs;
  bool dq;
  NF4Tensor ours;       // with the case's dq setting
  NF4Tensor ours_nodq;  // plain float absmax
};

void write_raw(const stdfs::path& p, const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  std::ofstream f(p, std::ios::binary);
  f.write(static_cast<const char*>(c.data_ptr()), c.nbytes());
  ASSERT_TRUE(f.good()) << p;
}

at::Tensor read_raw(const stdfs::path& p, at::ScalarType dtype, int64_t numel) {
  at::Tensor t = at::empty({numel}, dtype);
  std::ifstream f(p, std::ios::binary);
  f.read(static_cast<char*>(t.data_ptr()), t.nbytes());
  EXPECT_TRUE(f.good() && f.gcount() == static_cast<std::streamsize>(t.nbytes())) << p;
  return t;
}

const char* dtype_name(at::ScalarType t) {
  return t == at::kFloat ? "float32" : t == at::kBFloat16 ? "bfloat16" : "float16";
}

int code_of(const uint8_t* packed, int64_t i) { return (i & 1) ? (packed[i / 2] & 15) : (packed[i / 2] >> 4); }

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

double ulp_at(float v) { return std::nextafter(std::fabs(v), INFINITY) - std::fabs(v); }

// Inputs whose scaled value lands within a few ulps of a midpoint.
void fill_ties(float* p, int64_t n, float a, std::mt19937_64& rng) {
  p[0] = a;  // the block's absmax
  for (int64_t i = 1; i < n; ++i) {
    const float mid = nf4::kMidpoints[rng() % 15];
    float v = mid * a;
    const int k = static_cast<int>(rng() % 7) - 3;
    for (int j = 0; j < std::abs(k); ++j) v = std::nextafter(v, k > 0 ? INFINITY : -INFINITY);
    p[i] = v;
  }
}

// Blocks of 64 covering the special values (see the list in the file comment), n odd.
at::Tensor edge_tensor(std::mt19937_64& rng, bool with_nan_inf) {
  const int64_t bs = 64, nfull = 12, tail = 37;
  std::vector<float> v((nfull * bs) + tail);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ur(0.f, 1.f);
  auto blk = [&](int b) { return v.data() + b * bs; };
  for (float& x : v) x = nd(rng);
  std::fill(blk(0), blk(1), 0.f);
  std::fill(blk(1), blk(2), -0.f);
  if (with_nan_inf) {
    blk(2)[5] = std::nanf("");
    blk(3)[7] = INFINITY;
    blk(4)[9] = -INFINITY;
    std::fill(blk(5), blk(6), std::nanf(""));
  } else {
    for (int i = 0; i < bs; ++i) blk(5)[i] = nd(rng) * 1e-20f;
  }
  for (int i = 0; i < bs; ++i) blk(6)[i] = (ur(rng) - 0.5f) * 2e-38f;  // mostly subnormals
  blk(6)[3] = 1.4e-45f;                                                // smallest subnormal
  for (int i = 0; i < bs; ++i) blk(7)[i] = nd(rng) * 1e-30f;
  // Very large. With double quantization the mean of absmax must stay finite (a float32 sum
  // past FLT_MAX makes every statistic NaN, in bitsandbytes as here), so 1e30 there.
  for (int i = 0; i < bs; ++i) blk(8)[i] = nd(rng) * (with_nan_inf ? 1e38f : 1e30f);
  if (with_nan_inf) blk(8)[0] = 3.4028235e38f;  // FLT_MAX
  for (int i = 0; i < bs; ++i) blk(9)[i] = nd(rng) * 1e-10f;
  blk(9)[11] = -1e30f;
  fill_ties(blk(10), bs, std::exp(nd(rng)), rng);
  fill_ties(blk(11), bs, 1.0f, rng);
  fill_ties(blk(12), tail, std::exp(nd(rng)), rng);  // partial last block: bnb divides here
  return at::from_blob(v.data(), {static_cast<int64_t>(v.size())}, at::kFloat).clone();
}

// bitsandbytes 0.50's CPU quantize_4bit, modelled: scaled = x * (1/absmax) (a full block) or
// x / absmax (the partial last block), absmax clamped to >= 1e-38, clamped to [-1, 1], then
// bucketize against float32 means of neighbouring codes (ties low).
int model_bnb_cpu_code(float x, float absmax, bool partial_block) {
  const float a = std::max(absmax, nf4::kMinAbsmax);
  float s = partial_block ? x / a : x * (1.0f / a);
  if (std::isnan(s)) return 15;  // bucketize puts NaN past every boundary
  s = std::min(1.f, std::max(-1.f, s));
  int c = 0;
  for (int i = 0; i < 15; ++i) c += s > (nf4::kCodes[i] + nf4::kCodes[i + 1]) / 2.0f;
  return c;
}

struct Counts {
  int64_t n = 0, codes_special = 0, codes_nan_block = 0, codes_tie_midpoint = 0, codes_tie_division = 0,
          codes_other = 0;
  int64_t absmax_nan_block = 0, absmax_tiny_tail = 0, absmax_other = 0;
};

class Nf4Bnb : public ::testing::Test {
 protected:
  static inline std::vector<Case> cases;
  static inline stdfs::path dir;
  static inline bool ready = false;
  static inline std::string python_log;

  static void SetUpTestSuite() {
    std::printf("[nf4_bnb] QLORA_TEST_SEED=%llu\n", (unsigned long long)test_seed());
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(test_seed());
    std::mt19937_64 rng(test_seed() + 17);
    auto add = [&](std::string name, at::Tensor x, int64_t bs, bool dq) {
      cases.push_back({std::move(name), x.contiguous(), bs, dq, {}, {}});
    };
    add("normal", at::randn({2560, 4096}, g) * 0.02, 64, true);  // 10,485,760 values
    add("normal_bf16", at::randn({1024, 1536}, g).to(at::kBFloat16), 64, true);
    add("normal_f16", (at::randn({768, 1000}, g) * 3).to(at::kHalf), 128, true);
    for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
      add("bs" + std::to_string(bs), at::randn({41, 1000}, g) * 0.1, bs, true);         // blocks cross rows
      add("odd_bs" + std::to_string(bs), at::randn({41, 999}, g) * 0.1, bs, bs != 64);  // odd element count
    }
    add("nodq_odd", at::randn({333, 333}, g), 64, false);
    add("rows_cross", at::randn({96, 50}, g), 64, true);
    add("edge_special", edge_tensor(rng, true), 64, false);
    add("edge_special_rows", edge_tensor(rng, true).view({35, 23}), 64, false);
    add("edge_dq", edge_tensor(rng, false), 64, true);
    add("edge_dq_bs32", edge_tensor(rng, false), 32, true);
    add("magnitudes", at::randn({64, 130}, g) * at::pow(10.0, at::randint(-35, 36, {64, 1}, g).to(at::kFloat)), 64,
        true);
    // Rows that are a multiple of 16 but not of the blocksize: blocks cross rows where bitsandbytes'
    // AVX-512 CPU dequantize kernel takes its vector branch, which assumes whole blocks per row (the
    // judge hands it the flattened tensor instead: tests/python/bnb_fp32.py). The shapes of the
    // down_proj weights of the generate and bnb-checkpoint fixtures.
    add("rows_cross_n16", at::randn({64, 96}, g) * 0.05, 64, true);
    add("rows_cross_n16_nodq", at::randn({128, 352}, g) * 0.05, 64, false);

    dir = test::temp_dir("nf4_bnb");
    std::ofstream manifest(dir / "cases.txt");
    for (Case& c : cases) {
      c.ours = nf4_quantize(c.x, c.bs, c.dq);
      c.ours_nodq = c.dq ? nf4_quantize(c.x, c.bs, false) : c.ours;
      write_raw(dir / (c.name + ".x"), c.x);
      write_raw(dir / (c.name + ".packed"), c.ours.packed);
      write_raw(dir / (c.name + ".absmax"), c.ours.absmax);
      if (c.dq) {
        write_raw(dir / (c.name + ".nested"), c.ours.nested_absmax);
        write_raw(dir / (c.name + ".offset"), at::full({1}, c.ours.nested_offset));
      }
      manifest << c.name << ' ' << dtype_name(c.x.scalar_type()) << ' ' << c.bs << ' ' << (c.dq ? 1 : 0) << ' '
               << c.x.dim();
      for (int64_t s : c.x.sizes()) manifest << ' ' << s;
      manifest << '\n';
    }
    manifest.close();
    test::ProcResult r = test::run_python("nf4_bnb.py", {dir.string()});
    python_log = r.output;
    ready = r.code == 0;
  }

  static void TearDownTestSuite() {
    if (ready) stdfs::remove_all(dir);  // 300 MB of fixtures; kept on failure for inspection
  }

  static stdfs::path file(const Case& c, const std::string& suffix) { return dir / (c.name + "." + suffix); }
};

TEST_F(Nf4Bnb, CasesCoverTheBrief) {
  ASSERT_TRUE(ready) << python_log;
  int64_t normal = 0;
  for (const Case& c : cases)
    if (c.name.rfind("normal", 0) == 0) normal += c.x.numel();
  EXPECT_GE(normal, 10'000'000);
  std::printf("%s", python_log.c_str());
}

// Dequantizing the same bytes + statistics: bit-identical, ours vs bitsandbytes', both ways.
TEST_F(Nf4Bnb, DequantizeSameBytesIsBitIdentical) {
  ASSERT_TRUE(ready) << python_log;
  int64_t checked = 0, nan_outputs = 0, nan_payload = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t n = c.x.numel(), nb = c.ours.nblocks();
    // bitsandbytes' own quantization as an NF4Tensor (what a bnb checkpoint holds).
    NF4Tensor theirs;
    theirs.blocksize = c.bs;
    theirs.shape = c.x.sizes().vec();
    theirs.dtype = c.x.scalar_type();
    if (c.dq) {
      theirs.packed = read_raw(file(c, "bnb_packed_dq"), at::kByte, (n + 1) / 2);
      theirs.absmax = read_raw(file(c, "bnb_qabsmax"), at::kByte, nb);
      theirs.nested_absmax = read_raw(file(c, "bnb_nested"), at::kFloat, (nb + 255) / 256);
      theirs.nested_offset = read_raw(file(c, "bnb_offset"), at::kFloat, 1).item<float>();
    } else {
      theirs.packed = read_raw(file(c, "bnb_packed"), at::kByte, (n + 1) / 2);
      theirs.absmax = read_raw(file(c, "bnb_absmax_f32"), at::kFloat, nb);
    }
    for (auto [tag, st] : {std::pair{"f32", at::kFloat}, {"bf16", at::kBFloat16}, {"f16", at::kHalf}}) {
      for (auto [who, w] : {std::pair{"ours", &c.ours}, {"bnb", &theirs}}) {
        at::Tensor mine = nf4_dequantize(*w, st).contiguous().view(-1);
        at::Tensor ref = read_raw(file(c, std::string("bnb_deq_") + who + "_" + tag), st, n);
        ASSERT_EQ(mine.sizes(), ref.sizes());
        at::Tensor bits_m = st == at::kFloat ? mine.view(at::kInt) : mine.view(at::kShort);
        at::Tensor bits_r = st == at::kFloat ? ref.view(at::kInt) : ref.view(at::kShort);
        // NaN payloads: bitsandbytes' C++ kernel (even last dim) truncates like ours; its torch
        // fallback (odd last dim) converts with ATen's vectorized rule (bf16 NaN -> 0xFFFF). Any NaN
        // matches any NaN; payload differences are counted.
        at::Tensor nan_both = at::isnan(mine) & at::isnan(ref);
        at::Tensor differ = (bits_m != bits_r) & ~nan_both;
        const int64_t bad = differ.sum().item<int64_t>();
        if (bad) {
          const int64_t i = differ.nonzero()[0][0].item<int64_t>();
          ADD_FAILURE() << who << " bytes, " << tag << ": " << bad << " elements differ; first at " << i << ": ours "
                        << mine[i].item<float>() << " (bits " << std::hex << (bits_m[i].item<int64_t>() & 0xFFFFFFFF)
                        << ") bnb " << ref[i].item<float>() << " (bits " << (bits_r[i].item<int64_t>() & 0xFFFFFFFF)
                        << std::dec << ")";
        }
        nan_outputs += at::isnan(mine).sum().item<int64_t>();
        const int64_t payload = (nan_both & (bits_m != bits_r)).sum().item<int64_t>();
        EXPECT_TRUE(payload == 0 || c.x.size(-1) % 2 == 1) << "NaN payload differs on bnb's C++ kernel path";
        nan_payload += payload;
        checked += n;
      }
    }
  }
  std::printf(
      "[nf4_bnb] dequantize: %lld outputs compared bit for bit; %lld are NaN on both sides, of which %lld "
      "differ in payload (bnb's torch fallback for odd shapes)\n",
      (long long)checked, (long long)nan_outputs, (long long)nan_payload);
}

// Our codes vs bitsandbytes' codes, and the float absmax.
TEST_F(Nf4Bnb, CodesAndAbsmaxMatchExceptDocumentedCases) {
  ASSERT_TRUE(ready) << python_log;
  Counts total;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Counts k;
    const int64_t n = c.x.numel(), nb = c.ours.nblocks(), bs = c.bs;
    k.n = n;
    at::Tensor xf = c.x.to(at::kFloat).contiguous().view(-1);
    const float* x = xf.data_ptr<float>();
    at::Tensor bp = read_raw(file(c, "bnb_packed"), at::kByte, (n + 1) / 2);
    if (c.dq) { EXPECT_TRUE(at::equal(bp, read_raw(file(c, "bnb_packed_dq"), at::kByte, (n + 1) / 2))); }
    at::Tensor bam = read_raw(file(c, "bnb_absmax_f32"), at::kFloat, nb);
    const uint8_t* ours = c.ours.packed.data_ptr<uint8_t>();
    const uint8_t* theirs = bp.data_ptr<uint8_t>();
    const float* oam = c.ours_nodq.absmax.data_ptr<float>();
    const float* tam = bam.data_ptr<float>();
    std::vector<bool> nan_block(nb, false);
    for (int64_t i = 0; i < n; ++i)
      if (std::isnan(x[i])) nan_block[i / bs] = true;
    // absmax
    for (int64_t b = 0; b < nb; ++b) {
      if (same_bits(oam[b], tam[b])) continue;
      const bool tail = b == nb - 1 && n % bs != 0;
      if (nan_block[b] && std::isnan(tam[b])) {
        ++k.absmax_nan_block;  // bnb: max propagates NaN; ours (and CUDA's fmaxf) ignores it
      } else if (tail && oam[b] < nf4::kMinAbsmax && tam[b] == nf4::kMinAbsmax) {
        ++k.absmax_tiny_tail;  // bnb stores its 1e-38 clamp for the partial last block only
      } else {
        ++k.absmax_other;
        ADD_FAILURE() << "absmax block " << b << ": ours " << oam[b] << " bnb " << tam[b];
      }
    }
    // codes (padding nibble of an odd count included: both 7)
    for (int64_t i = 0; i < n + (n & 1); ++i) {
      const int co = code_of(ours, i), ct = code_of(theirs, i);
      if (i == n) {
        EXPECT_EQ(co, nf4::kPadCode);
        EXPECT_EQ(ct, nf4::kPadCode);
        continue;
      }
      if (co == ct) continue;
      const int64_t b = i / bs;
      const float a = oam[b];
      const float cuda_scaled = x[i] * nf4::block_scale(a);  // CUDA: x * (1/absmax)
      ASSERT_EQ(co, nf4::quantize_scaled(cuda_scaled)) << "element " << i;
      if (std::isnan(x[i]) || std::isinf(x[i])) {
        // CUDA: NaN (and inf * (1/inf) = NaN) fail every comparison -> code 0; bnb-CPU's
        // bucketize puts NaN past the last midpoint -> code 15.
        EXPECT_EQ(co, 0);
        ++k.codes_special;
      } else if (nan_block[b]) {
        ++k.codes_nan_block;  // bnb's absmax is NaN there: every code of the block becomes 15
        EXPECT_EQ(ct, 15);
      } else {
        // A near-tie: adjacent codes, the exact quotient within 4 ulps of the midpoint between
        // them, and bnb's code is exactly what its CPU path computes (model_bnb_cpu_code). The
        // two reasons: its midpoints are float32 means of the codes, 1 ulp off the CUDA literals
        // at 4 of the 15 midpoints; and it divides by absmax in the partial last block.
        const int lo = std::min(co, ct);
        const double q = static_cast<double>(x[i]) / std::max(a, nf4::kMinAbsmax);
        const float mid = nf4::kMidpoints[lo];
        const bool tie = std::abs(co - ct) == 1 && std::fabs(q - mid) <= 4 * ulp_at(mid);
        const bool tail = b == nb - 1 && n % bs != 0;
        if (tie && ct == model_bnb_cpu_code(x[i], a, tail)) {
          ++(tail ? k.codes_tie_division : k.codes_tie_midpoint);
        } else {
          ++k.codes_other;
          ADD_FAILURE() << "code of element " << i << " x=" << x[i] << " absmax=" << a << ": ours " << co << " bnb "
                        << ct << " (x/absmax=" << q << ")";
        }
      }
    }
    std::printf(
        "[nf4_bnb] %-18s n=%-9lld codes differ: nan/inf %lld, nan-block %lld, tie(midpoint const) %lld, "
        "tie(division) %lld; absmax differ: nan-block %lld, tiny-tail %lld\n",
        c.name.c_str(), (long long)n, (long long)k.codes_special, (long long)k.codes_nan_block,
        (long long)k.codes_tie_midpoint, (long long)k.codes_tie_division, (long long)k.absmax_nan_block,
        (long long)k.absmax_tiny_tail);
    total.n += n;
    total.codes_special += k.codes_special;
    total.codes_nan_block += k.codes_nan_block;
    total.codes_tie_midpoint += k.codes_tie_midpoint;
    total.codes_tie_division += k.codes_tie_division;
    total.absmax_nan_block += k.absmax_nan_block;
    total.absmax_tiny_tail += k.absmax_tiny_tail;
  }
  std::printf(
      "[nf4_bnb] TOTAL n=%lld codes differ: nan/inf %lld, nan-block %lld, tie(midpoint const) %lld, "
      "tie(division) %lld, other 0; absmax differ: nan-block %lld, tiny-tail %lld\n",
      (long long)total.n, (long long)total.codes_special, (long long)total.codes_nan_block,
      (long long)total.codes_tie_midpoint, (long long)total.codes_tie_division, (long long)total.absmax_nan_block,
      (long long)total.absmax_tiny_tail);
}

// Double quantization: offset, nested absmax, 8-bit codes, and the reconstructed absmax.
TEST_F(Nf4Bnb, DoubleQuantizedStatistics) {
  ASSERT_TRUE(ready) << python_log;
  at::Tensor map = dynamic_map(true);
  const float* m8 = map.data_ptr<float>();
  int64_t total = 0, diff = 0, tie = 0;
  int maxgap = 0;  // how far (in map indices) bnb-CPU's pick is from the nearest entry
  for (const Case& c : cases) {
    if (!c.dq) continue;
    SCOPED_TRACE(c.name);
    const int64_t nb = c.ours.nblocks(), nn = (nb + 255) / 256;
    const float offset = read_raw(file(c, "bnb_offset"), at::kFloat, 1).item<float>();
    EXPECT_TRUE(same_bits(offset, c.ours.nested_offset)) << "offset ours " << c.ours.nested_offset << " bnb " << offset;
    at::Tensor nested = read_raw(file(c, "bnb_nested"), at::kFloat, nn);
    EXPECT_TRUE(at::equal(nested, c.ours.nested_absmax)) << "nested absmax";
    // absmax bnb reconstructs from our statistics == ours, bit for bit; and from its own.
    at::Tensor rec_ours = read_raw(file(c, "bnb_rec_ours"), at::kFloat, nb);
    EXPECT_TRUE(at::equal(rec_ours.view(at::kInt), nf4_absmax(c.ours).view(at::kInt)));
    NF4Tensor theirs = c.ours;
    theirs.absmax = read_raw(file(c, "bnb_qabsmax"), at::kByte, nb);
    theirs.nested_absmax = nested;
    theirs.nested_offset = offset;
    at::Tensor rec_bnb = read_raw(file(c, "bnb_rec_bnb"), at::kFloat, nb);
    EXPECT_TRUE(at::equal(rec_bnb.view(at::kInt), nf4_absmax(theirs).view(at::kInt)));
    // 8-bit codes: where they differ, ours is the nearest entry to (absmax - offset) * (1/nested).
    const uint8_t* qo = c.ours.absmax.data_ptr<uint8_t>();
    const uint8_t* qt = theirs.absmax.data_ptr<uint8_t>();
    const float* am = c.ours_nodq.absmax.data_ptr<float>();
    const float* nv = c.ours.nested_absmax.data_ptr<float>();
    int64_t d = 0, t = 0;
    for (int64_t b = 0; b < nb; ++b) {
      if (qo[b] == qt[b]) continue;
      ++d;
      const float xs = (am[b] - offset) * nf4::block_scale(nv[b / 256]);
      const double exact = (static_cast<double>(am[b]) - offset) / std::max(nv[b / 256], nf4::kMinAbsmax);
      const double dist_o = std::fabs(m8[qo[b]] - static_cast<double>(xs));
      const double dist_t = std::fabs(m8[qt[b]] - static_cast<double>(xs));
      EXPECT_LE(dist_o, dist_t) << "block " << b << ": ours " << int(qo[b]) << " bnb " << int(qt[b]);
      for (int j = 0; j < 256; ++j) ASSERT_LE(dist_o, std::fabs(m8[j] - static_cast<double>(xs))) << "block " << b;
      maxgap = std::max(maxgap, std::abs(int(qo[b]) - int(qt[b])));
      // Ties: the exact quotient's nearest entry could be either (within an ulp of a midpoint).
      if (std::fabs(std::fabs(m8[qo[b]] - exact) - std::fabs(m8[qt[b]] - exact)) <= 2 * ulp_at(xs)) ++t;
    }
    std::printf(
        "[nf4_bnb] %-18s dq: %lld absmax values, 8-bit codes differ from bnb-CPU at %lld (%.3f%%), of "
        "which %lld are ties\n",
        c.name.c_str(), (long long)nb, (long long)d, 100.0 * d / nb, (long long)t);
    total += nb;
    diff += d;
    tie += t;
  }
  std::printf(
      "[nf4_bnb] TOTAL dq: %lld absmax values, 8-bit codes differ at %lld (%.3f%%), ties %lld; ours is "
      "always the nearest entry; bnb-CPU's pick up to %d entries away\n",
      (long long)total, (long long)diff, 100.0 * diff / std::max<int64_t>(total, 1), (long long)tie, maxgap);
}

}  // namespace
