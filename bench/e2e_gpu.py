#!/usr/bin/env python3
"""End-to-end training benchmark: `qlora train` against transformers + peft + bitsandbytes.

A Llama-3-8B-shaped model with random weights (vocab 128256, hidden 4096, intermediate 14336, 32
layers, GQA 32/8 heads, untied lm_head, bf16) is written already quantized to NF4 (double-quantized
statistics, blocksize 64) in the bitsandbytes serialized layout, tensor by tensor with
bitsandbytes.functional.quantize_4bit on the device, and sharded like a Hugging Face checkpoint.
Nothing is downloaded. On it, at sequence length --seq, LoRA r 16 / alpha 32 / dropout 0.05 on
every linear layer, gradient checkpointing, paged AdamW 32-bit, lr 2e-4 (constant):

  qlora       micro-batch search M = 1, 2, 4, ... until out of memory (or the time budget), then one
              run at the largest M with the step profiler (profiler_steps), when the binary has it
  HF          the same with transformers + peft + bitsandbytes (prepare_model_for_kbit_training,
              LoraConfig all-linear, bitsandbytes PagedAdamW32bit, grad-norm clipping 1.0 as in
              qlora), in one subprocess so that an out-of-memory or a crash cannot end the bench
  paging      qlora at the chosen M with the optimizer state resident, then forced over a 16 MB
              device budget (most of the ~0.5 GB of state streams from host memory; 128 KiB on the
              tiny shape): median step time, overhead, and whether the per-step losses are equal
  context     qlora at batch 1: the longest sequence_len that trains (doubling, then bisection), with
              gradient_checkpointing: offload (block inputs in pinned host memory)

Every run trains `warmup + measured` steps on full rows (no padding, no packing, no mask); tokens/s
is the median over the measured steps, peak memory is the peak of device memory allocated (CUDA) or
the peak RSS (CPU) of the run's process. Each qlora run is its own process; the HF side runs its
micro-batches in one process (the model is loaded once) and resets the peak counter per micro-batch.

  python bench/e2e_gpu.py --qlora build/qlora --work DIR --out RESULT.json
      [--device cuda|cpu] [--shape llama3-8b|tiny] [--seq N] [--budget-s S]
      [--max-micro-batch N] [--context-max N] [--skip-hf] [--skip-context] [--skip-paging]

DIR holds the model (5.7 GB on the 8B shape, reused by a later call with the same shape), the data,
the run directories (checkpoints removed after each run) and the logs; keep it out of anything that
is copied back. --shape tiny is a few-MB model on the same code path, for a dry run on a CPU
(default --seq 256; the HF side then computes in fp32, as qlora's CPU path does).
--budget-s bounds the whole bench (model writing included); each part gets a share of what is left
and a run that would not end inside its part's share is not started (recorded as skipped).
Exit 0 when the bench ran (an out-of-memory is a result); 1 when a run failed for another reason
(the JSON is still written, its "errors" list says which).
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(ROOT, "data", "demo", "model")
DEMO_TRAIN = os.path.join(ROOT, "data", "demo", "train.jsonl")

SHAPES = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                      max_position_embeddings=1048576),
    # vocab above the demo tokenizer's 1024, as on the 8B shape (the tokenizer is smaller than the model)
    "tiny": dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=65536),
}
# Per shape: default sequence length, micro-batch cap, context search start / cap / rounding, warmup and
# measured steps, the small optimizer device budget of the paging comparison.
PLAN = {
    "llama3-8b": dict(seq=2048, max_mb=256, ctx_start=8192, ctx_max=1048576, ctx_round=1024, warmup=2, measured=4,
                      paged_budget="16MB"),
    # the tiny model's optimizer state is about 0.6 MB: a budget well under it, so that most pages stream
    "tiny": dict(seq=256, max_mb=4, ctx_start=512, ctx_max=4096, ctx_round=128, warmup=1, measured=2,
                 paged_budget="128KiB"),
}
LORA = dict(r=16, alpha=32, dropout=0.05)
LR = 2e-4
STD = 0.02
SHARD_BYTES = 2 * 10**9  # <= 5 GB per shard, as the brief of HF checkpoints; smaller keeps host memory low
OOM_PATTERNS = ("out of memory", "CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation",
                "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory", "not enough memory", "std::bad_alloc")
PREFLIGHT_PATTERN = "or set memory_check: false to try anyway"
QUANT_CONFIG = {  # what transformers' save_pretrained writes for BitsAndBytesConfig(nf4, double quant, bf16)
    "_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
    "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
    "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes"}


def log(*a):
    print("e2e:", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Model writer (subprocess `_model`: the only process besides the HF worker that touches the device)

def model_config_json(shape):
    s = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
        "head_dim": s["hidden_size"] // s["num_attention_heads"], "hidden_act": "silu", "initializer_range": STD,
        "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
        "max_position_embeddings": s["max_position_embeddings"], "mlp_bias": False,
        "num_attention_heads": s["num_attention_heads"], "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": s["num_key_value_heads"], "pretraining_tp": 1, "rms_norm_eps": s["rms_norm_eps"],
        "rope_scaling": None, "rope_theta": s["rope_theta"], "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": False, "vocab_size": s["vocab_size"],
        "quantization_config": QUANT_CONFIG,
    }


def model_tensors(shape):
    """(name, shape, kind) in checkpoint order; kind: embed | norm | linear."""
    s = SHAPES[shape]
    h, i, v = s["hidden_size"], s["intermediate_size"], s["vocab_size"]
    hd = h // s["num_attention_heads"]
    kv = s["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h), "embed")]
    for layer in range(s["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "input_layernorm.weight", (h,), "norm"),
                (p + "self_attn.q_proj.weight", (h, h), "linear"),
                (p + "self_attn.k_proj.weight", (kv, h), "linear"),
                (p + "self_attn.v_proj.weight", (kv, h), "linear"),
                (p + "self_attn.o_proj.weight", (h, h), "linear"),
                (p + "post_attention_layernorm.weight", (h,), "norm"),
                (p + "mlp.gate_proj.weight", (i, h), "linear"),
                (p + "mlp.up_proj.weight", (i, h), "linear"),
                (p + "mlp.down_proj.weight", (h, i), "linear")]
    out += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (v, h), "embed")]
    return out


def machine_info(torch, device):
    info = {"torch": torch.__version__, "python": sys.version.split()[0]}
    for mod in ("transformers", "peft", "bitsandbytes", "safetensors", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001  (reported, not fatal: --skip-hf needs none of them)
            info[mod] = "unavailable: " + str(e).splitlines()[0][:200]
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_bytes=p.total_memory,
                    gpu_capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    return info


def model_worker(a):
    """Writes a.dir (when a.write) and prints one JSON line with the machine's versions and timings."""
    import torch
    dev = a.device
    out = {"machine": machine_info(torch, dev)}
    if not a.write:
        print(json.dumps(out), flush=True)
        return
    import bitsandbytes.functional as F
    from safetensors.torch import save_file
    t0 = time.perf_counter()
    tmp = a.dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    gen = torch.Generator(device=dev).manual_seed(1234)
    tensors = model_tensors(a.shape)
    shards, cur, cur_bytes = [], {}, 0
    weight_map = {}
    stats = {"quantize_s": 0.0, "save_s": 0.0, "bytes": 0, "parameters": 0, "nf4_tensors": 0}

    def flush():
        nonlocal cur, cur_bytes
        if not cur:
            return
        name = f"model-{len(shards) + 1:05d}.safetensors"
        t = time.perf_counter()
        save_file(cur, os.path.join(tmp, name), metadata={"format": "pt"})
        stats["save_s"] += time.perf_counter() - t
        shards.append((name, list(cur)))
        cur, cur_bytes = {}, 0

    def put(name, t):
        nonlocal cur_bytes
        n = t.numel() * t.element_size()
        if cur and cur_bytes + n > SHARD_BYTES:
            flush()
        cur[name] = t.contiguous()
        cur_bytes += n
        stats["bytes"] += n

    for name, shape, kind in tensors:
        numel = 1
        for d in shape:
            numel *= d
        stats["parameters"] += numel
        if kind == "norm":
            put(name, torch.ones(shape, dtype=torch.bfloat16))
            continue
        t = time.perf_counter()
        w = torch.empty(shape, dtype=torch.bfloat16, device=dev).normal_(0.0, STD, generator=gen)
        if kind == "embed":
            put(name, w.cpu())
            continue
        packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        entries = {name: packed}
        for k, v in state.as_dict(packed=True).items():  # absmax, quant_map, nested_*, quant_state.bitsandbytes__nf4
            entries[name + "." + k] = v
        entries = {k: v.cpu() for k, v in entries.items()}
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        stats["quantize_s"] += time.perf_counter() - t
        stats["nf4_tensors"] += 1
        if stats["nf4_tensors"] % 28 == 0:
            log(f"  {stats['nf4_tensors']} NF4 tensors, {stats['bytes'] / 2**30:.2f} GiB, "
                f"{time.perf_counter() - t0:.1f}s")
        del w, packed, state
        group_bytes = sum(v.numel() * v.element_size() for v in entries.values())
        if cur and cur_bytes + group_bytes > SHARD_BYTES:  # one module's entries stay in one shard
            flush()
        for k, v in entries.items():
            put(k, v)
    flush()
    total = len(shards)
    for i, (name, keys) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        os.rename(os.path.join(tmp, name), os.path.join(tmp, final))
        for k in keys:
            weight_map[k] = final
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": stats["bytes"]}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(model_config_json(a.shape), f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}, f)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEMO_MODEL, f), tmp)
    with open(os.path.join(tmp, "e2e_shape.json"), "w") as f:
        json.dump({"shape": a.shape, **SHAPES[a.shape]}, f)
    shutil.rmtree(a.dir, ignore_errors=True)
    os.rename(tmp, a.dir)
    stats.update(shards=total, write_s=time.perf_counter() - t0)
    out["model"] = stats
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------
# HF worker (subprocess `_hf`): one model load, then micro-batches in increasing order

