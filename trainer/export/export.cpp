#include "trainer/export/export.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "kernels/ops.h"
#include "trainer/common/bytes.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/common/memory.h"
#include "trainer/common/numbers.h"
#include "trainer/export/gguf_model.h"
#include "trainer/io/dtype.h"
#include "trainer/io/gguf.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/peft.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/gguf_base.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/model/lora.h"
#include "trainer/model/lora_init.h"
#include "trainer/model/summary.h"
#include "trainer/quant/bnb_nf4.h"
#include "trainer/run/layout.h"

namespace qlora::exporter {

namespace stdfs = std::filesystem;

namespace {

std::string adapter_file(const run::AdapterSource& src) { return (src.dir / io::kPeftWeightsFile).string(); }

// Whether `inner` is `outer` or lies inside it (both made absolute and normalized).
bool is_within(const stdfs::path& inner, const stdfs::path& outer) {
  const stdfs::path a = stdfs::weakly_canonical(stdfs::absolute(inner));
  const stdfs::path b = stdfs::weakly_canonical(stdfs::absolute(outer));
  auto ai = a.begin();
  for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai) {
    if (bi->empty()) continue;  // trailing separator
    if (ai == a.end() || *ai != *bi) return false;
  }
  return true;
}

// Refuses an OUT that cannot be (re)placed: a file, a non-empty directory without --force, or a
// directory holding the adapter or the base (--force would delete them).
void check_out(const ExportOptions& o, const std::vector<stdfs::path>& sources) {
  if (o.out.empty()) user_error("--out: an output directory is required");
  if (stdfs::exists(o.out) && !stdfs::is_directory(o.out))
    user_error(o.out.string(), ": exists and is not a directory");
  for (const stdfs::path& s : sources)
    if (!s.empty() && stdfs::exists(s) && is_within(s, o.out))
      user_error(o.out.string(), ": the output directory must not be or contain the input ", s.string());
  if (stdfs::exists(o.out) && !stdfs::is_empty(o.out) && !o.force)
    user_error(o.out.string(), ": output directory is not empty (use --force to replace it)");
}

// --format gguf: OUT is one .gguf file, replaced only with --force and only once complete, never
// one of the inputs; its directory is created when missing.
void check_out_file(const ExportOptions& o, const std::vector<stdfs::path>& sources) {
  if (o.out.empty()) user_error("--out: an output .gguf file is required");
  if (o.out.extension() != ".gguf")
    user_error("--out: ", o.out.string(), ": expected a file name ending in .gguf (--format gguf writes one file)");
  if (stdfs::is_directory(o.out)) user_error(o.out.string(), ": is a directory (--format gguf writes one .gguf file)");
  std::error_code ec;
  for (const stdfs::path& s : sources)
    if (!s.empty() && stdfs::exists(o.out) && stdfs::equivalent(s, o.out, ec))
      user_error(o.out.string(), ": the output file must not be the input ", s.string());
  if (stdfs::exists(o.out) && !o.force) user_error(o.out.string(), ": exists (use --force to replace it)");
  const stdfs::path parent = o.out.has_parent_path() ? o.out.parent_path() : stdfs::path(".");
  if (!stdfs::exists(parent)) {
    stdfs::create_directories(parent, ec);
    if (ec) user_error(o.out.string(), ": cannot create its directory ", parent.string(), ": ", ec.message());
  }
}

// The base directory (or GGUF file) to use: --base-model, else what the adapter records.
// UserError when it is neither an HF model directory nor a GGUF file.
stdfs::path base_dir(const ExportOptions& o, const run::AdapterSource& src, bool required) {
  const stdfs::path b = o.base_model.empty() ? src.base_model : o.base_model;
  const std::string from = o.base_model.empty()
                               ? (src.train ? run::config_file(src.dir).string() + ": base_model"
                                            : (src.dir / io::kPeftConfigFile).string() + ": base_model_name_or_path")
                               : std::string("--base-model");
  if (b.empty()) {
    if (required) user_error(from, ": no base model recorded; give it with --base-model");
    return {};
  }
  if (io::is_gguf_file(b)) return b;
  if (!stdfs::is_regular_file(b / "config.json")) {
    if (required || !o.base_model.empty())
      user_error(from, ": ", b.string(),
                 " is not a Hugging Face model directory (no config.json); give the base with --base-model");
    return {};
  }
  return b;
}

// Whether training held the base in NF4, and how. A plain PEFT directory does not say: qlora's
// default (NF4, blocksize 64, double quantization) is assumed, as generate/eval do.
struct BaseHolding {
  bool nf4 = true;
  int64_t blocksize = 64;
  bool double_quant = true;
  bool known = false;
};

BaseHolding base_holding(const run::AdapterSource& src) {
  BaseHolding h;
  if (src.train) {
    h.nf4 = src.train->lora.adapter == "qlora";
    h.blocksize = src.train->quantization.blocksize;
    h.double_quant = src.train->quantization.double_quant;
    h.known = true;
  }
  return h;
}

struct ModuleLora {
  at::Tensor A, B;  // as stored (fp32 in qlora checkpoints)
  at::Tensor M;     // DoRA's magnitude [out], else undefined
};

// module path -> its (A, B), in module order; keys checked by check_adapter_matches_base.
std::map<std::string, ModuleLora> lora_by_module(const run::AdapterSource& src) {
  std::map<std::string, ModuleLora> m;
  for (const auto& [k, v] : src.tensors) {
    const io::PeftLoraKey key = io::parse_peft_lora_key(k).value();
    ModuleLora& l = m[key.module];
    (key.which == 'A' ? l.A : key.which == 'B' ? l.B : l.M) = v;
  }
  return m;
}

// The stacked expert adapters (lora_target_parameters) by PEFT module path -> the [out, in] of
// the fused tensor they adapt (gate_up: [2 inter, hidden], down: [hidden, inter]).
std::map<std::string, std::vector<int64_t>> expert_adapter_shapes(const io::PeftAdapterConfig& pc,
                                                                  const model::ModelConfig& mc) {
  std::map<std::string, std::vector<int64_t>> out;
  if (pc.target_parameters.empty()) return out;
  const model::ExpertTargets t = model::resolve_expert_targets(model::to_lora_config(pc), mc);
  const int64_t H = mc.hidden_size, I = mc.moe_intermediate_size;
  for (int64_t i = 0; i < mc.num_hidden_layers; ++i) {
    if (t.gate_up) out[model::layer_prefix(i) + model::expert_lora_module(true, t)] = {2 * I, H};
    if (t.down) out[model::layer_prefix(i) + model::expert_lora_module(false, t)] = {H, I};
  }
  return out;
}

// scaling * B_e A_e for the expert linear `module` ("model.layers.N.mlp.experts.E.gate_proj",
// mixtral's "block_sparse_moe.experts.E.w1", ...) from the stacked expert adapters: the gate or up
// rows of gate_up's delta, or down's; undefined when the module is no adapted expert.
at::Tensor expert_delta(const std::map<std::string, ModuleLora>& lora, const io::PeftAdapterConfig& pc,
                        const model::ModelConfig& mc, const std::string& module, double scaling) {
  if (pc.target_parameters.empty() || !module.starts_with("model.layers.")) return {};
  size_t used = 0;
  const std::optional<int64_t> layer = parse_c_int(std::string_view(module).substr(13), &used);
  if (!layer) return {};
  const std::string rest = module.substr(13 + used + 1);
  std::string tail;
  for (const char* p : {"mlp.experts.", "block_sparse_moe.experts."})
    if (rest.starts_with(p)) tail = rest.substr(std::string(p).size());
  const size_t dot = tail.find('.');
  if (dot == std::string::npos) return {};
  const std::optional<int64_t> e = parse_c_int(tail.substr(0, dot));
  const std::string part = tail.substr(dot + 1);
  const bool gate = part == "gate_proj" || part == "w1", up = part == "up_proj" || part == "w3",
             down = part == "down_proj" || part == "w2";
  if (!e || (!gate && !up && !down)) return {};
  const model::ExpertTargets t = model::resolve_expert_targets(model::to_lora_config(pc), mc);
  if (down ? !t.down : !t.gate_up) return {};
  const auto it = lora.find(model::layer_prefix(*layer) + model::expert_lora_module(!down, t));
  if (it == lora.end()) return {};
  const int64_t E = mc.num_experts, I = mc.moe_intermediate_size;
  const at::Tensor A = it->second.A.to(at::kFloat), B = it->second.B.to(at::kFloat);
  const int64_t r = A.size(0) / E;
  const at::Tensor d = at::matmul(B.view({B.size(0), r, E}).select(2, *e), A.narrow(0, *e * r, r)) * scaling;
  return down ? d : d.narrow(0, gate ? 0 : I, I);
}

// Decoder layer index of a "model.layers.N...." module path and the module's short name (for
// ordering: llama.cpp's q, k, v, o, gate, up, down within a layer).
std::pair<int64_t, std::string> module_order(const std::string& module) {
  int64_t layer = -1;
  size_t used = 0;
  if (module.starts_with("model.layers.")) layer = parse_c_int(std::string_view(module).substr(13), &used).value();
  const std::string shortname = module.substr(module.rfind('.') + 1);
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",       "qkv_proj", "o_proj",
                                                 "gate_proj", "up_proj", "gate_up_proj", "down_proj"};
  const auto it = std::find(names.begin(), names.end(), shortname);
  return {layer, std::to_string(it - names.begin())};
}

