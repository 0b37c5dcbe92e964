"""Reads a LoRA GGUF with the gguf package (llama.cpp's reader) and checks it against the PEFT
adapter it was made from: names, shapes, types, adapter metadata, and values (with the llama
q/k permutation of lora_B computed here, from docs/formats.md §6.4).

usage: gguf_check.py FILE.gguf ADAPTER.safetensors ARCH N_HEAD N_HEAD_KV ALPHA
"""
import sys
import numpy as np
import torch
from gguf import GGUFReader
from safetensors.torch import load_file

path, adapter, arch, n_head, n_kv, alpha = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
r = GGUFReader(path)
kv = {f.name: f for f in r.fields.values()}

def scalar(name):
    f = kv[name]
    v = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(v).decode()
    return v.tolist()[0]

assert scalar("general.type") == "adapter", scalar("general.type")
assert scalar("general.architecture") == arch
assert scalar("adapter.type") == "lora"
assert abs(scalar("adapter.lora.alpha") - alpha) < 1e-6

names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
peft = load_file(adapter)
expected = {}
for k, v in peft.items():
    parts = k.split(".")  # base_model.model.model.layers.N.<grp>.<proj>.lora_X.weight
    layer, proj, ab = parts[4], parts[6], parts[7]
    name = f"blk.{layer}.{names[proj]}.weight.lora_{'a' if ab == 'lora_A' else 'b'}"
    w = v.float()
    if arch == "llama" and ab == "lora_B" and proj in ("q_proj", "k_proj"):
        h = n_head if proj == "q_proj" else n_kv
        rows, cols = w.shape
        w = w.reshape(h, 2, rows // h // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    expected[name] = w

seen = set()
for t in r.tensors:
    assert t.name in expected, t.name
    exp = expected[t.name]
    # ggml ne order is reversed
    assert list(t.shape) == list(reversed(exp.shape)), (t.name, t.shape, exp.shape)
    data = np.array(t.data)
    if t.tensor_type.name == "BF16":
        got = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float().reshape(exp.shape)
    else:
        got = torch.from_numpy(data.astype(np.float32)).reshape(exp.shape)
    tol = 0 if t.tensor_type.name == "F32" else 1e-2
    assert torch.allclose(got, exp, atol=tol * exp.abs().max().item() + 1e-12), t.name
    seen.add(t.name)
assert seen == set(expected), set(expected) - seen
print("ok", len(seen), "tensors", r.tensors[0].tensor_type.name)
