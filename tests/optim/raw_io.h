// Raw little-endian tensors written by the reference scripts in tests/python (t.view(uint8).tofile).
#pragma once
#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "trainer/common/fs.h"

namespace qlora::test {

inline at::Tensor read_raw(const std::filesystem::path& path, at::ScalarType dtype, std::vector<int64_t> shape) {
  const std::string bytes = qlora::fs::read_file(path);
  at::Tensor t = at::empty(shape, dtype);
  TORCH_CHECK(bytes.size() == static_cast<size_t>(t.nbytes()), path.string(), ": ", bytes.size(), " bytes, expected ",
              t.nbytes());
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

// Number of elements whose bits differ (float32 tensors of equal shape).
inline int64_t count_bit_diffs(const at::Tensor& a, const at::Tensor& b) {
  return (a.contiguous().view(at::kInt) != b.contiguous().view(at::kInt)).sum().item<int64_t>();
}

inline bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace qlora::test