// ---- peft ----------------------------------------------------------------------------------

ExportReport export_peft(const ExportOptions& o, const run::AdapterSource& src) {
  ExportReport rep;
  rep.adapter_dir = src.dir;
  rep.dtype = o.dtype.value_or(at::kFloat);
  const stdfs::path base = base_dir(o, src, /*required=*/false);
  if (!base.empty()) {
    check_adapter_matches_base(src, model::read_model_config(base));
    rep.base_model = base;
  } else {
    std::fprintf(stderr, "qlora: warning: base model %s not found; the adapter's shapes were not checked against it\n",
                 src.base_model.string().c_str());
  }
  check_out(o, {src.dir});
  io::PeftAdapterConfig cfg = src.peft;
  if (!o.base_model.empty())
    cfg.base_model_name_or_path = o.base_model.string();
  else if (src.train)
    cfg.base_model_name_or_path = src.base_model.string();
  fs::StagedDir staged(o.out, /*replace_existing=*/stdfs::exists(o.out));
  io::write_peft_adapter(staged.path(), cfg, src.tensors, rep.dtype);
  staged.commit();
  rep.files = {io::kPeftConfigFile, io::kPeftWeightsFile};
  for (const auto& [k, v] : src.tensors) rep.tensor_bytes += v.numel() * c10::elementSize(rep.dtype);
  if (base_holding(src).nf4)
    std::fprintf(stderr,
                 "qlora: note: this adapter was trained against the NF4-quantized base; load the base in 4-bit "
                 "(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\")) to reproduce its numerics\n");
  return rep;
}

