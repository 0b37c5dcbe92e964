"""PEFT's own LoRA initialisations on a tiny model: the judge of trainer/model/lora_init.h.

  lora_init_ref.py MODEL OUT --init METHOD --r R --alpha A --targets t1,t2|all-linear
                   [--rslora] [--seed S] [--loftq-iter N]

Builds PeftModel(init_lora_weights=True) on MODEL (in its stored dtype), seeds torch's generator with S, then
runs PEFT's initialisation METHOD (true, false, gaussian, pissa, pissa_niter_K, olora, loftq) on
every LoRA layer in module order, the order qlora's loader visits them. OUT (safetensors):
MODULE.lora_A, MODULE.lora_B and MODULE.base (the base weight after the method) for every adapted
MODULE (e.g. model.layers.0.self_attn.q_proj), all fp32.

PEFT's LoftQ moves the weight to "cuda" to quantize it; here the same function runs with that
device name replaced by "cpu" (bitsandbytes quantizes NF4 on the CPU too). Nothing else changes.
"""
import argparse, inspect, sys, types

import torch
from safetensors.torch import save_file


def cpu_loftq():
    import peft.tuners.lora.layer as layer
    import peft.utils.loftq_utils as lu
    src = inspect.getsource(lu.loftq_init)
    assert src.count('"cuda"') == 1, "PEFT's loftq_init changed; update this reference"
    ns = dict(vars(lu))
    exec(compile(src.replace('"cuda"', '"cpu"'), lu.__file__, "exec"), ns)
    layer.loftq_init = ns["loftq_init"]


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--init", required=True)
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8)
    p.add_argument("--targets", default="all-linear")
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--loftq-iter", type=int, default=1)
    a = p.parse_args(argv)
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM
    # In the checkpoint's own dtype, as a user loads it for PEFT: the methods compute in fp32 and
    # store the new base back in that dtype.
    m = AutoModelForCausalLM.from_pretrained(a.model, dtype="auto")
    targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=targets, use_rslora=a.rslora,
                     bias="none", task_type="CAUSAL_LM", init_lora_weights=True)
    pm = get_peft_model(m, cfg)
    init = a.init
    if init == "loftq":
        cpu_loftq()
        # LoraLayer.loftq_init reads only config.loftq_config (LoraConfig's own check of a
        # loftq config imports scipy, which PEFT's LoftQ does not otherwise use).
        cfg = types.SimpleNamespace(loftq_config={"loftq_bits": 4, "loftq_iter": a.loftq_iter})
    torch.manual_seed(a.seed)
    out = {}
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if not isinstance(mod, LoraLayer) or "default" not in mod.lora_A:
                continue
            if init == "true" or init == "gaussian":
                mod.reset_lora_parameters("default", True if init == "true" else init)
            elif init == "false":  # PEFT leaves nn.Linear's own initialisation in place
                mod.lora_A["default"].reset_parameters()
                mod.lora_B["default"].reset_parameters()
            elif init.startswith("pissa"):
                mod.pissa_init("default", init)
            elif init == "olora":
                mod.olora_init("default")
            elif init == "loftq":
                mod.loftq_init("default", cfg)
            else:
                raise SystemExit(f"unknown init {init}")
            key = name.replace("base_model.model.", "")
            out[key + ".lora_A"] = mod.lora_A["default"].weight.detach().float().contiguous()
            out[key + ".lora_B"] = mod.lora_B["default"].weight.detach().float().contiguous()
            out[key + ".base"] = mod.get_base_layer().weight.detach().float().contiguous()
    save_file(out, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
