// lora_modules_to_save (PEFT's modules_to_save): the token embedding and/or the output head
// trained in full next to the LoRA adapters, as PEFT's ModulesToSaveWrapper does: the module's
// weight gets a trainable copy (held in the compute dtype like the LoRA tensors; the optimizer
// keeps an fp32 master), the original stays the base. Names follow PEFT's rule: a name selects
// the module whose path equals it or ends with "." + name, so "embed_tokens" and
// "model.embed_tokens" select the embedding, "lm_head" the output head. Nothing else (a norm, a
// projection) can be saved.
//
// Tied embeddings (tie_word_embeddings, e.g. small Qwen models, Gemma): with ensure_weight_tying
// (always so for training) either name selects the one shared weight and its copy serves as both,
// as PEFT's ensure_weight_tying=True does; it is saved under both keys, as PEFT saves (and
// loads) it.
// Without it (a PEFT adapter saved with ensure_weight_tying false) each named module gets its own
// copy, as PEFT does then.
//
// The copies appear in Model::lora_parameters() (after the LoRA tensors) under PEFT's saved keys,
// "base_model.model.model.embed_tokens.weight" and "base_model.model.lm_head.weight".
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "trainer/model/model_config.h"

namespace qlora::model {

class Model;
struct NamedParameter;

inline constexpr const char* kEmbedModule = "model.embed_tokens";
inline constexpr const char* kLmHeadModule = "lm_head";

struct SavedModules {
  bool embed = false;    // model.embed_tokens gets a trainable copy
  bool lm_head = false;  // lm_head gets its own trainable copy
  bool tied = false;     // one copy serves as both (tied embeddings with ensure_weight_tying)
  bool any() const { return embed || lm_head; }
};

// Which modules `names` select on a model of this architecture. UserError
// "lora_modules_to_save: NAME: ..." for a name that selects neither module.
SavedModules resolve_modules_to_save(const std::vector<std::string>& names, const ModelConfig& mc,
                                     bool ensure_weight_tying);

// PEFT's saved key of a module's full weight: "base_model.model.<module>.weight".
std::string saved_module_key(const std::string& module);

// The module path ("model.embed_tokens" or "lm_head") whose saved weight `key` names, else "".
std::string saved_module_of_key(const std::string& key);

// Replaces the selected weights of a loaded model by trainable copies (requires_grad).
void make_saved_modules(Model& m, const SavedModules& s);

// The module paths whose weights are trainable copies (for adapter_config.json's
// modules_to_save): "model.embed_tokens" and/or "lm_head".
std::vector<std::string> saved_module_names(const Model& m);

// Appends the trainable copies to `out` under their PEFT keys (Model::lora_parameters).
void append_saved_module_parameters(const Model& m, std::vector<NamedParameter>& out);

// Whether `key` is PEFT's second copy of a tied saved weight ("base_model.model.lm_head.weight"
// when one copy serves as embedding and output head): loading skips it (the embedding key holds
// the same values). UserError naming `source` when its shape is not the embedding's.
bool is_tied_saved_alias(const Model& m, const std::string& key, const at::Tensor& value, const std::string& source);

// With one copy for a tied embedding and output head, PEFT saves (and expects) it under both
// keys: adds lm_head's key to an adapter's tensors holding the embedding's.
void add_tied_saved_alias(const Model& m, std::map<std::string, at::Tensor>& adapter);

}  // namespace qlora::model
