#include "trainer/io/hf_checkpoint.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <set>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::io {

namespace stdfs = std::filesystem;

HfCheckpoint::HfCheckpoint(const stdfs::path& dir) : dir_(dir) {
  const std::string d = dir.string();
  if (stdfs::is_regular_file(dir) && dir.extension() == ".safetensors") {
    files_.push_back(std::make_unique<SafetensorsFile>(dir));
  } else {
    if (!stdfs::is_directory(dir)) user_error(d, ": not a model directory (does not exist or is not a directory)");
    const stdfs::path index = dir / "model.safetensors.index.json";
    const stdfs::path single = dir / "model.safetensors";
    if (stdfs::exists(index)) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(fs::read_file(index));
      } catch (const nlohmann::json::exception& e) {
        user_error(index.string(), ": not valid JSON: ", json_error_text(e));
      }
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        user_error(index.string(), ": weight_map: expected an object {tensor name: shard file}");
      std::map<std::string, size_t> shard_ix;
      std::map<std::string, std::string> expected;  // tensor -> shard
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it.value().is_string())
          user_error(index.string(), ": weight_map.", it.key(), ": expected a shard file name");
        const std::string shard = it.value().get<std::string>();
        if (shard.find('/') != std::string::npos || shard == "..")
          user_error(index.string(), ": weight_map.", it.key(), ": shard \"", shard,
                     "\" must be a file in the model directory");
        if (!shard_ix.count(shard)) {
          const stdfs::path sp = dir / shard;
          if (!stdfs::exists(sp)) user_error(index.string(), ": shard \"", shard, "\" (for ", it.key(), ") is missing");
          shard_ix[shard] = files_.size();
          files_.push_back(std::make_unique<SafetensorsFile>(sp));
        }
        expected[it.key()] = shard;
      }
      for (const auto& [name, shard] : expected) {
        if (!files_[shard_ix[shard]]->contains(name))
          user_error(index.string(), ": weight_map says \"", name, "\" is in ", shard, ", which does not hold it");
      }
    } else if (stdfs::exists(single)) {
      files_.push_back(std::make_unique<SafetensorsFile>(single));
    } else {
      for (const char* pickle :
           {"pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth"}) {
        if (stdfs::exists(dir / pickle))
          user_error((dir / pickle).string(),
                     ": pickle checkpoints are not loaded (they can run code); convert to safetensors first, "
                     "e.g. python -c \"from transformers import AutoModelForCausalLM as M; "
                     "M.from_pretrained('",
                     d, "').save_pretrained('", d, "-safetensors')\"");
      }
      user_error(d, ": no model.safetensors or model.safetensors.index.json found");
    }
  }
  for (size_t i = 0; i < files_.size(); ++i) {
    for (const auto& t : files_[i]->tensors()) {
      auto [it, inserted] = where_.emplace(t.name, i);
      if (!inserted)
        user_error(d, ": tensor \"", t.name, "\" appears in both ", files_[it->second]->path().filename().string(),
                   " and ", files_[i]->path().filename().string());
    }
  }
}

std::vector<std::string> HfCheckpoint::names() const {
  std::vector<std::string> v;
  v.reserve(where_.size());
  for (const auto& [n, i] : where_) v.push_back(n);
  return v;
}

const SafetensorsFile& HfCheckpoint::file_of(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) user_error(dir_.string(), ": checkpoint has no tensor \"", name, "\"");
  return *files_[it->second];
}

const TensorInfo& HfCheckpoint::info(std::string_view name) const { return *file_of(name).find(name); }

at::Tensor HfCheckpoint::tensor(std::string_view name) const {
  const SafetensorsFile& f = file_of(name);
  if (auto where = find_nonfinite(f.find(name)->dtype, f.bytes(name)))
    user_error(f.path().string(), ": ", name, ": non-finite values (", *where, ")");
  return f.tensor(name);
}

uint64_t HfCheckpoint::total_bytes() const {
  uint64_t b = 0;
  for (const auto& f : files_)
    for (const auto& t : f->tensors()) b += t.nbytes();
  return b;
}

std::vector<std::vector<size_t>> plan_shards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t shard_bytes = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (!shards.back().empty() && shard_bytes + bytes[i] > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes[i];
  }
  return shards;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

void write_shard_index(const std::filesystem::path& dir, uint64_t total_size,
                       const std::vector<std::pair<std::string, std::string>>& weight_map) {
  nlohmann::ordered_json index;
  index["metadata"]["total_size"] = total_size;
  index["weight_map"] = nlohmann::ordered_json::object();
  for (const auto& [tensor, file] : weight_map) index["weight_map"][tensor] = file;
  fs::write_file_atomic(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

bool is_hf_weight_file(const std::filesystem::path& p) {
  const std::string n = p.filename().string();
  const std::string ext = p.extension().string();
  return ext == ".safetensors" || ext == ".bin" || ext == ".pt" || ext == ".pth" || ext == ".gguf" ||
         n == "model.safetensors.index.json" || n == "pytorch_model.bin.index.json";
}

}  // namespace qlora::io