// ---- gguf-adapter --------------------------------------------------------------------------

ExportReport export_gguf(const ExportOptions& o, const run::AdapterSource& src) {
  ExportReport rep;
  rep.adapter_dir = src.dir;
  rep.dtype = o.dtype.value_or(at::kHalf);
  rep.base_model = base_dir(o, src, /*required=*/true);
  const model::ModelConfig mc = model::read_model_config(rep.base_model);
  check_adapter_matches_base(src, mc);
  if (!src.peft.target_parameters.empty())
    user_error(adapter_file(src),
               ": target_parameters: a GGUF adapter holds no adapters on expert tensors; export --format merged");
  if (src.peft.use_dora)
    user_error(adapter_file(src),
               ": use_dora: a llama.cpp LoRA adapter has no DoRA magnitude; export --format merged (or gguf) instead");
  check_out(o, {src.dir, rep.base_model});
  io::GgufLoraOptions g;
  // llama.cpp runs Mistral checkpoints as the llama architecture.
  g.architecture = (mc.model_type == "llama" || mc.model_type == "mistral") ? "llama"
                   : mc.model_type == "gemma3_text"                         ? "gemma3"
                                                                            : mc.model_type;
  g.n_head = mc.num_attention_heads;
  g.n_head_kv = mc.num_key_value_heads;
  g.dtype = rep.dtype;
  // llama.cpp scales by adapter.lora.alpha / r; rsLoRA's alpha / sqrt(r) is alpha * sqrt(r) / r.
  const double r = static_cast<double>(src.peft.r);
  g.alpha = static_cast<float>(src.peft.use_rslora ? src.peft.lora_alpha * std::sqrt(r) : src.peft.lora_alpha);
  std::vector<std::pair<std::pair<int64_t, std::string>, io::LoraTensor>> ordered;
  for (const auto& [module, ab] : lora_by_module(src))
    ordered.push_back({module_order(module), io::LoraTensor{module, ab.A.to(at::kFloat), ab.B.to(at::kFloat)}});
  std::sort(ordered.begin(), ordered.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<io::LoraTensor> lora;
  for (auto& e : ordered) lora.push_back(std::move(e.second));
  fs::StagedDir staged(o.out, /*replace_existing=*/stdfs::exists(o.out));
  io::write_lora_gguf(staged.path() / "adapter_model.gguf", lora, g);
  staged.commit();
  rep.files = {"adapter_model.gguf"};
  for (const auto& l : lora) rep.tensor_bytes += (l.A.numel() + l.B.numel()) * c10::elementSize(rep.dtype);
  return rep;
}

// The LoRA config whose init computed the base the adapter trained on: the run's, or a PEFT
// directory's own adapter_config.json (PEFT reruns such an init when it loads the adapter).
config::LoraConfig init_config(const run::AdapterSource& src) {
  return src.train ? src.train->lora : model::to_lora_config(src.peft);
}
uint64_t init_seed(const run::AdapterSource& src) {
  return src.train ? src.train->seed : model::ModelLoadOptions{}.seed;
}

bool changes_base(const run::AdapterSource& src) { return model::lora_init_method(init_config(src)).changes_base(); }

// ---- merged --------------------------------------------------------------------------------

struct OutTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string module;  // decoder linear (for ".weight" of a projection), else empty
};

// Every tensor of the merged model, in module order (transformers' state-dict names).
std::vector<OutTensor> merged_tensors(const model::ModelConfig& c) {
  const model::ModelSummary s = model::summarize(c);
  std::set<std::string> linear_weights;
  for (const model::LinearSpec& l : model::layer_linears(c)) linear_weights.insert(l.path + ".weight");
  std::vector<OutTensor> v;
  v.push_back({s.other_tensors[0].name, s.other_tensors[0].shape, ""});  // model.embed_tokens.weight
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = model::layer_prefix(i);
    for (const auto& t : s.layer_tensors) {
      const bool linear = linear_weights.count(t.name) > 0;
      v.push_back({p + t.name, t.shape, linear ? p + t.name.substr(0, t.name.size() - 7) : ""});
    }
  }
  for (size_t i = 1; i < s.other_tensors.size(); ++i)
    v.push_back({s.other_tensors[i].name, s.other_tensors[i].shape, ""});
  return v;
}

bool is_tokenizer_file(const std::string& n) {
  static const std::set<std::string> names = {"tokenizer.model",         "tokenizer.json",    "tokenizer_config.json",
                                              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                              "chat_template.json",      "vocab.json",        "merges.txt"};
  return names.count(n) > 0;
}

class MergedWriter {
 public:
  // base_only: the base an init computed (lora_init.h), without the adapter, in the dtype of the
  // checkpoint's first projection weight (write_init_base).
  MergedWriter(const ExportOptions& o, const run::AdapterSource& src, const stdfs::path& base, bool base_only = false)
      : o_(o), src_(src), base_(base), ts_(model::open_tensor_source(base)), mc_(model::read_model_config(base)) {
    base_only_ = base_only;
  }

