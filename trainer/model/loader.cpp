// load_model: config.json + safetensors, or a GGUF file -> Model, streaming tensor by tensor out of
// the mmap (gguf_base.h: TensorSource).
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <cstdio>

#include "trainer/common/error.h"
#include "trainer/common/memory.h"
#include "trainer/io/dtype.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/gguf_base.h"
#include "trainer/model/lora_init.h"
#include "trainer/model/lora_linear.h"
#include "trainer/model/model.h"
#include "trainer/model/rope.h"
#include "trainer/quant/bnb_nf4.h"

namespace qlora::model {

namespace {

class Loader {
 public:
  Loader(const std::filesystem::path& base, const ModelLoadOptions& opts)
      : base_(base), src_(open_tensor_source(base)), opts_(opts) {}

  Model load() {
    Model m;
    m.config = read_model_config(base_);
    m.device = opts_.device;
    m.compute_dtype = opts_.compute_dtype.value_or(opts_.device.is_cuda() ? at::kBFloat16 : at::kFloat);
    dtype_ = m.compute_dtype;
    if (opts_.lora) {
      resolve_lora_targets(*opts_.lora, m.config);  // UserError for bad targets
      if (lora_init_method(*opts_.lora).kind == LoraInitMethod::Loftq && lora_scaling(*opts_.lora) != 1.0)
        std::fprintf(stderr,
                     "qlora: warning: init_lora_weights: loftq: LoftQ's A and B cancel the quantization error at a "
                     "LoRA scaling of 1 (PEFT computes them so); this config scales the adapter by %g, so the "
                     "starting model overshoots the 16-bit one. Set lora_alpha equal to lora_r (or to sqrt(lora_r) "
                     "with use_rslora).\n",
                     lora_scaling(*opts_.lora));
      if (opts_.lora->use_dora && !opts_.lora->target_parameters.empty())
        user_error("use_dora: DoRA is not supported with lora_target_parameters (expert tensors), as in PEFT");
      m.lora_target_parameters = opts_.lora->target_parameters;
    }
    const ModelConfig& c = m.config;
    const int64_t H = c.hidden_size;
    init_gen_ = at::make_generator<at::CPUGeneratorImpl>(opts_.seed);

    m.embed_tokens = take16("model.embed_tokens.weight", {c.vocab_size, H});
    m.layers.resize(c.num_hidden_layers);
    const std::vector<LinearSpec> specs = layer_linears(c);
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      DecoderLayer& L = m.layers[i];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      L.input_layernorm = take16(p + "input_layernorm.weight", {H});
      L.post_attention_layernorm = take16(p + "post_attention_layernorm.weight", {H});
      if (c.qk_norm) {
        L.q_norm = take16(p + "self_attn.q_norm.weight", {c.head_dim});
        L.k_norm = take16(p + "self_attn.k_norm.weight", {c.head_dim});
      }
      if (c.is_moe()) {
        L.experts.resize(c.num_experts);
        L.router = take16(p + router_path(c) + ".weight", {c.num_experts, H});
        if (c.shared_expert_intermediate_size > 0)
          L.shared_expert_gate = take16(p + "mlp.shared_expert_gate.weight", {1, H});
      }
      if (c.gemma) {
        L.pre_feedforward_layernorm = take16(p + "pre_feedforward_layernorm.weight", {H});
        L.post_feedforward_layernorm = take16(p + "post_feedforward_layernorm.weight", {H});
      }
      for (const LinearSpec& spec : specs) {
        Linear* l = L.linear_at(spec.path);
        TORCH_CHECK(l, "load_model: no member for projection ", spec.path);
        load_linear(*l, p + spec.path, {spec.out, spec.in}, spec.bias);
      }
      if (opts_.lora && c.is_moe()) {  // lora_target_parameters: PEFT's stacked expert adapters
        const ExpertTargets t = resolve_expert_targets(*opts_.lora, c);
        if ((t.gate_up || t.down) && lora_init_method(*opts_.lora).changes_base())
          user_error("init_lora_weights: ", opts_.lora->init_lora_weights,
                     " is not supported with lora_target_parameters (expert tensors); use true or gaussian");
        const int64_t E = c.num_experts, I = c.moe_intermediate_size;
        config::LoraConfig stacked = *opts_.lora;
        stacked.r = opts_.lora->r * E;
        stacked.dropout = 0;
        auto make = [&](int64_t in, int64_t out) {
          LoraAdapter a = make_lora_adapter(in, out, stacked, init_gen_, dtype_, opts_.device);
          a.scaling = lora_scaling(*opts_.lora);
          return a;
        };
        if (t.gate_up) {
          L.experts_gate_up_lora = make(H, 2 * I);
          L.experts_gate_up_module = p + expert_lora_module(true, t);
        }
        if (t.down) {
          L.experts_down_lora = make(I, H);
          L.experts_down_module = p + expert_lora_module(false, t);
        }
      }
    }
    m.norm = take16("model.norm.weight", {H});
    if (c.tie_word_embeddings) {
      m.lm_head = m.embed_tokens;
    } else {
      if (!src_->contains("lm_head.weight"))
        user_error(src_->location(), ": lm_head.weight: missing (config.json says tie_word_embeddings is false)");
      m.lm_head = take16("lm_head.weight", {c.vocab_size, H});
    }
    m.inv_freq = rope_inv_freq(c).to(m.device);
    if (c.rope.type == "longrope") m.long_inv_freq = rope_inv_freq(c, /*long_factors=*/true).to(m.device);
    if (c.rope_local) m.inv_freq_local = rope_inv_freq(*c.rope_local, c.head_dim).to(m.device);
    // A CPU generator on every device: it draws one seed per dropout call (lora.h).
    m.dropout_generator = at::make_generator<at::CPUGeneratorImpl>(opts_.seed + 1);
    return m;
  }

