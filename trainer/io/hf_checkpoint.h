// The weights of a Hugging Face model directory: `model.safetensors`, or sharded
// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`. Files are mapped, not
// read; tensors are zero-copy views. Pickle checkpoints (`pytorch_model.bin`) are refused with a
// message saying how to convert them.
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/io/safetensors.h"

namespace qlora::io {

class HfCheckpoint {
 public:
  // UserError naming the directory/file when no usable safetensors weights are there, when the
  // index names a missing shard or a tensor the shard does not hold, or a name appears twice.
  explicit HfCheckpoint(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
  const TensorInfo& info(std::string_view name) const;
  // Zero-copy CPU view (read-only memory; clone() to own).
  at::Tensor tensor(std::string_view name) const;
  // The shard file holding `name`.
  const SafetensorsFile& file_of(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // Sum of the tensors' byte sizes.
  uint64_t total_bytes() const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor name -> index into files_
};

}  // namespace qlora::io
