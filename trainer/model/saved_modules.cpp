#include "trainer/model/saved_modules.h"

#include <c10/core/GradMode.h>

#include "trainer/common/error.h"
#include "trainer/model/model.h"

namespace qlora::model {

namespace {
// PEFT's rule for modules_to_save: the module path equals the name or ends with "." + name.
bool selects(const std::string& name, const std::string& path) {
  return path == name || (path.size() > name.size() && path.ends_with("." + name));
}
}  // namespace

SavedModules resolve_modules_to_save(const std::vector<std::string>& names, const ModelConfig& mc,
                                     bool ensure_weight_tying) {
  SavedModules s;
  for (const std::string& n : names) {
    const bool e = selects(n, kEmbedModule), h = selects(n, kLmHeadModule);
    if (!e && !h)
      user_error("lora_modules_to_save: ", shorten(n),
                 ": expected the embedding (embed_tokens) or the output head (lm_head); other modules cannot be "
                 "trained in full");
    s.embed = s.embed || e;
    s.lm_head = s.lm_head || h;
  }
  if (mc.tie_word_embeddings && ensure_weight_tying && s.any()) {
    s.tied = true;
    s.embed = true;
    s.lm_head = false;
  }
  return s;
}

std::string saved_module_key(const std::string& module) { return "base_model.model." + module + ".weight"; }

std::string saved_module_of_key(const std::string& key) {
  for (const char* m : {kEmbedModule, kLmHeadModule})
    if (key == saved_module_key(m)) return m;
  return "";
}

void make_saved_modules(Model& m, const SavedModules& s) {
  c10::NoGradGuard no_grad;
  if (s.embed) {
    m.embed_tokens = m.embed_tokens.clone().set_requires_grad(true);
    if (s.tied) m.lm_head = m.embed_tokens;
  }
  if (s.lm_head) m.lm_head = m.lm_head.clone().set_requires_grad(true);
}

std::vector<std::string> saved_module_names(const Model& m) {
  std::vector<std::string> out;
  if (m.embed_tokens.requires_grad()) out.emplace_back(kEmbedModule);
  if (m.lm_head.requires_grad() && !m.lm_head.is_same(m.embed_tokens)) out.emplace_back(kLmHeadModule);
  return out;
}

void append_saved_module_parameters(const Model& m, std::vector<NamedParameter>& out) {
  for (const std::string& module : saved_module_names(m))
    out.push_back({saved_module_key(module), module == kEmbedModule ? m.embed_tokens : m.lm_head});
}

bool is_tied_saved_alias(const Model& m, const std::string& key, const at::Tensor& value, const std::string& source) {
  if (key != saved_module_key(kLmHeadModule) || !m.embed_tokens.requires_grad() || !m.lm_head.is_same(m.embed_tokens))
    return false;
  if (value.sizes() != m.embed_tokens.sizes())
    user_error(source, ": ", key, ": shape ", value.sizes(), " does not match the model's ", m.embed_tokens.sizes());
  return true;
}

void add_tied_saved_alias(const Model& m, std::map<std::string, at::Tensor>& adapter) {
  const auto it = adapter.find(saved_module_key(kEmbedModule));
  if (it != adapter.end() && m.embed_tokens.requires_grad() && m.lm_head.is_same(m.embed_tokens))
    adapter[saved_module_key(kLmHeadModule)] = it->second;
}


}  // namespace qlora::model
