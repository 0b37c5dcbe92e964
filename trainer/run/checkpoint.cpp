#include "trainer/run/checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

#include "trainer/common/error.h"
#include "trainer/common/sha256.h"
#include "trainer/run/checkpoint_state.h"
#include "trainer/run/layout.h"

namespace qlora::run {

namespace {

std::optional<int64_t> parse_step(const std::string& name) {
  const std::string prefix = "checkpoint-";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size()) return std::nullopt;
  int64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}
}  // namespace

std::string checkpoint_name(int64_t step) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "checkpoint-%06lld", static_cast<long long>(step));
  return buf;
}

CheckpointWriter::CheckpointWriter(const stdfs::path& checkpoints_dir, int64_t step)
    : dir_(checkpoints_dir), step_(step), staged_(checkpoints_dir / checkpoint_name(step), /*replace_existing=*/true) {}

void CheckpointWriter::commit(int64_t save_total_limit) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& e : stdfs::recursive_directory_iterator(path())) {
    if (!e.is_regular_file()) continue;
    const std::string rel = stdfs::relative(e.path(), path()).string();
    files[rel] = {{"sha256", sha256_file(e.path())}, {"bytes", static_cast<uint64_t>(e.file_size())}};
  }
  nlohmann::json m = {{"format", "qlora-checkpoint-v1"}, {"step", step_}, {"files", files}};
  fs::write_file_atomic(path() / kManifestFile, m.dump(2) + "\n");
  staged_.commit();
  fs::write_file_atomic(dir_ / kLatestFile, checkpoint_name(step_) + "\n");

  // Prune: keep the newest save_total_limit complete checkpoints; remove leftovers of crashed
  // saves (temporary siblings).
  for (const auto& e : stdfs::directory_iterator(dir_)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind(".checkpoint-", 0) == 0 && n.find(".tmp-") != std::string::npos) {
      std::error_code ec;
      stdfs::remove_all(e.path(), ec);
    }
  }
  if (save_total_limit > 0) {
    // Newest first; count checkpoints that have a manifest (complete); once the limit is
    // reached, every older directory goes. Full checksum verification is left to resume.
    int64_t kept = 0;
    for (const auto& c : list_checkpoints(dir_)) {
      if (kept >= save_total_limit) {
        std::error_code ec;
        stdfs::remove_all(c, ec);
      } else if (stdfs::exists(c / kManifestFile)) {
        ++kept;
      }
    }
  }
}

std::optional<std::string> verify_checkpoint(const stdfs::path& ckpt) {
  const stdfs::path mp = ckpt / kManifestFile;
  if (!stdfs::exists(mp)) return "no manifest.json (incomplete)";
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(fs::read_file(mp));
  } catch (const std::exception& e) { return "manifest.json unreadable: " + json_error_text(e); }
  if (!m.is_object() || !m.contains("files") || !m["files"].is_object()) return "manifest.json has no file list";
  if (!m.contains("step") || !m["step"].is_number_integer() || m["step"].get<int64_t>() < 0)
    return "manifest.json has no step (a non-negative integer)";
  for (auto it = m["files"].begin(); it != m["files"].end(); ++it) {
    // Names are plain paths inside the checkpoint, as commit() writes them.
    const stdfs::path rel = stdfs::path(it.key()).lexically_normal();
    if (it.key().empty() || rel.is_absolute() || rel.empty() || *rel.begin() == ".." || *rel.begin() == ".")
      return "manifest.json names a file outside the checkpoint: \"" + it.key() + "\"";
    const auto& e = it.value();
    if (!e.is_object() || !e.contains("bytes") || !e["bytes"].is_number_unsigned() || !e.contains("sha256") ||
        !e["sha256"].is_string())
      return "manifest.json: " + it.key() + ": expected {sha256, bytes}";
    const stdfs::path f = ckpt / rel;
    std::error_code ec;
    if (!stdfs::is_regular_file(f, ec)) return "missing file " + it.key();
    if (stdfs::file_size(f, ec) != e["bytes"].get<uint64_t>()) return "size mismatch in " + it.key();
    try {
      if (sha256_file(f) != e["sha256"].get<std::string>()) return "checksum mismatch in " + it.key();
    } catch (const std::exception& e) { return std::string("unreadable ") + it.key(); }
  }
  return std::nullopt;
}

std::vector<stdfs::path> list_checkpoints(const stdfs::path& checkpoints_dir) {
  std::vector<std::pair<int64_t, stdfs::path>> v;
  std::error_code ec;
  if (!stdfs::is_directory(checkpoints_dir, ec)) return {};
  for (const auto& e : stdfs::directory_iterator(checkpoints_dir)) {
    if (!e.is_directory()) continue;
    if (auto s = parse_step(e.path().filename().string())) v.emplace_back(*s, e.path());
  }
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<stdfs::path> out;
  for (auto& [s, p] : v) out.push_back(p);
  return out;
}

std::optional<stdfs::path> find_resume_checkpoint(const stdfs::path& checkpoints_dir,
                                                  std::vector<std::string>* warnings, const CheckpointCheck& check) {
  // The newest intact checkpoint. `latest` names the same one after a clean save; it is not
  // needed for correctness (a crash between publishing a checkpoint and updating `latest`
  // leaves a complete, newer checkpoint, which is the right one to resume from).
  for (const auto& c : list_checkpoints(checkpoints_dir)) {
    std::optional<std::string> why = check ? check(c) : verify_checkpoint(c);
    if (why && !check) *why = c.string() + ": " + *why;
    if (why) {
      if (warnings) warnings->push_back(*why + "; skipped");
      continue;
    }
    return c;
  }
  return std::nullopt;
}

int64_t checkpoint_step(const stdfs::path& ckpt) {
  const stdfs::path mp = ckpt / kManifestFile;
  const auto m = nlohmann::json::parse(fs::read_file(mp), nullptr, /*allow_exceptions=*/false);
  if (!m.is_object() || !m.contains("step") || !m["step"].is_number_integer() || m["step"].get<int64_t>() < 0)
    user_error(mp.string(), ": step: expected a non-negative integer");
  return m["step"].get<int64_t>();
}

stdfs::path pick_resume_checkpoint(const stdfs::path& run_dir, const stdfs::path& resume_path,
                                   const std::function<void(const std::string&)>& warn) {
  stdfs::path where = resume_path.empty() ? checkpoints_dir(run_dir) : resume_path;
  if (stdfs::exists(where / kManifestFile)) {
    if (auto why = check_checkpoint(where)) user_error(*why, " (cannot resume from this checkpoint)");
    return where;
  }
  if (stdfs::is_directory(checkpoints_dir(where))) where = checkpoints_dir(where);
  std::vector<std::string> warnings;
  auto found = find_resume_checkpoint(where, &warnings, check_checkpoint);
  for (const auto& w : warnings) warn(w);
  if (!found) user_error(where.string(), ": no complete checkpoint to resume from");
  return *found;
}

}  // namespace qlora::run