  ExportReport run() {
    ExportReport rep;
    rep.dtype = o_.dtype.value_or(at::kBFloat16);
    if (base_only_) {
      const std::string w = model::layer_prefix(0) + model::layer_linears(mc_).front().path + ".weight";
      rep.dtype = ts_->contains(w) ? ts_->tensor(w).scalar_type() : at::kFloat;
    }
    setup(rep);
    check_out(o_, {src_.dir, base_});

    const std::vector<OutTensor> all = merged_tensors(mc_);
    for (const OutTensor& t : all) check_source(t);
    std::vector<uint64_t> bytes;
    const uint64_t isz = c10::elementSize(dtype_);
    for (const OutTensor& t : all) {
      uint64_t b = isz;
      for (int64_t d : t.shape) b *= static_cast<uint64_t>(d);
      bytes.push_back(b);
    }
    const std::vector<std::vector<size_t>> shards = io::plan_shards(bytes, o_.max_shard_bytes);

    fs::StagedDir staged(o_.out, /*replace_existing=*/stdfs::exists(o_.out));
    std::vector<std::pair<std::string, std::string>> weight_map;
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string fname = io::shard_file_name(s, shards.size());
      std::vector<io::SafetensorsStreamWriter::Entry> entries;
      for (size_t i : shards[s]) entries.push_back({all[i].name, dtype_, all[i].shape});
      io::SafetensorsStreamWriter w(staged.path() / fname, entries);
      for (size_t i : shards[s]) {
        const OutTensor& t = all[i];
        at::Tensor out = produce(t);
        rep.tensor_bytes += out.nbytes();
        w.add(t.name, out);
        out = at::Tensor();
        release(t);
        weight_map.emplace_back(t.name, fname);
      }
      w.finish();
      rep.files.push_back(fname);
    }
    rep.merged_modules = merged_;
    if (shards.size() > 1) {
      io::write_shard_index(staged.path(), rep.tensor_bytes, weight_map);
      rep.files.push_back("model.safetensors.index.json");
    }
    write_config(staged.path(), rep);
    copy_side_files(staged.path(), rep);
    staged.commit();
    return rep;
  }

  // A merged model as one llama.cpp GGUF file at o_.out: tensors merged in fp32, converted to
  // the outtype (1-D tensors F32) and streamed into the file one at a time.
  ExportReport run_gguf() {
    ExportReport rep;
    rep.dtype = at::kFloat;
    const std::string arch = gguf_architecture(mc_);
    setup(rep);
    const io::GgufOutType outtype = parse_gguf_outtype(o_.outtype.empty() ? "f16" : o_.outtype, "--outtype");
    check_out_file(o_, {src_.dir, base_});
    const std::vector<OutTensor> all = merged_tensors(mc_);
    for (const OutTensor& t : all) check_source(t);

    io::GgufMetadata meta;
    add_gguf_model_metadata(meta, mc_, arch, model_name(), outtype);
    const stdfs::path tok = src_.train && !src_.train->tokenizer.empty() ? stdfs::path(src_.train->tokenizer) : base_;
    add_gguf_tokenizer_metadata(meta, tok, mc_.vocab_size);

    std::vector<io::GgufStreamWriter::Entry> entries;
    std::vector<const OutTensor*> order;
    for (const OutTensor& t : all) {
      const std::optional<std::string> name = model::gguf_name_of(t.name, arch);
      if (!name) user_error("--format gguf: ", where(t.name), ": no llama.cpp tensor name for this tensor");
      io::GgufOutType type = outtype;
      if (t.shape.size() < 2) type = io::GgufOutType::F32;  // norms and biases, as llama.cpp keeps them
      // rows that are not whole Q8_0 blocks stay F16, as llama.cpp's converter falls back
      if (type == io::GgufOutType::Q8_0 && t.shape.back() % 32 != 0) type = io::GgufOutType::F16;
      entries.push_back({*name, t.shape, type});
      order.push_back(&t);
    }
    io::GgufStreamWriter w(o_.out, meta, entries);
    for (size_t i = 0; i < order.size(); ++i) {
      const OutTensor& t = *order[i];
      // adapted linears merged in fp32; everything else as stored (a view of the mapped file),
      // converted by the writer slice by slice
      at::Tensor out = t.module.empty() ? ts_->tensor(t.name) : produce(t);
      if (arch == "llama" && t.name.find(".self_attn.q_proj.") != std::string::npos)
        out = io::gguf_permute_rows(out, mc_.num_attention_heads);
      if (arch == "llama" && t.name.find(".self_attn.k_proj.") != std::string::npos)
        out = io::gguf_permute_rows(out, mc_.num_key_value_heads);
      w.add(entries[i].name, out);
      out = at::Tensor();
      release(t);
    }
    w.finish();
    rep.tensor_bytes = w.data_bytes();
    rep.merged_modules = merged_;
    rep.files.push_back(o_.out.filename().string());
    return rep;
  }

 private:
  // general.name: the output file's stem ("out/demo-q8_0.gguf" -> "demo-q8_0").
  std::string model_name() const { return o_.out.stem().string(); }

  // Everything run() and run_gguf() share: the adapter fits the base, what W is (--merge-into),
  // the LoRA pairs and their scaling. dtype_ is rep.dtype.
  void setup(ExportReport& rep) {
    rep.adapter_dir = src_.dir;
    rep.base_model = base_;
    check_adapter_matches_base(src_, mc_);
    const BaseHolding hold = base_holding(src_);
    const bool bnb = mc_.quantization.has_value();
    // What W is: dequant(NF4) when the adapter saw NF4 and the user did not ask otherwise.
    if (base_only_) {
      quantize_ = false;
    } else if (o_.merge_into == "original") {
      if (bnb)
        user_error("--merge-into original: ", base_.string(),
                   " is a 4-bit checkpoint; its original 16-bit weights are not there (give them with --base-model)");
      if (hold.nf4)
        std::fprintf(
            stderr,
            "qlora: warning: --merge-into original: this adapter learned to correct the NF4-quantized weights; merged "
            "into the original 16-bit weights the quantization error comes back uncorrected, which usually "
            "makes the merged model worse than base+adapter. The default (dequant) merges into the weights "
            "it was trained against.\n");
      quantize_ = false;
    } else if (o_.merge_into == "dequant") {
      quantize_ = hold.nf4 && !bnb;  // a bnb checkpoint is dequantized as it is
      if (!hold.nf4) {
        std::fprintf(
            stderr,
            "qlora: note: the adapter was trained on the 16-bit base (adapter: lora); merging into those weights\n");
      } else if (!hold.known && !bnb) {
        std::fprintf(
            stderr,
            "qlora: note: %s does not say how the base was held while training; assuming NF4 (blocksize 64, double "
            "quantization) as qlora trains. Use --merge-into original for an adapter trained on the 16-bit base.\n",
            (src_.dir / io::kPeftConfigFile).string().c_str());
      }
      blocksize_ = hold.blocksize;
      double_quant_ = hold.double_quant;
    } else {
      user_error("--merge-into: expected dequant or original, got \"", o_.merge_into, "\"");
    }
    dtype_ = rep.dtype;
    scaling_ = model::lora_scaling(model::to_lora_config(src_.peft));
    if (!base_only_) lora_ = lora_by_module(src_);
    // PiSSA / OLoRA / LoftQ trained on a base they computed: recompute it as the loader did.
    inits_ = model::replay_lora_init(base_, init_config(src_), init_seed(src_));
    requantize_inits_ = hold.nf4 && o_.merge_into == "dequant";
  }

  std::string where(const std::string& name) const { return ts_->where(name); }

  std::map<std::string, model::LoraInitResult> inits_;  // module -> base-changing init
  bool requantize_inits_ = false;
  bool base_only_ = false;

  bool is_bnb(const OutTensor& t) const {
    return !t.module.empty() && ts_->hf() && quant::is_bnb_4bit(*ts_->hf(), t.module);
  }

  // Before writing anything: every source tensor is there with the expected shape and a float dtype.
  void check_source(const OutTensor& t) const {
    if (is_bnb(t)) return;  // read_bnb_nf4 checks its entries; the shape is checked in produce()
    if (!ts_->contains(t.name)) {
      if (t.name == "lm_head.weight")
        user_error(ts_->location(), ": lm_head.weight: missing (config.json says tie_word_embeddings is false)");
      user_error(ts_->location(), ": ", t.name, ": missing from the checkpoint");
    }
    if (!ts_->is_float(t.name))
      user_error(where(t.name), ": expected F32, BF16 or F16 weights, got ", ts_->dtype_name(t.name));
    const std::vector<int64_t> shape = ts_->shape(t.name);
    if (shape != t.shape)
      user_error(where(t.name), ": expected shape ", at::IntArrayRef(t.shape), ", got ", at::IntArrayRef(shape));
  }

  // The output tensor in dtype_: a copy for everything but adapted linears, which get
  // W + scaling * B @ A computed in fp32 (W as chosen by --merge-into).
  at::Tensor produce(const OutTensor& t) {
    if (t.module.empty()) return ts_->tensor(t.name).to(dtype_);
    at::Tensor w;
    const auto init = inits_.find(t.module);
    if (init != inits_.end()) {
      // The base the init computed, rounded to the checkpoint's dtype as the loader rounds it;
      // --merge-into original leaves out only the NF4 step.
      at::Tensor src;
      if (is_bnb(t)) {
        src = kernels::nf4_dequantize(quant::read_bnb_nf4(*ts_->hf(), t.module), at::kFloat);
      } else {
        src = ts_->tensor(t.name);
      }
      const at::Tensor base = model::lora_init_base(src, init->second).to(src.scalar_type());
      w = requantize_inits_
              ? kernels::nf4_dequantize(kernels::nf4_quantize(base, blocksize_, double_quant_), at::kFloat)
              : base.to(at::kFloat);
    } else if (is_bnb(t)) {
      const kernels::NF4Tensor q = quant::read_bnb_nf4(*ts_->hf(), t.module);
      if (q.shape != t.shape)
        user_error(where(t.module + ".weight" + quant::kBnbNf4StateSuffix), ": shape ", at::IntArrayRef(q.shape),
                   ", expected ", at::IntArrayRef(t.shape));
      w = kernels::nf4_dequantize(q, at::kFloat);
    } else if (quantize_) {
      // Exactly what the trainer's loader computed with: quantize the stored weight, dequantize.
      w = kernels::nf4_dequantize(kernels::nf4_quantize(ts_->tensor(t.name), blocksize_, double_quant_), at::kFloat);
    } else {
      w = ts_->tensor(t.name).to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    }
    const auto it = lora_.find(t.module);
    if (it != lora_.end()) {
      w.addmm_(it->second.B.to(at::kFloat), it->second.A.to(at::kFloat), /*beta=*/1.0, /*alpha=*/scaling_);
      // DoRA, as PEFT merges it: each row of W + s B A rescaled to its magnitude, the norm taken
      // of the base merged into.
      if (it->second.M.defined())
        w.mul_(it->second.M.to(at::kFloat).div(at::linalg_vector_norm(w, 2, {1}, false)).unsqueeze(1));
      ++merged_;
    } else if (const at::Tensor d = expert_delta(lora_, src_.peft, mc_, t.module, scaling_); d.defined()) {
      w.add_(d);  // every expert gets its slice of the stacked expert adapters
      ++merged_;
    }
    return w.to(dtype_);
  }

  void release(const OutTensor& t) {
    if (is_bnb(t)) {
      const io::HfCheckpoint& ck = *ts_->hf();
      for (const std::string& n : ck.names())
        if (n.starts_with(t.module + ".weight")) io::release_mapped_pages(ck.file_of(n).bytes(n));
    } else {
      ts_->release(t.name);
    }
    trim_heap();
  }

  void write_config(const stdfs::path& dir, ExportReport& rep) const {
    const bool gguf = io::is_gguf_file(base_);
    const stdfs::path p = gguf ? base_ : base_ / "config.json";
    nlohmann::ordered_json cfg;
    try {
      // a GGUF base: the config transformers derives from its metadata
      cfg = nlohmann::ordered_json::parse(gguf ? model::gguf_hf_config_json(io::GgufFile(base_)) : fs::read_file(p));
    } catch (const nlohmann::json::exception& e) { user_error(p.string(), ": not valid JSON: ", json_error_text(e)); }
    cfg.erase("quantization_config");
    cfg.erase("_pre_quantization_dtype");
    const std::string dtype_name(io::float_dtype_name(dtype_).value());  // "bfloat16", ...
    bool set = false;
    for (const char* k : {"torch_dtype", "dtype"}) {
      if (cfg.contains(k)) {
        cfg[k] = dtype_name;
        set = true;
      }
    }
    if (!set) cfg["torch_dtype"] = dtype_name;
    fs::write_file_atomic(dir / "config.json", cfg.dump(2) + "\n");
    rep.files.push_back("config.json");
  }

  // Tokenizer files, generation_config.json, chat template, README...: copied from the base (and
  // from the run's separate tokenizer directory when it had one). A base without
  // generation_config.json gets the one save_pretrained derives from config.json.
  void copy_side_files(const stdfs::path& dir, ExportReport& rep) const {
    std::vector<stdfs::path> from = {base_};
    if (io::is_gguf_file(base_)) {  // its tokenizer and chat template, as tokenizer.json + tokenizer_config.json
      const model::GgufTokenizerFiles t = model::gguf_tokenizer_files(io::GgufFile(base_));
      fs::write_file_atomic(dir / "tokenizer.json", t.tokenizer_json);
      fs::write_file_atomic(dir / "tokenizer_config.json", t.tokenizer_config_json);
      rep.files.push_back("tokenizer.json");
      rep.files.push_back("tokenizer_config.json");
    }
    if (src_.train && !src_.train->tokenizer.empty() && stdfs::is_directory(src_.train->tokenizer))
      from.push_back(src_.train->tokenizer);
    for (size_t i = 0; i < from.size(); ++i) {
      if (!stdfs::is_directory(from[i])) continue;
      for (const auto& e : stdfs::directory_iterator(from[i])) {
        const std::string n = e.path().filename().string();
        if (!e.is_regular_file() || io::is_hf_weight_file(e.path()) || n == "config.json" || n.empty() || n[0] == '.')
          continue;
        if (i > 0 && !is_tokenizer_file(n)) continue;
        std::error_code ec;
        stdfs::copy_file(e.path(), dir / n, stdfs::copy_options::overwrite_existing, ec);
        if (ec) user_error(fs::public_path(dir / n).string(), ": cannot copy ", e.path().string(), ": ", ec.message());
        if (std::find(rep.files.begin(), rep.files.end(), n) == rep.files.end()) rep.files.push_back(n);
      }
    }
    if (!stdfs::exists(dir / "generation_config.json")) {
      nlohmann::ordered_json g;
      g["_from_model_config"] = true;
      if (mc_.bos_token_id) g["bos_token_id"] = *mc_.bos_token_id;
      if (mc_.eos_token_ids.size() == 1) g["eos_token_id"] = mc_.eos_token_ids[0];
      if (mc_.eos_token_ids.size() > 1) g["eos_token_id"] = mc_.eos_token_ids;
      if (mc_.pad_token_id) g["pad_token_id"] = *mc_.pad_token_id;
      fs::write_file_atomic(dir / "generation_config.json", g.dump(2) + "\n");
      rep.files.push_back("generation_config.json");
    }
  }

  const ExportOptions& o_;
  const run::AdapterSource& src_;
  stdfs::path base_;
  std::unique_ptr<model::TensorSource> ts_;
  model::ModelConfig mc_;
  std::map<std::string, ModuleLora> lora_;
  at::ScalarType dtype_ = at::kBFloat16;
  double scaling_ = 1.0;
  bool quantize_ = true;
  int64_t blocksize_ = 64;
  bool double_quant_ = true;
  int64_t merged_ = 0;
};

}  // namespace