def peak_rss_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def is_oom_text(text):
    return any(p in text for p in OOM_PATTERNS)


def hf_worker(a):
    t0 = time.perf_counter()
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import torch
    import bitsandbytes
    import transformers
    import peft
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    def emit(d):
        print("E2E-HF " + json.dumps(d), flush=True)

    cuda = a.device.startswith("cuda")
    dev = torch.device(a.device)
    if not cuda:
        sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
        from bnb_fp32 import fp32_linear4bit_on_cpu  # bitsandbytes' 4-bit CPU path in fp32 on every CPU
        fp32_linear4bit_on_cpu()
    t_import = time.perf_counter() - t0
    # transformers loads a bitsandbytes checkpoint only when it finds the package's metadata (a
    # bitsandbytes-*.dist-info next to the package on sys.path); say so before a failed load does
    env = {"event": "env", "bitsandbytes_file": bitsandbytes.__file__}
    try:
        import importlib.metadata
        env["bitsandbytes_metadata_version"] = importlib.metadata.version("bitsandbytes")
    except Exception as e:  # noqa: BLE001
        env["bitsandbytes_metadata_version"] = f"not found ({type(e).__name__})"
    try:
        from transformers.utils import is_bitsandbytes_available
        env["transformers_sees_bitsandbytes"] = bool(is_bitsandbytes_available())
    except Exception as e:  # noqa: BLE001
        env["transformers_sees_bitsandbytes"] = f"{type(e).__name__}: {e}"[:300]
    emit(env)
    dtype = torch.bfloat16 if cuda else torch.float32  # qlora's compute_dtype auto: bf16 on GPU, fp32 on CPU
    t1 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a.model, dtype=dtype, device_map={"": torch.cuda.current_device() if cuda else "cpu"})
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    if cuda:
        torch.cuda.synchronize()
    params = [p for p in model.parameters() if p.requires_grad]
    emit({"event": "loaded", "import_s": t_import, "load_s": time.perf_counter() - t1,
          "trainable_parameters": sum(p.numel() for p in params),
          "linear4bit_modules": sum(type(m).__name__ == "Linear4bit" for m in model.modules()),
          "attn_implementation": getattr(model.config, "_attn_implementation", None),
          "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}})
    steps = a.warmup + a.measured
    prev_s = None
    for m in [int(x) for x in a.micro_batches.split(",")]:
        if prev_s is not None and time.time() + 2.2 * prev_s > a.deadline:
            emit({"micro_batch": m, "status": "budget"})
            break
        if time.time() >= (a.deadline if prev_s is not None else a.hard_deadline):  # the first one may overrun
            emit({"micro_batch": m, "status": "budget"})                          # its part, not the bench
            break
        g = torch.Generator().manual_seed(m)
        batches = [torch.randint(0, a.vocab, (m, a.seq), generator=g) for _ in range(steps)]
        opt = bitsandbytes.optim.PagedAdamW32bit(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            peak_rss_reset()
        step_s, losses = [], []
        ts = time.perf_counter()
        rec = {"micro_batch": m, "seq": a.seq, "steps": steps}
        try:
            for ids in batches:
                ids = ids.to(dev)
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                if cuda:
                    torch.cuda.synchronize()
                step_s.append(time.perf_counter() - t)
                del loss, ids
            meas = step_s[a.warmup:]
            med = statistics.median(meas)
            rec.update(status="ok", step_s=step_s, loss=losses, median_step_s=med, tokens_per_s=m * a.seq / med,
                       peak_memory_bytes=torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes())
            if cuda:
                rec["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
        except Exception as e:  # noqa: BLE001
            text = f"{type(e).__name__}: {e}"
            rec.update(status="oom" if is_oom_text(text) or isinstance(e, MemoryError) else "error",
                       message=text[:2000], step_s=step_s, loss=losses)
        rec["wall_s"] = time.perf_counter() - ts
        for p in params:
            p.grad = None
        del opt, batches
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        emit(rec)
        if rec["status"] != "ok":
            break
        prev_s = rec["wall_s"]


# ---------------------------------------------------------------------------------------------
# Driver

class Clock:
    """The overall budget and the per-part shares of what is left."""

    def __init__(self, budget_s):
        self.t0 = time.time()
        self.end = self.t0 + budget_s
        self.part_end = self.end

    def left(self):
        return self.end - time.time()

    def start_part(self, share, shares_left):
        self.part_end = time.time() + max(0.0, self.left()) * share / shares_left
        return self.part_end

    def fits(self, est_s):
        return time.time() + est_s <= self.part_end

    def timeout(self):
        return max(1.0, self.end - time.time())


def words_from_demo():
    words = set()
    for line in open(DEMO_TRAIN):
        for msg in json.loads(line).get("messages", []):
            words.update(w for w in msg.get("content", "").split() if w.isprintable())
    return sorted(words)


class Bench:
    def __init__(self, a):
        self.a = a
        self.plan = dict(PLAN[a.shape])
        if a.max_micro_batch:
            self.plan["max_mb"] = a.max_micro_batch
        if a.context_max:
            self.plan["ctx_max"] = a.context_max
        self.seq = a.seq or self.plan["seq"]
        self.work = os.path.abspath(a.work)
        self.model_dir = os.path.join(self.work, "model")
        self.clock = Clock(a.budget_s)
        self.words = words_from_demo()
        self.errors, self.skipped = [], []
        self.run_seq = 0
        self.profiler_key_ok = True
        self.res = {"description": __doc__.split("\n\n")[0], "command": " ".join([sys.executable] + sys.argv),
                    "shape": dict(name=a.shape, **SHAPES[a.shape]), "device": a.device, "seq": self.seq,
                    "budget_s": a.budget_s, "lora": dict(LORA, target="all-linear"), "lr": LR,
                    "optimizer": "paged_adamw_32bit", "gradient_checkpointing": True,
                    "warmup_steps": self.plan["warmup"], "measured_steps": self.plan["measured"]}

    # -- data ------------------------------------------------------------------------------------
    def data_file(self, seq, rows):
        path = os.path.join(self.work, "data", f"train-{seq}-{rows}.jsonl")
        if os.path.exists(path):
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rng = random.Random(seq * 100003 + rows)
        n = seq + 16  # every word is at least one token: each row truncates to exactly seq tokens
        with open(path + ".tmp", "w") as f:
            for _ in range(rows):
                f.write(json.dumps({"text": " ".join(rng.choices(self.words, k=n))}) + "\n")
        os.rename(path + ".tmp", path)
        return path

    # -- qlora -----------------------------------------------------------------------------------
    def qlora_config(self, out_dir, data, seq, mb, steps, extra):
        cfg = {
            "base_model": self.model_dir, "tokenizer": self.model_dir, "adapter": "qlora",
            "quantization": {"quant_type": "nf4", "double_quant": True, "blocksize": 64, "compute_dtype": "auto"},
            "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"],
            "lora_target_linear": True, "gradient_checkpointing": True,
            "datasets": [{"path": data, "type": "completion"}], "sequence_len": seq, "sample_packing": False,
            "train_on_inputs": True, "micro_batch_size": mb, "gradient_accumulation_steps": 1,
            "max_steps": steps, "learning_rate": LR, "lr_scheduler": "constant", "warmup_steps": 0,
            "optimizer": "paged_adamw_32bit", "weight_decay": 0.0, "max_grad_norm": 1.0,
            "logging_steps": 1, "save_steps": 0, "eval_steps": 0, "device": self.a.device, "seed": 42,
            "output_dir": out_dir,
        }
        cfg.update(extra)
        # YAML: one key per line, values in JSON (a subset of YAML's flow style)
        return "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items())

    def run_qlora(self, tag, seq, mb, steps, extra=None, timeout=None):
        """One `qlora train`; returns the run's record (status ok | oom | timeout | error | refused_key)."""
        extra = dict(extra or {})
        self.run_seq += 1
        name = f"{self.run_seq:02d}-{tag}"
        run_dir = os.path.join(self.work, "runs", name)
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(os.path.join(self.work, "configs"), exist_ok=True)
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        data = self.data_file(seq, mb * steps)
        cfg_path = os.path.join(self.work, "configs", name + ".yaml")
        text = self.qlora_config(run_dir, data, seq, mb, steps, extra)
        with open(cfg_path, "w") as f:
            f.write(text)
        self.res.setdefault("qlora_config_first_run", text)  # the others differ in the keys in "extra" and M/seq/steps
        rec = {"run": name, "micro_batch": mb, "seq": seq, "steps": steps, "config": cfg_path, "extra": extra}
        log(f"qlora {name}: M={mb} seq={seq} steps={steps} {extra or ''}")
        t = time.perf_counter()
        out_p, err_p = os.path.join(self.work, "logs", name + ".out"), os.path.join(self.work, "logs", name + ".err")
        with open(out_p, "w") as fo, open(err_p, "w") as fe:
            p = subprocess.Popen([self.a.qlora, "train", cfg_path], stdout=fo, stderr=fe, cwd=self.work)
            try:
                rc = p.wait(timeout=timeout or self.clock.timeout())
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = None
        rec["wall_s"] = time.perf_counter() - t
        rec["exit_code"] = rc
        out, err = open(out_p, errors="replace").read(), open(err_p, errors="replace").read()
        rec["logs"] = [out_p, err_p]
        m = re.search(r"optimizer paging: (.*)", out)
        if m:
            rec["paging_stats"] = m.group(1).strip()
        m = re.search(r"^memory: (.*)$", out, re.M)
        if m:
            rec["preflight"] = m.group(1).strip()
        rows = []
        mpath = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(mpath):
            for line in open(mpath):
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if "loss" in j and "step" in j and "eval_loss" not in j:
                    rows.append(j)
        if rows:
            el = [r["elapsed_s"] for r in rows]
            rec["step_s"] = [el[0]] + [b - x for x, b in zip(el, el[1:])]
            rec["loss"] = [r["loss"] for r in rows]
            rec["tokens_per_s_steps"] = [r["tokens_per_s"] for r in rows]
            rec["peak_memory_bytes"] = max(r["memory_bytes"] for r in rows)
            rec["skipped_steps"] = rows[-1].get("skipped_steps", 0)
        warmup = self.plan["warmup"] if steps > self.plan["warmup"] else 0
        if rc == 0 and len(rows) == steps:
            meas = rows[warmup:]
            rec["status"] = "ok"
            rec["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in meas)
            rec["median_step_s"] = statistics.median(rec["step_s"][warmup:])
            rec["overhead_s"] = rec["wall_s"] - sum(rec["step_s"])  # start-up, load, final checkpoint
            prof = os.path.join(run_dir, "profile_breakdown.json")
            if os.path.exists(prof):
                try:
                    rec["profile_breakdown"] = json.load(open(prof))
                except ValueError as e:
                    rec["profile_breakdown_error"] = str(e)
        elif rc is None:
            rec["status"] = "timeout"
        elif rc == 2 and any(k in err for k in extra if k.startswith("profiler")) and "error" in err:
            rec["status"] = "refused_key"
        elif rc == 2 and PREFLIGHT_PATTERN in err:
            rec["status"] = "preflight_refused"
        elif rc != 0 and is_oom_text(err):
            rec["status"] = "oom"
        else:
            rec["status"] = "error"
        if rec["status"] != "ok":
            rec["stderr_tail"] = err[-1500:]
        # the final checkpoint (adapter, optimizer state: about 0.5 GB on the 8B shape) is not needed
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
        log(f"  -> {rec['status']} in {rec['wall_s']:.1f}s"
            + (f", {rec['tokens_per_s']:.0f} tok/s, peak {rec['peak_memory_bytes'] / 2**30:.2f} GiB"
               if rec["status"] == "ok" else ""))
        return rec

    def qlora_trial(self, tag, seq, mb, steps, extra=None):
        """run_qlora; a run refused by the memory pre-check is run again with memory_check: false
        (the real limit decides; the refusal is kept in the record)."""
        rec = self.run_qlora(tag, seq, mb, steps, extra)
        if rec["status"] == "preflight_refused":
            first = rec
            rec = self.run_qlora(tag + "-nocheck", seq, mb, steps, dict(extra or {}, memory_check=False))
            rec["preflight_refused"] = {"wall_s": first["wall_s"], "stderr_tail": first["stderr_tail"]}
        if rec["status"] == "error":
            self.errors.append(f"qlora {rec['run']}: exit {rec['exit_code']}: {rec.get('stderr_tail', '')[-300:]}")
        return rec

    # -- parts -----------------------------------------------------------------------------------
    def steps(self):
        return self.plan["warmup"] + self.plan["measured"]

    def micro_batches(self):
        ms, m = [], 1
        while m <= self.plan["max_mb"]:
            ms.append(m)
            m *= 2
        return ms

    @staticmethod
    def est_next(rec, factor):
        """Wall time of the same run with `factor` times the step work."""
        steps_s = sum(rec.get("step_s", [])) or rec["wall_s"]
        return (rec["wall_s"] - steps_s) + steps_s * factor

    def part_qlora(self):
        runs = []
        stop = "micro-batch cap"
        for m in self.micro_batches():
            if runs and not self.clock.fits(1.15 * self.est_next(runs[-1], 2.0)):
                self.skipped.append(f"qlora micro-batch {m} and above: time budget")
                stop = "time budget"
                break
            rec = self.qlora_trial(f"qlora-m{m}", self.seq, m, self.steps())
            runs.append(rec)
            if rec["status"] != "ok":
                stop = rec["status"]
                break
        ok = [r for r in runs if r["status"] == "ok"]
        q = {"runs": runs, "largest_micro_batch": max((r["micro_batch"] for r in ok), default=None),
             "stopped_by": stop}
        # the model's vocabulary (128256 on the 8B shape) is larger than the demo tokenizer's
        q["tokenizer_smaller_than_vocab"] = {
            "tokenizer": self.tokenizer_vocab(), "model": SHAPES[self.a.shape]["vocab_size"],
            "accepted": True if ok else (False if runs and "vocab" in runs[0].get("stderr_tail", "") else None)}
        if ok:
            best = max(ok, key=lambda r: r["tokens_per_s"])
            q.update(best_micro_batch=best["micro_batch"], best_tokens_per_s=best["tokens_per_s"],
                     best_peak_memory_bytes=best["peak_memory_bytes"])
        self.res["qlora"] = q

    def part_profile(self):
        q = self.res.get("qlora", {})
        m = q.get("largest_micro_batch")
        if not m:
            self.skipped.append("profile: no qlora run succeeded")
            return
        ref = next(r for r in q["runs"] if r["micro_batch"] == m and r["status"] == "ok")
        if not self.clock.fits(1.1 * ref["wall_s"]):
            self.skipped.append("profile: time budget")
            return
        extra = {"profiler_steps": 2, "profiler_steps_start": self.plan["warmup"] + 1}
        if ref.get("preflight_refused"):
            extra["memory_check"] = False
        rec = self.qlora_trial(f"profile-m{m}", self.seq, m, self.steps(), extra)
        prof = {"run": rec}
        if rec["status"] == "refused_key":
            prof["profiler_keys"] = "refused by this binary: " + rec.get("stderr_tail", "").strip()[-300:]
            if self.clock.fits(1.1 * ref["wall_s"]):
                extra = {k: v for k, v in extra.items() if not k.startswith("profiler")}
                prof["run"] = self.qlora_trial(f"repeat-m{m}", self.seq, m, self.steps(), extra)
            else:
                self.skipped.append("profile: the repeat without profiler keys: time budget")
        else:
            prof["profiler_keys"] = "accepted"
        prof["breakdown"] = prof["run"].get("profile_breakdown")
        self.res["profile"] = prof

    def part_hf(self):
        ms = self.micro_batches()
        deadline = self.clock.part_end
        cmd = [sys.executable, os.path.abspath(__file__), "_hf", "--model", self.model_dir, "--device", self.a.device,
               "--seq", str(self.seq), "--vocab", str(self.tokenizer_vocab()), "--warmup", str(self.plan["warmup"]),
               "--measured", str(self.plan["measured"]), "--micro-batches", ",".join(map(str, ms)),
               "--deadline", str(deadline), "--hard-deadline", str(self.clock.end)]
        log(f"HF worker: micro-batches {ms[0]}..{ms[-1]} until out of memory or the part's budget")
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        err_p = os.path.join(self.work, "logs", "hf.err")
        t = time.perf_counter()
        with open(err_p, "w") as fe:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fe, text=True, cwd=self.work)
            lines = []
            try:
                # the part's deadline plus the time one more micro-batch may take past it
                out, _ = p.communicate(timeout=max(5.0, self.clock.timeout()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                lines.append({"event": "killed at the overall budget"})
        rc = p.returncode
        for line in out.splitlines():
            if line.startswith("E2E-HF "):
                lines.append(json.loads(line[7:]))
        err = open(err_p, errors="replace").read()
        h = {"exit_code": rc, "wall_s": time.perf_counter() - t, "log": err_p}
        h["env"] = next((x for x in lines if x.get("event") == "env"), None)
        h["load"] = next((x for x in lines if x.get("event") == "loaded"), None)
        runs = [x for x in lines if "micro_batch" in x]
        for r in runs:
            if r["status"] == "ok":
                log(f"  HF M={r['micro_batch']}: {r['tokens_per_s']:.0f} tok/s, peak "
                    f"{r['peak_memory_bytes'] / 2**30:.2f} GiB")
            else:
                log(f"  HF M={r['micro_batch']}: {r['status']}")
        h["runs"] = runs
        ok = [r for r in runs if r["status"] == "ok"]
        h["largest_micro_batch"] = max((r["micro_batch"] for r in ok), default=None)
        if ok:
            best = max(ok, key=lambda r: r["tokens_per_s"])
            h.update(best_micro_batch=best["micro_batch"], best_tokens_per_s=best["tokens_per_s"],
                     best_peak_memory_bytes=best["peak_memory_bytes"])
        if rc != 0 and not (runs and runs[-1]["status"] == "oom"):
            h["stderr_tail"] = err[-2000:]
            if is_oom_text(err):  # the process itself died of memory (e.g. while loading)
                h["status"] = "oom"
            elif rc is not None and rc < 0 and h["load"] is not None:
                h["status"] = f"killed by signal {-rc}"
            else:
                h["status"] = "error"
                self.errors.append(f"HF worker: exit {rc}: {err[-300:]}")
        elif any(r["status"] == "error" for r in runs):
            h["status"] = "error"
            self.errors.append("HF worker: " + next(r["message"] for r in runs if r["status"] == "error")[:300])
        else:
            h["status"] = "ok"
        self.res["hf"] = h

    def part_paging(self):
        q = self.res.get("qlora", {})
        m = q.get("largest_micro_batch")
        if not m:
            self.skipped.append("paging: no qlora run succeeded")
            return
        ref = next(r for r in q["runs"] if r["micro_batch"] == m and r["status"] == "ok")
        # two runs at M must fit the part; halve M until they do (recorded)
        chosen = m
        est = 2 * ref["wall_s"]
        while chosen > 1 and not self.clock.fits(1.1 * est):
            chosen //= 2
            est = 2 * self.est_next(ref, chosen / m)
        if not self.clock.fits(1.1 * est):
            self.skipped.append("paging: time budget")
            return
        extra = {"memory_check": False} if ref.get("preflight_refused") else {}
        resident = self.qlora_trial(f"paging-resident-m{chosen}", self.seq, chosen, self.steps(),
                                    dict(extra, optimizer_device_budget="64GiB"))
        paged = self.qlora_trial(f"paging-16MB-m{chosen}", self.seq, chosen, self.steps(),
                                 dict(extra, optimizer_device_budget=self.plan["paged_budget"]))
        pg = {"micro_batch": chosen, "largest_micro_batch": m, "budgets": ["64GiB", self.plan["paged_budget"]],
              "resident": resident, "paged": paged}
        if resident["status"] == "ok" and paged["status"] == "ok":
            a, b = resident["median_step_s"], paged["median_step_s"]
            pg["median_step_s"] = {"resident": a, "paged": b}
            pg["overhead_percent"] = 100.0 * (b - a) / a
            pg["losses_equal"] = resident["loss"] == paged["loss"]
            pg["loss_max_abs_diff"] = max(abs(x - y) for x, y in zip(resident["loss"], paged["loss"]))
            pg["peak_memory_bytes"] = {"resident": resident["peak_memory_bytes"], "paged": paged["peak_memory_bytes"]}
        m = re.search(r"\((\d+) resident, (\d+) streamed", paged.get("paging_stats", ""))
        if m:
            pg["paged_pages"] = {"resident": int(m.group(1)), "streamed": int(m.group(2))}
            if int(m.group(2)) == 0:
                self.errors.append(f"paging: the {self.plan['paged_budget']} budget streamed no page")
        self.res["paging"] = pg

    def part_context(self):
        p = self.plan
        trials = []
        ok_len, fail_len = None, None
        stop = None
        m1 = next((r for r in self.res.get("qlora", {}).get("runs", [])
                   if r["micro_batch"] == 1 and r["status"] == "ok"), None)
        nocheck = {"memory_check": False} if (m1 or {}).get("preflight_refused") else {}
        last = m1  # the estimate's base: the last trial that trained (first: the search's M=1 run)
        length = p["ctx_start"]

        def estimate(rec, new_len, new_steps=2):
            steps_s = sum(rec.get("step_s", [])) or rec["wall_s"]
            per = steps_s / max(1, len(rec.get("step_s", [])) or rec["steps"])
            return (rec["wall_s"] - steps_s) + new_steps * per * (new_len / rec["seq"]) ** 1.5

        def trial(length):
            nonlocal ok_len, fail_len, last, stop
            if last is not None and not self.clock.fits(1.1 * estimate(last, length)):
                stop = f"time budget before {length}"
                return None
            if self.clock.left() <= 1:
                stop = f"time budget before {length}"
                return None
            # Long contexts with the checkpointed block inputs in pinned host memory, as the
            # long-context recipes run them (gradient_checkpointing: offload).
            rec = self.qlora_trial(f"context-{length}", length, 1, 2, {**nocheck, "gradient_checkpointing": "offload"})
            trials.append(rec)
            if rec["status"] == "ok":
                ok_len, last = length, rec
            else:
                fail_len = length
            return rec

        while length <= p["ctx_max"]:
            rec = trial(length)
            if rec is None or rec["status"] != "ok":
                break
            length *= 2
        if length > p["ctx_max"] and stop is None:
            stop = f"reached the cap {p['ctx_max']}"
        # bisection between the last length that trained and the first that ran out of memory
        if trials and trials[-1]["status"] == "oom":
            lo = ok_len or 0
            for _ in range(3):
                mid = (lo + fail_len) // 2 // p["ctx_round"] * p["ctx_round"]
                if mid <= lo or mid >= fail_len:
                    break
                rec = trial(mid)
                if rec is None:
                    break
                if rec["status"] == "ok":
                    lo = mid
                elif rec["status"] != "oom":
                    break
        c = {"micro_batch": 1, "steps_per_trial": 2, "trials": trials, "longest": ok_len,
             "first_failing": fail_len}
        if stop is None and fail_len is not None:
            stop = f"{next(t['status'] for t in trials if t['seq'] == fail_len)} at {fail_len}"
        c["stopped_by"] = stop or "none"
        if ok_len:
            best = next(r for r in trials if r["seq"] == ok_len and r["status"] == "ok")
            c.update(peak_memory_bytes=best["peak_memory_bytes"], step_s=best["step_s"])
        self.res["context"] = c

    def tokenizer_vocab(self):
        # the demo tokenizer's size: ids the HF side draws must be ids a tokenizer could give
        return json.load(open(os.path.join(DEMO_MODEL, "config.json")))["vocab_size"]

    # -- model -----------------------------------------------------------------------------------
    def model(self):
        marker = os.path.join(self.model_dir, "e2e_shape.json")
        want = {"shape": self.a.shape, **SHAPES[self.a.shape]}
        reuse = os.path.exists(marker) and json.load(open(marker)) == want
        cmd = [sys.executable, os.path.abspath(__file__), "_model", "--dir", self.model_dir, "--shape", self.a.shape,
               "--device", self.a.device] + ([] if reuse else ["--write"])
        log("model: " + ("reusing " + self.model_dir if reuse else f"writing {self.a.shape} to {self.model_dir}"))
        t = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # its stderr (progress) passes through
        if r.returncode != 0:
            sys.exit(f"e2e: writing the model failed ({r.returncode})")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        m = info.get("model", {})
        m.update(reused=reuse, wall_s=time.perf_counter() - t, dir=self.model_dir)
        if not reuse:
            log(f"  wrote {m['bytes'] / 2**30:.2f} GiB in {m['shards']} shards, {m['write_s']:.1f}s "
                f"(quantize {m['quantize_s']:.1f}s, save {m['save_s']:.1f}s)")
        self.res["model"] = m
        self.res["machine"] = dict(host_machine(), **info["machine"])

    # -- all ---------------------------------------------------------------------------------------
    def run(self):
        os.makedirs(self.work, exist_ok=True)
        self.model()
        parts = [("qlora", 0.30, self.part_qlora), ("profile", 0.10, self.part_profile)]
        if not self.a.skip_hf:
            parts.append(("hf", 0.30, self.part_hf))
        if not self.a.skip_paging:
            parts.append(("paging", 0.12, self.part_paging))
        if not self.a.skip_context:
            parts.append(("context", 0.18, self.part_context))
        for i, (name, share, fn) in enumerate(parts):
            left = sum(s for _, s, _ in parts[i:])
            self.clock.start_part(share, left)
            t = time.time()
            if self.clock.left() <= 0:
                self.skipped.append(f"{name}: time budget spent")
                continue
            fn()
            self.res.setdefault("part_wall_s", {})[name] = time.time() - t
        self.res["ratios"] = ratios(self.res)
        self.res["skipped"] = self.skipped
        self.res["errors"] = self.errors
        self.res["total_wall_s"] = time.time() - self.clock.t0


def host_machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    out = {"cpu": cpu, "cpus": os.cpu_count(), "avx512f": " avx512f " in flags}
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            out["nvidia_smi"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def ratios(res):
    q, h = res.get("qlora", {}), res.get("hf", {})
    out = {}
    if q.get("best_tokens_per_s") and h.get("best_tokens_per_s"):
        out["tokens_per_s_at_best_micro_batch"] = q["best_tokens_per_s"] / h["best_tokens_per_s"]
        out["peak_memory_at_best_micro_batch"] = q["best_peak_memory_bytes"] / h["best_peak_memory_bytes"]
    qok = {r["micro_batch"]: r for r in q.get("runs", []) if r["status"] == "ok"}
    hok = {r["micro_batch"]: r for r in h.get("runs", []) if r["status"] == "ok"}
    both = sorted(set(qok) & set(hok))
    if both:
        m = both[-1]
        out["equal_micro_batch"] = m
        out["tokens_per_s_at_equal_micro_batch"] = qok[m]["tokens_per_s"] / hok[m]["tokens_per_s"]
        out["peak_memory_at_equal_micro_batch"] = qok[m]["peak_memory_bytes"] / hok[m]["peak_memory_bytes"]
        out["per_micro_batch"] = {str(k): {"tokens_per_s": qok[k]["tokens_per_s"] / hok[k]["tokens_per_s"],
                                           "peak_memory": qok[k]["peak_memory_bytes"] / hok[k]["peak_memory_bytes"]}
                                  for k in both}
    return out


def gib(b):
    return f"{b / 2**30:.2f} GiB" if b is not None else "-"


def table(res):
    rows = [("side", "M", "status", "tokens/s", "peak memory", "median step", "wall")]
    for side in ("qlora", "hf"):
        for r in res.get(side, {}).get("runs", []):
            ok = r["status"] == "ok"
            rows.append((side, str(r["micro_batch"]), r["status"], f"{r['tokens_per_s']:.0f}" if ok else "-",
                         gib(r.get("peak_memory_bytes")) if ok else "-",
                         f"{r['median_step_s']:.3f}s" if ok else "-",
                         f"{r['wall_s']:.1f}s" if "wall_s" in r else "-"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"e2e {res['shape']['name']} on {res['machine'].get('gpu', res['machine'].get('cpu'))}, "
             f"seq {res['seq']}, LoRA r 16 all-linear, gradient checkpointing"]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    ra = res.get("ratios", {})
    if "tokens_per_s_at_best_micro_batch" in ra:
        lines.append(f"qlora/HF at each side's best M ({res['qlora']['best_micro_batch']} / "
                     f"{res['hf']['best_micro_batch']}): tokens/s x{ra['tokens_per_s_at_best_micro_batch']:.2f}, "
                     f"peak memory x{ra['peak_memory_at_best_micro_batch']:.2f}")
    if "equal_micro_batch" in ra:
        lines.append(f"qlora/HF at equal M {ra['equal_micro_batch']}: tokens/s "
                     f"x{ra['tokens_per_s_at_equal_micro_batch']:.2f}, peak memory "
                     f"x{ra['peak_memory_at_equal_micro_batch']:.2f}")
    prof = res.get("profile", {})
    if prof.get("breakdown"):
        parts = {k: v for k, v in (prof["breakdown"].get("parts") or {}).items() if isinstance(v, (int, float))}
        tot = sum(parts.values()) or 1.0
        lines.append("qlora step profile: " + ", ".join(
            f"{k} {100 * v / tot:.0f}%" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))
    elif prof:
        lines.append(f"qlora step profile: none ({prof.get('profiler_keys', '')[-110:]})")
    pg = res.get("paging")
    if pg and "overhead_percent" in pg:
        lines.append(f"paging ({pg['budgets'][1]} device budget vs resident, M {pg['micro_batch']}): step "
                     f"{pg['median_step_s']['paged']:.3f}s vs {pg['median_step_s']['resident']:.3f}s, "
                     f"{pg['overhead_percent']:+.1f}%; losses equal: {pg['losses_equal']}")
    elif pg:
        lines.append(f"paging: resident {pg['resident']['status']}, paged {pg['paged']['status']}")
    c = res.get("context")
    if c:
        lines.append(f"longest context at batch 1: {str(c['longest']) + ' tokens' if c['longest'] else 'none trained'}"
                     + (f" (peak {gib(c['peak_memory_bytes'])})" if c.get("longest") else "")
                     + f"; trials: " + ", ".join(f"{t['seq']} {t['status']}" for t in c["trials"])
                     + f"; stopped by: {c['stopped_by']}")
    for s in res.get("skipped", []):
        lines.append("skipped: " + s)
    for e in res.get("errors", []):
        lines.append("ERROR: " + e.replace("\n", " ")[:300])
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_model":
        ap = argparse.ArgumentParser()
        ap.add_argument("--dir", required=True)
        ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
        ap.add_argument("--device", required=True)
        ap.add_argument("--write", action="store_true")
        return model_worker(ap.parse_args(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_hf":
        ap = argparse.ArgumentParser()
        ap.add_argument("--model", required=True)
        ap.add_argument("--device", required=True)
        ap.add_argument("--micro-batches", required=True)
        for k in ("seq", "vocab", "warmup", "measured"):
            ap.add_argument("--" + k, type=int, required=True)
        ap.add_argument("--deadline", type=float, required=True)
        ap.add_argument("--hard-deadline", type=float, required=True)
        return hf_worker(ap.parse_args(sys.argv[2:]))

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlora", required=True, help="the qlora binary")
    ap.add_argument("--work", required=True, help="work directory (model, data, runs, logs); the model is reused")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 2048; tiny: 256)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall-clock bound of the whole bench")
    ap.add_argument("--max-micro-batch", type=int, default=None, help="micro-batch search cap (default 256; tiny: 4)")
    ap.add_argument("--context-max", type=int, default=None,
                    help="context search cap in tokens (default 1048576; tiny: 4096)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-context", action="store_true")
    ap.add_argument("--skip-paging", action="store_true")
    a = ap.parse_args()
    a.qlora = os.path.abspath(a.qlora)
    if not os.access(a.qlora, os.X_OK):
        sys.exit(f"e2e: --qlora {a.qlora}: not an executable")
    b = Bench(a)
    try:
        b.run()
    finally:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".tmp", "w") as f:
            json.dump(b.res, f, indent=1)
            f.write("\n")
        os.replace(a.out + ".tmp", a.out)
    print(table(b.res), flush=True)
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