 private:
  std::string where(const std::string& name) const { return src_->where(name); }

  // A floating tensor of the source with the expected shape: a zero-copy view of a safetensors
  // tensor, or one GGUF tensor dequantized to fp32.
  at::Tensor view16(const std::string& name, const std::vector<int64_t>& shape) {
    if (!src_->contains(name)) user_error(src_->location(), ": ", name, ": missing from the checkpoint");
    if (!src_->is_float(name))
      user_error(where(name), ": expected F32, BF16 or F16 weights, got ", src_->dtype_name(name));
    const std::vector<int64_t> got = src_->shape(name);
    if (got != shape)
      user_error(where(name), ": expected shape ", at::IntArrayRef(shape), ", got ", at::IntArrayRef(got));
    return src_->tensor(name);
  }

  void release(const std::string& name) { src_->release(name); }

  // An owned copy in the compute dtype on the device.
  at::Tensor take16(const std::string& name, const std::vector<int64_t>& shape) {
    at::Tensor v = view16(name, shape);
    at::Tensor out = v.to(opts_.device, dtype_, /*non_blocking=*/false, /*copy=*/true);
    v = at::Tensor();
    release(name);
    trim_heap();
    return out;
  }

  void load_linear(Linear& l, const std::string& prefix, const std::vector<int64_t>& shape, bool bias) {
    l.name = prefix;
    l.out_features = shape[0];
    l.in_features = shape[1];
    const std::string wname = prefix + ".weight";
    const bool adapted = opts_.lora && lora_targets(*opts_.lora, prefix);
    if (adapted && lora_init_method(*opts_.lora).changes_base()) {
      load_linear_new_base(l, prefix, shape);
    } else if (src_->hf() && quant::is_bnb_4bit(*src_->hf(), prefix)) {
      kernels::NF4Tensor q = quant::read_bnb_nf4(*src_->hf(), prefix);
      if (q.shape != shape)
        user_error(where(prefix + (std::string(".weight") + quant::kBnbNf4StateSuffix)), ": shape ",
                   at::IntArrayRef(q.shape), ", expected ", at::IntArrayRef(shape));
      if (opts_.quantize)
        l.nf4 = q.to(opts_.device);
      else
        l.weight = kernels::nf4_dequantize(q, dtype_).to(opts_.device);
    } else {
      at::Tensor v = view16(wname, shape);
      if (opts_.quantize)
        l.nf4 = kernels::nf4_quantize(v, opts_.blocksize, opts_.double_quant).to(opts_.device);
      else
        l.weight = v.to(opts_.device, dtype_, /*non_blocking=*/false, /*copy=*/true);
      v = at::Tensor();
      release(wname);
      trim_heap();
    }
    if (bias) l.bias = take16(prefix + ".bias", {shape[0]});
    if (adapted && !l.lora)
      l.lora = make_lora_adapter(l.in_features, l.out_features, *opts_.lora, init_gen_, dtype_, opts_.device);
    // DoRA's magnitude starts at the row norms of this base plus the adapter's initial product.
    if (l.lora && opts_.lora->use_dora) init_dora(l.nf4 ? &*l.nf4 : nullptr, l.weight, *l.lora);
  }