uint64_t parse_size(const std::string& s, const std::string& what) {
  const std::optional<uint64_t> bytes = parse_byte_size(s);
  if (!bytes || *bytes == 0) user_error(what, ": expected a size such as 5GB, 500MB or 2GiB, got \"", s, "\"");
  return *bytes;
}

at::ScalarType parse_export_dtype(const std::string& s, const std::string& what) {
  if (const auto t = io::parse_float_dtype(s, io::FloatNames::Short)) return *t;
  user_error(what, ": expected bf16, fp16 or fp32, got \"", s, "\"");
}

void check_adapter_matches_base(const run::AdapterSource& src, const model::ModelConfig& mc) {
  const std::string file = adapter_file(src);
  const std::string base = mc.path.string();
  std::map<std::string, std::vector<int64_t>> shapes;  // module path -> [out, in]
  const std::vector<model::LinearSpec> specs = model::layer_linears(mc);
  for (int64_t i = 0; i < mc.num_hidden_layers; ++i)
    for (const model::LinearSpec& l : specs) shapes[model::layer_prefix(i) + l.path] = {l.out, l.in};
  std::map<std::string, int64_t> ranks;  // the stacked expert adapters hold r per expert
  for (const auto& [module, shape] : expert_adapter_shapes(src.peft, mc)) {
    shapes[module] = shape;
    ranks[module] = src.peft.r * mc.num_experts;
  }
  std::set<std::string> have_a, have_b, have_m;
  for (const auto& [k, v] : src.tensors) {
    const std::optional<io::PeftLoraKey> key = io::parse_peft_lora_key(k);
    if (!key)
      user_error(file, ": ", k,
                 ": not a LoRA key (expected base_model.model.<module>.lora_A.weight or .lora_B.weight)");
    const std::string& module = key->module;
    const bool a = key->which == 'A';
    const auto it = shapes.find(module);
    if (it == shapes.end())
      user_error(file, ": ", k, ": the base (", base, ") has no linear module ", module,
                 " (an adapter made for another base model?)");
    if (key->which == 'M') {
      if (!src.peft.use_dora) user_error(file, ": ", k, ": a DoRA magnitude, but adapter_config.json has no use_dora");
      if (v.sizes().vec() != std::vector<int64_t>{it->second[0]})
        user_error(file, ": ", k, ": shape ", v.sizes(), ", but the base (", base, ") needs [", it->second[0], "]");
      if (!at::isFloatingType(v.scalar_type())) user_error(file, ": ", k, ": expected a floating-point tensor");
      have_m.insert(module);
      continue;
    }
    const int64_t r = ranks.count(module) ? ranks.at(module) : src.peft.r;
    const std::vector<int64_t> want =
        a ? std::vector<int64_t>{r, it->second[1]} : std::vector<int64_t>{it->second[0], r};
    if (v.sizes().vec() != want)
      user_error(file, ": ", k, ": shape ", v.sizes(), ", but the base (", base, ") with r=", r, " needs ",
                 at::IntArrayRef(want), " (an adapter made for another base model?)");
    if (!at::isFloatingType(v.scalar_type())) user_error(file, ": ", k, ": expected a floating-point tensor");
    (a ? have_a : have_b).insert(module);
  }
  for (const auto& m : have_a)
    if (!have_b.count(m)) user_error(file, ": ", io::peft_lora_key(m, 'B'), ": missing (its lora_A is there)");
  for (const auto& m : have_b)
    if (!have_a.count(m)) user_error(file, ": ", io::peft_lora_key(m, 'A'), ": missing (its lora_B is there)");
  if (src.peft.use_dora)
    for (const auto& m : have_a)
      if (!have_m.count(m))
        user_error(file, ": ", io::peft_lora_key(m, 'M'), ": missing (adapter_config.json says use_dora: true)");
  // Every module the adapter config targets in this base has its pair.
  const config::LoraConfig lc = model::to_lora_config(src.peft);
  for (const auto& [module, shape] : shapes)
    if ((ranks.count(module) || model::lora_targets(lc, module)) && !have_a.count(module))
      user_error(file, ": ", io::peft_lora_key(module, 'A'), ": missing (adapter_config.json targets ",
                 module.substr(module.rfind('.') + 1), " in every layer of the base ", base, ")");
}

