// LoRA initialisations by PEFT's names (`init_lora_weights`), computed one layer at a time while
// the checkpoint streams in (loader.cpp), so no full-precision copy of the model is ever held.
//
//   true           A kaiming-uniform (a = sqrt(5)), B zero                  (lora.cpp)
//   false          A and B both kaiming-uniform, as nn.Linear leaves them   (lora.cpp)
//   gaussian       A normal with std 1/r, B zero                            (lora.cpp)
//   pissa          W = V S U^T (full SVD); A = sqrt(S_r/s) U_r^T, B = V_r sqrt(S_r/s),
//                  base W - s B A (s: the LoRA scaling)
//   pissa_niter_K  the same from torch.svd_lowrank(W, r, niter=K) (randomized; its Gaussian
//                  test matrix drawn from the init generator)
//   olora          W = Q R; A = R[:r], B = Q[:, :r]; base W - s B A
//   loftq          K rounds (loftq_iter) of: Q = dequant(NF4(W - L R)) (blocksize 64, no double
//                  quantization), L R = the rank-r SVD of W - Q; A = R, B = L (no 1/s), base Q
//
// The methods that change the base give it in fp32; the loader casts it to the checkpoint's
// dtype (what a 16-bit model saved with that base holds) and quantizes that to NF4 as any weight.
// The arithmetic mirrors PEFT's (same products in the same order), so on the same weights and
// generator state the factors equal PEFT's up to LAPACK's rounding and SVD sign conventions
// (tests/model/test_lora_init.cpp).
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "trainer/config/config.h"

namespace qlora::model {

struct LoraInitMethod {
  enum Kind { Kaiming, KaimingBoth, Gaussian, Pissa, Olora, Loftq } kind = Kaiming;
  int64_t niter = -1;  // pissa_niter_K: K; -1: a full SVD
  bool changes_base() const { return kind == Pissa || kind == Olora || kind == Loftq; }
};

// The method of cfg.init_lora_weights (values checked by the config loader; UserError otherwise).
LoraInitMethod lora_init_method(const config::LoraConfig& cfg);

// One layer's initialisation: the adapter, and how the new base follows from the weight W:
//   base = W - left @ right                      (pissa, olora: left = scaling * B, right = A)
//   base = dequant(NF4(W - left @ right))        (loftq; no correction after a single round)
// lora_init_base computes it with the same operations in the same order, so the loader and the
// export (which recomputes the base while streaming W again) get the same bits.
struct LoraInitResult {
  at::Tensor A;            // [r, in] fp32
  at::Tensor B;            // [out, r] fp32
  at::Tensor left, right;  // [out, r], [r, in] fp32; undefined: no correction
  bool nf4_round = false;  // loftq: the base is the NF4 round trip (blocksize 64, no double quant)
};

// A, B and the base correction of one layer for a base-changing method. `w`: the layer's weight
// [out, in] (any float dtype; computed in fp32 on the CPU). `gen`: the init generator
// (pissa_niter_K draws its test matrix from it). UserError when r exceeds the layer's rank.
LoraInitResult lora_init_from_weight(const at::Tensor& w, const config::LoraConfig& cfg, at::Generator& gen);

// The new base [out, in] fp32 from the weight and its init.
at::Tensor lora_init_base(const at::Tensor& w, const LoraInitResult& init);

// Every adapted layer's init for a base-changing method, recomputed from the checkpoint at `dir`
// exactly as load_model computes it (same order, same generator from `seed`): module path ->
// init. Empty for the methods that leave the base alone. Streams one weight at a time.
std::map<std::string, LoraInitResult> replay_lora_init(const std::filesystem::path& dir, const config::LoraConfig& lora,
                                                       uint64_t seed);

// torch.svd_lowrank(a, q, niter) without a mean: (U [m, q], S [q], V [n, q]), the random
// [n or m, q] matrix drawn from `gen` as torch draws it from its default generator.
std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_lowrank(const at::Tensor& a, int64_t q, int64_t niter,
                                                           at::Generator& gen);

}  // namespace qlora::model
