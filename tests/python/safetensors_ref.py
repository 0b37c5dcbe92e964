"""Reference side of the safetensors tests (the `safetensors` and `huggingface_hub` libraries).

  write DIR         write DIR/ref.safetensors (many dtypes/shapes) + DIR/ref.json (expected bytes),
                    and a sharded checkpoint DIR/sharded/ with an index
  check FILE        load a file we wrote; print "name dtype shape hexbytes" lines and metadata
  reject FILE...    for each file print "<file> rejected" or "<file> accepted"
"""
import json, sys, os
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def tensors():
    g = torch.Generator().manual_seed(0)
    t = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, 3, 4, generator=g).to(torch.float16),
        "f64": torch.randn(5, generator=g).double(),
        "i8": torch.randint(-128, 127, (9,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (3, 3), generator=g, dtype=torch.uint8),
        "i16": torch.randint(-1000, 1000, (6,), generator=g, dtype=torch.int16),
        "i32": torch.randint(-10**6, 10**6, (2, 2), generator=g, dtype=torch.int32),
        "i64": torch.randint(-10**12, 10**12, (3,), generator=g, dtype=torch.int64),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5),
        "big": torch.randn(300, 17, generator=g),
        "odd.name/with:chars": torch.arange(5, dtype=torch.float32),
    }
    return t


def hexb(v):
    return v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex() if v.numel() else ""


def main():
    mode = sys.argv[1]
    if mode == "write":
        d = sys.argv[2]
        t = tensors()
        save_file(t, os.path.join(d, "ref.safetensors"), metadata={"format": "pt", "note": "hello"})
        exp = {k: {"shape": list(v.shape), "hex": hexb(v)} for k, v in t.items()}
        json.dump(exp, open(os.path.join(d, "ref.json"), "w"))
        from huggingface_hub import save_torch_state_dict
        big = {f"model.layers.{i}.w": torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)}
        os.makedirs(os.path.join(d, "sharded"), exist_ok=True)
        save_torch_state_dict(big, os.path.join(d, "sharded"), max_shard_size="40KB")
        json.dump({k: v.numpy().tobytes().hex() for k, v in big.items()}, open(os.path.join(d, "sharded.json"), "w"))
    elif mode == "check":
        with safe_open(sys.argv[2], framework="pt") as f:
            print("metadata", json.dumps(f.metadata(), sort_keys=True))
            for k in f.keys():
                v = f.get_tensor(k)
                hexs = hexb(v) or "-"
                print(k, str(v.dtype), list(v.shape), hexs)
    elif mode == "reject":
        for p in sys.argv[2:]:
            try:
                with safe_open(p, framework="pt") as f:
                    for k in f.keys():
                        f.get_tensor(k)
                print(os.path.basename(p), "accepted")
            except Exception:
                print(os.path.basename(p), "rejected")


main()