// ---- adapters of a base-changing init ------------------------------------------------------

// PiSSA / OLoRA trained A, B on W_res = W - s B0 A0. PEFT converts such an adapter to a plain one
// for the original W (save_pretrained with path_initial_model_for_weight_conversion):
//   W + dW = W_res + s B A  gives  dW = s (B A - B0 A0) = s [B | -B0] [A ; A0],
// rank 2r with the same scaling (alpha doubled, or times sqrt(2) under rsLoRA).
run::AdapterSource converted_to_plain_lora(const run::AdapterSource& src, const stdfs::path& base) {
  if (src.peft.use_dora)
    user_error(adapter_file(src), ": use_dora: a DoRA adapter trained on a ", init_config(src).init_lora_weights,
               " residual has no plain-LoRA form for the original base; export --format merged instead");
  const std::map<std::string, model::LoraInitResult> inits =
      model::replay_lora_init(base, init_config(src), init_seed(src));
  run::AdapterSource out = src;
  for (auto& [key, t] : out.tensors) {
    const io::PeftLoraKey k = io::parse_peft_lora_key(key).value();
    const auto it = inits.find(k.module);
    if (it == inits.end())
      user_error((src.dir / io::kPeftWeightsFile).string(), ": ", key, ": the run's config adapts no module ",
                 k.module);
    const at::Tensor t0 = (k.which == 'A' ? it->second.A : it->second.B).to(t.scalar_type());
    t = k.which == 'A' ? at::cat({t, t0}, 0) : at::cat({t, -t0}, 1);
  }
  out.peft.r *= 2;
  out.peft.lora_alpha *= out.peft.use_rslora ? std::sqrt(2.0) : 2.0;
  out.peft.init_lora_weights = "true";  // a plain adapter now, as PEFT marks the converted one
  return out;
}

