// The weights of a Hugging Face model directory: `model.safetensors`, or sharded
// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`. Files are mapped, not
// read; tensors are zero-copy views. Pickle checkpoints (`pytorch_model.bin`) are refused with a
// message saying how to convert them.
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
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
  // Zero-copy CPU view (read-only memory; clone() to own). UserError "FILE: NAME: non-finite
  // values (NaN at element 17)" for a float tensor holding a NaN or infinity: no weight of a
  // usable model is one, and quantizing or computing with it would hide or spread it.
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

// Shards as save_pretrained cuts them: in order, a tensor opens a new shard when it would push a
// non-empty shard past `max_shard_bytes` (a single tensor larger than the limit stands alone).
// `bytes[i]` is tensor i's size; the result lists each shard's tensor indices (at least one shard).
std::vector<std::vector<size_t>> plan_shards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes);

// "model.safetensors" when `count` is 1, else "model-0000i-of-0000n.safetensors" (i = index + 1).
std::string shard_file_name(size_t index, size_t count);

// Writes DIR/model.safetensors.index.json: {"metadata": {"total_size"}, "weight_map"} with the
// tensor -> shard file pairs in the order given (atomically).
void write_shard_index(const std::filesystem::path& dir, uint64_t total_size,
                       const std::vector<std::pair<std::string, std::string>>& weight_map);

// Whether a file of a model directory holds weights or their index (safetensors, pickle, GGUF):
// the files a converted copy of the model writes anew rather than copies.
bool is_hf_weight_file(const std::filesystem::path& p);

}  // namespace qlora::io