  // PiSSA / OLoRA / LoftQ: the adapter comes from the weight and replaces it as the base
  // (lora_init.h). The new base is rounded to the checkpoint's dtype, as the 16-bit model PEFT
  // would save holds it, then quantized like any weight.
  void load_linear_new_base(Linear& l, const std::string& prefix, const std::vector<int64_t>& shape) {
    const std::string wname = prefix + ".weight";
    at::ScalarType stored = at::kFloat;
    at::Tensor w = weight_for_init(prefix, shape, &stored);
    const LoraInitResult init = lora_init_from_weight(w, *opts_.lora, init_gen_);
    const at::Tensor base = lora_init_base(w, init).to(stored);
    w = at::Tensor();
    release(wname);
    if (opts_.quantize)
      l.nf4 = kernels::nf4_quantize(base, opts_.blocksize, opts_.double_quant).to(opts_.device);
    else
      l.weight = base.to(opts_.device, dtype_, /*non_blocking=*/false, /*copy=*/true);
    l.lora = lora_adapter_from(init.A, init.B, *opts_.lora, dtype_, opts_.device);
    trim_heap();
  }

 public:
  // The inits load() computes, in the same order with the same generator (replay_lora_init).
  std::map<std::string, LoraInitResult> replay_inits() {
    std::map<std::string, LoraInitResult> out;
    const ModelConfig c = read_model_config(base_);
    resolve_lora_targets(*opts_.lora, c);
    init_gen_ = at::make_generator<at::CPUGeneratorImpl>(opts_.seed);
    const std::vector<LinearSpec> specs = layer_linears(c);
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      for (const LinearSpec& spec : specs) {
        const std::string prefix = layer_prefix(i) + spec.path;
        if (!lora_targets(*opts_.lora, prefix)) continue;
        at::ScalarType stored = at::kFloat;
        const at::Tensor w = weight_for_init(prefix, {spec.out, spec.in}, &stored);
        out.emplace(prefix, lora_init_from_weight(w, *opts_.lora, init_gen_));
        release(prefix + ".weight");
      }
    return out;
  }

  // The weight a base-changing init starts from, fp32 or as stored; `stored`: the dtype its new
  // base is rounded to.
  at::Tensor weight_for_init(const std::string& prefix, const std::vector<int64_t>& shape, at::ScalarType* stored) {
    const config::LoraConfig& cfg = *opts_.lora;
    const std::string wname = prefix + ".weight";
    if (src_->hf() && quant::is_bnb_4bit(*src_->hf(), prefix)) {
      if (cfg.init_lora_weights != "olora")
        user_error(where(wname + quant::kBnbNf4StateSuffix), ": init_lora_weights: ", cfg.init_lora_weights,
                   " needs the 16-bit weights, and this checkpoint holds them in 4 bit (give the original model as "
                   "base_model)");
      const kernels::NF4Tensor q = quant::read_bnb_nf4(*src_->hf(), prefix);
      if (q.shape != shape)
        user_error(where(wname + quant::kBnbNf4StateSuffix), ": shape ", at::IntArrayRef(q.shape), ", expected ",
                   at::IntArrayRef(shape));
      // PEFT's OLoRA dequantizes a 4-bit base to fp32 and quantizes the fp32 residual again.
      *stored = at::kFloat;
      return kernels::nf4_dequantize(q, at::kFloat);
    }
    at::Tensor w = view16(wname, shape);
    *stored = w.scalar_type();
    return w;
  }

 private:
  std::filesystem::path base_;
  std::unique_ptr<TensorSource> src_;
  ModelLoadOptions opts_;
  at::ScalarType dtype_ = at::kFloat;
  at::Generator init_gen_;
};

}  // namespace

ModelLoadOptions ModelLoadOptions::from_train_config(const config::TrainConfig& cfg, at::Device device) {
  ModelLoadOptions o;
  o.device = device;
  if (cfg.quantization.compute_dtype != "auto")
    o.compute_dtype = parse_dtype_name(cfg.quantization.compute_dtype,
                                       cfg.where("quantization.compute_dtype") + ": quantization.compute_dtype");
  if (cfg.lora.adapter != "qlora" && cfg.lora.adapter != "lora")
    user_error(cfg.where("adapter"), ": adapter: expected qlora or lora, got \"", cfg.lora.adapter, "\"");
  o.quantize = cfg.lora.adapter == "qlora";
  o.blocksize = cfg.quantization.blocksize;
  o.double_quant = cfg.quantization.double_quant;
  o.lora = cfg.lora;
  o.seed = cfg.seed;
  return o;
}

Model load_model(const std::filesystem::path& dir, const ModelLoadOptions& opts) { return Loader(dir, opts).load(); }

std::map<std::string, LoraInitResult> replay_lora_init(const std::filesystem::path& dir, const config::LoraConfig& lora,
                                                       uint64_t seed) {
  if (!lora_init_method(lora).changes_base()) return {};
  ModelLoadOptions o;
  o.lora = lora;
  o.seed = seed;
  return Loader(dir, o).replay_inits();
}

}  // namespace qlora::model