ExportReport write_init_base(const ExportOptions& o, const run::AdapterSource& src, const stdfs::path& base,
                             const stdfs::path& out);

ExportReport export_checkpoint(const ExportOptions& o) {
  if (o.format != "peft" && o.format != "merged" && o.format != "gguf-adapter" && o.format != "gguf")
    user_error("--format: expected peft, merged, gguf-adapter or gguf, got \"", o.format, "\"");
  if (o.out.empty()) user_error("--out: an output ", o.format == "gguf" ? "file" : "directory", " is required");
  if (o.format == "gguf" && o.dtype)
    user_error("--dtype: --format gguf takes the tensor type as --outtype f16|bf16|q8_0|f32");
  if (o.format != "gguf" && !o.outtype.empty()) user_error("--outtype: only --format gguf takes it");
  if (o.format == "gguf") parse_gguf_outtype(o.outtype.empty() ? "f16" : o.outtype, "--outtype");
  const run::AdapterSource src = run::read_adapter_source(o.checkpoint);
  if ((o.format == "peft" || o.format == "gguf-adapter") && changes_base(src)) {
    const std::string init = init_config(src).init_lora_weights;
    const stdfs::path base = base_dir(o, src, /*required=*/true);
    if (init != "loftq") {
      std::fprintf(stderr,
                   "qlora: note: init_lora_weights: %s trained on a residual base; the adapter is converted to a "
                   "plain LoRA of rank %lld for the original base, as PEFT converts it\n",
                   init.c_str(), static_cast<long long>(2 * src.peft.r));
      const run::AdapterSource conv = converted_to_plain_lora(src, base);
      return o.format == "peft" ? export_peft(o, conv) : export_gguf(o, conv);
    }
    // LoftQ's base is itself quantized: no adapter for the original base reproduces it, so the
    // base travels with the adapter, as PEFT's LoftQ recipe saves it.
    if (o.format == "gguf-adapter")
      user_error(
          "--format gguf-adapter: init_lora_weights: loftq trained against its own base, which a llama.cpp "
          "adapter for the original model cannot carry (export --format merged instead)");
    check_adapter_matches_base(src, model::read_model_config(base));
    check_out(o, {src.dir, base});
    ExportReport rep;
    rep.adapter_dir = src.dir;
    rep.base_model = base;
    rep.dtype = o.dtype.value_or(at::kFloat);
    io::PeftAdapterConfig cfg = src.peft;
    cfg.base_model_name_or_path = (stdfs::absolute(o.out) / "base").lexically_normal().string();
    cfg.init_lora_weights = "true";  // plain LoRA on the LoftQ base written next to it
    fs::StagedDir staged(o.out, /*replace_existing=*/stdfs::exists(o.out));
    io::write_peft_adapter(staged.path(), cfg, src.tensors, rep.dtype);
    rep.files = {io::kPeftConfigFile, io::kPeftWeightsFile};
    for (const auto& [k, v] : src.tensors) rep.tensor_bytes += v.numel() * c10::elementSize(rep.dtype);
    const ExportReport b = write_init_base(o, src, base, staged.path() / "base");
    for (const std::string& f : b.files) rep.files.push_back("base/" + f);
    rep.tensor_bytes += b.tensor_bytes;
    staged.commit();
    std::fprintf(stderr,
                 "qlora: note: init_lora_weights: loftq: the adapter belongs to the LoftQ base in %s/base (16-bit; "
                 "load it in 4-bit NF4 as the run did)\n",
                 o.out.string().c_str());
    return rep;
  }
  if (o.format == "peft") return export_peft(o, src);
  if (o.format == "gguf-adapter") return export_gguf(o, src);
  const stdfs::path base = base_dir(o, src, /*required=*/true);
  if (o.format == "gguf") return MergedWriter(o, src, base).run_gguf();
  return MergedWriter(o, src, base).run();
}

// LoftQ's base as a 16-bit model (the dtype of the checkpoint's weights): what its adapter loads onto.
ExportReport write_init_base(const ExportOptions& o, const run::AdapterSource& src, const stdfs::path& base,
                             const stdfs::path& out) {
  ExportOptions bo = o;
  bo.out = out;
  bo.merge_into = "original";
  bo.force = true;
  bo.dtype.reset();
  return MergedWriter(bo, src, base, /*base_only=*/true).run();
}

}  // namespace qlora::exporter
