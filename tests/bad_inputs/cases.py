"""The bad inputs of the catalogue (run by run_catalogue.py).

Each case copies what it needs from the good fixtures into its own directory, breaks one thing,
and returns the command's arguments. `file`, `key` and `expect` are fragments the one error line
must hold: the file the user gave (path or base name), the key or `:LINE`, and what was expected.
"""
import hashlib
import json
import os
import shutil
import struct

from run_catalogue import Case

CASES = []


def case(area, file, key, expect, name=None):
    def wrap(fn):
        CASES.append(Case(name or fn.__name__, area, fn, file, key, expect))
        return fn
    return wrap


def line(key, cfg="cfg.yaml"):
    """`cfg.yaml:N` for the line where `key` is written in the case's config."""
    return lambda ctx: "%s:%d" % (cfg, ctx.line_of(ctx.path(cfg), key))


def train(ctx, over=None, extra="", args=()):
    return ["train", ctx.config(over, extra)] + list(args)


# ---------------------------------------------------------------------------------------------
# safetensors helpers (the format: u64 header length, JSON header, data)

def st_read(path):
    with open(path, "rb") as fh:
        raw = fh.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path, header, data, pad=True):
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)) + h + data)


def tensors_by_offset(header):
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def model(ctx, src=None):
    """A copy of the fixture model at ./model."""
    return ctx.copy(src or ctx.fx.model, "model")


def train_model(ctx, extra_over=None):
    """Train with base_model ./model (a broken copy) into a copy of the good run."""
    over = {"base_model": ctx.path("model")}
    over.update(extra_over or {})
    return train(ctx, over)


def edit_json(path, fn):
    with open(path) as fh:
        j = json.load(fh)
    fn(j)
    with open(path, "w") as fh:
        json.dump(j, fh, indent=2)


def save_model_tensors(ctx, change):
    """Rewrite ./model/model.safetensors with the safetensors library after `change(state_dict)`."""
    import torch
    from safetensors.torch import load_file, save_file
    p = ctx.path("model", "model.safetensors")
    sd = load_file(p)
    change(sd, torch)
    save_file(sd, p, metadata={"format": "pt"})


Q0 = "model.layers.0.self_attn.q_proj.weight"

# ---------------------------------------------------------------------------------------------
# configs


@case("config", "cfg.yaml", line("lora_alpha"), "invalid YAML")
def config_yaml_syntax(ctx):
    return train(ctx, {"lora_alpha": "8: 9"})


@case("config", "cfg.yaml", line("y"), "invalid YAML")
def config_yaml_bad_indent(ctx):
    return train(ctx, {"lora_dropout": "0.0\n   - x\n  y: [1"})


@case("config", "cfg.yaml", None, "expected a mapping")
def config_not_a_mapping(ctx):
    return ["train", ctx.write("cfg.yaml", "- base_model\n- lora_r\n")]


@case("config", "cfg.yaml", "base_model", "required")
def config_empty_file(ctx):
    ctx.run_dir()
    return ["train", ctx.write("cfg.yaml", "# nothing here\n")]


@case("config", "cfg.yaml", line("lora_rr"), "did you mean")
def config_unknown_key(ctx):
    return train(ctx, {"lora_rr": "4"})


@case("config", "cfg.yaml", "quantization.blocksze", "did you mean")
def config_unknown_nested_key(ctx):
    return train(ctx, extra="quantization:\n  blocksze: 64\n")


@case("config", "cfg.yaml", "lora_r", "given twice")
def config_duplicate_key(ctx):
    return train(ctx, extra="lora_r: 8\n")


@case("config", "cfg.yaml", line("lora_r"), "integer")
def config_wrong_type_int(ctx):
    return train(ctx, {"lora_r": "four"})


@case("config", "cfg.yaml", line("lora_target_linear"), "true")
def config_wrong_type_bool(ctx):
    return train(ctx, {"lora_target_linear": "maybe"})


@case("config", "cfg.yaml", line("datasets"), "list")
def config_wrong_type_list(ctx):
    return train(ctx, {"datasets": "train.jsonl"})


@case("config", "cfg.yaml", line("lora_r"), "positive")
def config_negative_lora_r(ctx):
    return train(ctx, {"lora_r": "-3"})


@case("config", "cfg.yaml", line("lora_dropout"), "expected")
def config_dropout_out_of_range(ctx):
    return train(ctx, {"lora_dropout": "1.5"})


@case("config", "cfg.yaml", "init_lora_weights", "pissa_niter_K")
def config_unknown_lora_init(ctx):
    return train(ctx, extra="init_lora_weights: pisa\n")


@case("config", "cfg.yaml", "loftq_config.loftq_bits", "expected 4")
def config_loftq_8bit(ctx):
    return train(ctx, extra="loftq_config:\n  loftq_bits: 8\n")


@case("config", "cfg.yaml", "loftq_config", "init_lora_weights: olora")
def config_loftq_with_other_init(ctx):
    return train(ctx, extra="init_lora_weights: olora\nloftq_config:\n  loftq_iter: 2\n")


@case("config", "cfg.yaml", "use_dora", "true or false")
def config_use_dora_not_a_bool(ctx):
    return train(ctx, extra="use_dora: sometimes\n")


@case("config", "cfg.yaml", "use_dora", "lora_target_parameters")
def config_dora_on_expert_tensors(ctx):
    return train(ctx, {"lora_dropout": "0"}, extra="use_dora: true\nlora_target_parameters: [experts.down_proj]\n")


@case("config", "cfg.yaml", line("learning_rate"), "expected")
def config_negative_learning_rate(ctx):
    return train(ctx, {"learning_rate": "-0.001"})


@case("config", "cfg.yaml", "blocksize", "power of two")
def config_blocksize_not_power_of_two(ctx):
    return train(ctx, extra="quantization:\n  blocksize: 100\n")


@case("config", "cfg.yaml", line("lr_scheduler"), "expected one of")
def config_bad_scheduler(ctx):
    return train(ctx, {"lr_scheduler": "cosinus"})


@case("config", "cfg.yaml", line("optimizer"), "expected one of")
def config_bad_optimizer(ctx):
    return train(ctx, {"optimizer": "sgd"})


@case("config", "cfg.yaml", line("device"), "expected")
def config_bad_device(ctx):
    return train(ctx, {"device": "tpu"})


@case("config", "cfg.yaml", line("micro_batch_size"), "positive")
def config_zero_micro_batch(ctx):
    return train(ctx, {"micro_batch_size": "0"})


@case("config", "cfg.yaml", line("val_set_size"), "expected")
def config_val_set_size_out_of_range(ctx):
    return train(ctx, {"val_set_size": "1.5"})


@case("config", "cfg.yaml", line("optimizer_device_budget"), "expected")
def config_bad_device_budget(ctx):
    return train(ctx, {"optimizer_device_budget": "lots"})


@case("config", "cfg.yaml", line("ddp_backend"), "expected")
def config_bad_ddp_backend(ctx):
    return train(ctx, {"ddp_backend": "mpi"})


@case("config", "cfg.yaml", line("ddp_timeout"), "positive")
def config_zero_ddp_timeout(ctx):
    return train(ctx, {"ddp_timeout": "0"})


@case("config", "cfg.yaml", line("report_to"), "expected tensorboard, all or none")
def config_report_to_unknown_integration(ctx):
    return train(ctx, {"report_to": "wandb"})


@case("config", "cfg.yaml", "report_to.1", "expected tensorboard, all or none")
def config_report_to_unknown_in_list(ctx):
    return train(ctx, {"report_to": "[tensorboard, mlflow]"})


@case("config", "cfg.yaml", line("logging_dir"), "not a directory")
def config_logging_dir_under_a_file(ctx):
    f = ctx.write("not-a-dir", "a file\n")
    return train(ctx, {"report_to": "tensorboard", "logging_dir": os.path.join(f, "tb")})


# The launcher's options (qlora train CONFIG --nproc-per-node N ...), refused before any worker
# starts.
@case("launch", "--nproc-per-node", None, "at least 1")
def launch_zero_processes(ctx):
    return train(ctx, args=["--nproc-per-node", "0"])


@case("launch", "--node-rank", None, "expected 0 to 1")
def launch_node_rank_out_of_range(ctx):
    return train(ctx, args=["--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1",
                            "--master-port", "29999"])


@case("launch", "--nnodes", None, "--master-addr and --master-port")
def launch_nodes_without_master(ctx):
    return train(ctx, args=["--nnodes", "2", "--node-rank", "1"])


@case("config", "cfg.yaml", "num_epochs", "max_steps")
def config_epochs_and_max_steps(ctx):
    return train(ctx, {"num_epochs": "1"})


@case("config", "cfg.yaml", "max_steps", "num_epochs")
def config_neither_epochs_nor_steps(ctx):
    return train(ctx, {"max_steps": None})


@case("config", "cfg.yaml", "warmup_ratio", "warmup_steps")
def config_warmup_steps_and_ratio(ctx):
    return train(ctx, {"warmup_ratio": "0.1"})


@case("config", "cfg.yaml", "load_in_4bit", "adapter")
def config_lora_with_load_in_4bit(ctx):
    return train(ctx, {"adapter": "lora", "load_in_4bit": "true"})


@case("config", "cfg.yaml", "base_model", "required")
def config_missing_base_model(ctx):
    return train(ctx, {"base_model": None})


@case("config", "nonexistent-model", "base_model", None)
def config_base_model_missing(ctx):
    return train(ctx, {"base_model": ctx.path("nonexistent-model")})


@case("config", "no-such-data.jsonl", None, "no such file")
def config_dataset_path_missing(ctx):
    return train(ctx, {"datasets": "\n  - path: no-such-data.jsonl\n    type: alpaca"})


@case("config", "cfg.yaml", "datasets.0.type", "expected one of")
def config_dataset_bad_type(ctx):
    return train(ctx, {"datasets": "\n  - path: %s\n    type: sharegpt" % ctx.fx.train})


@case("config", "cfg.yaml", "datasets.0.path", "required")
def config_dataset_without_path(ctx):
    return train(ctx, {"datasets": "\n  - type: alpaca"})


@case("config", "no-tokenizer", "tokenizer", None)
def config_tokenizer_missing(ctx):
    return train(ctx, {"tokenizer": ctx.path("no-tokenizer")})


@case("config", "cfg.yaml", "output_dir", "directory")
def config_output_dir_is_file(ctx):
    f = ctx.write("not-a-dir", "a file\n")
    return ["train", ctx.write("cfg.yaml", ctx.fx.config_text(f))]


@case("config", "cfg.yaml", "lora_target_modules", "no_such_proj")
def config_target_modules_match_nothing(ctx):
    return train(ctx, {"lora_target_linear": None, "lora_target_modules": "[no_such_proj]"})


@case("config", "cfg.yaml", line("lora_modules_to_save"), "embed_tokens")
def config_modules_to_save_not_embedding_or_head(ctx):
    return train(ctx, {"lora_modules_to_save": "[norm]"})


@case("config", "cfg.yaml", line("chat_template"), "template")
def config_chat_template_does_not_parse(ctx):
    return train(ctx, {"chat_template": "'{% for m in messages %}{{ m.content }'"})


@case("config", "cfg.yaml", line("sequence_len"), "at least")
def config_sequence_len_below_minimum(ctx):
    return train(ctx, {"sequence_len": "1"})


@case("config", "cfg.yaml", line("lora_r"), "lora_r")
def config_lora_r_above_layer_dims(ctx):
    return train(ctx, {"lora_r": "100000"})


@case("config", "cfg.yaml", line("chat_template"), "chat_template")
def config_chat_template_unknown_name(ctx):
    return train(ctx, {"chat_template": "no_such_template",
                       "datasets": "\n  - path: %s\n    type: chat" % ctx.fx.chat})


# --set
@case("set", "--set", None, "key=value")
def set_without_equals(ctx):
    return train(ctx, args=["--set", "lora_r"])


@case("set", "--set", "lora_rr", "did you mean")
def set_unknown_key(ctx):
    return train(ctx, args=["--set", "lora_rr=4"])


@case("set", "--set", "lora_r", "integer")
def set_bad_value(ctx):
    return train(ctx, args=["--set", "lora_r=abc"])


@case("set", "--set", "datasets.5", "out of range")
def set_list_index_out_of_range(ctx):
    return train(ctx, args=["--set", "datasets.5.path=x.jsonl"])


@case("set", "--set", "datasets.x", "list index")
def set_list_index_not_a_number(ctx):
    return train(ctx, args=["--set", "datasets.x.path=x.jsonl"])


@case("set", "--set", "lora_r", "sub-keys")
def set_subkey_of_scalar(ctx):
    return train(ctx, args=["--set", "lora_r.x=1"])


@case("set", "--set", "lora_r", "YAML")
def set_value_not_yaml(ctx):
    return train(ctx, args=["--set", "lora_r=[1"])


# --resume
@case("resume", "fresh", None, "checkpoint")
def resume_without_checkpoints(ctx):
    os.makedirs(ctx.path("fresh"))
    return ["train", ctx.write("cfg.yaml", ctx.fx.config_text(ctx.path("fresh"))), "--resume"]


@case("resume", "not-a-checkpoint", None, "checkpoint")
def resume_path_not_a_checkpoint(ctx):
    ctx.write("not-a-checkpoint/readme.txt", "hello\n")
    return ["train", ctx.config(checkpoints=True), "--resume", ctx.path("not-a-checkpoint")]


@case("resume", "does-not-exist", None, "checkpoint")
def resume_path_missing(ctx):
    return ["train", ctx.config(checkpoints=True), "--resume", ctx.path("does-not-exist")]


@case("resume", "checkpoint-000004", "lora_r", "--allow-config-change")
def resume_other_runs_checkpoint(ctx):
    run = ctx.run_dir()
    os.makedirs(ctx.path("other"))
    cfg = ctx.write("cfg.yaml", ctx.fx.config_text(ctx.path("other"), {"lora_r": "8"}))
    return ["train", cfg, "--resume", os.path.join(run, "checkpoints", "checkpoint-000004")]


@case("resume", "run", None, "--resume")
def resume_missing_fresh_start_into_run(ctx):
    return ["train", ctx.config(checkpoints=True)]


# ---------------------------------------------------------------------------------------------
# datasets: each breaks a copy of the training data; the config trains into a copy of the good run


def data_case(ctx, text, name="train.jsonl", type_="alpaca", over=None):
    p = ctx.write(name, text)
    o = {"datasets": "\n  - path: %s\n    type: %s" % (p, type_)}
    o.update(over or {})
    return train(ctx, o)


def good_lines(ctx, n=6):
    with open(ctx.fx.train) as fh:
        return fh.read().splitlines()[:n]


@case("data", "train.jsonl", "train.jsonl:3", "JSON")
def data_broken_json_line(ctx):
    ls = good_lines(ctx)
    ls[2] = ls[2][:-5]
    return data_case(ctx, "\n".join(ls) + "\n")


@case("data", "train.jsonl", "train.jsonl:2", "output")
def data_missing_field(ctx):
    ls = good_lines(ctx)
    r = json.loads(ls[1])
    del r["output"]
    ls[1] = json.dumps(r)
    return data_case(ctx, "\n".join(ls) + "\n")


@case("data", "train.jsonl", "train.jsonl:4", "expected a string")
def data_wrong_field_type(ctx):
    ls = good_lines(ctx)
    r = json.loads(ls[3])
    r["instruction"] = 5
    ls[3] = json.dumps(r)
    return data_case(ctx, "\n".join(ls) + "\n")


@case("data", "train.jsonl", "train.jsonl:5", "JSON object")
def data_line_not_an_object(ctx):
    ls = good_lines(ctx)
    ls[4] = "[1, 2, 3]"
    return data_case(ctx, "\n".join(ls) + "\n")


@case("data", "train.jsonl", None, "empty")
def data_empty_file(ctx):
    return data_case(ctx, "")


@case("data", "train.jsonl", None, "empty")
def data_blank_lines_only(ctx):
    return data_case(ctx, "\n  \n\t\n")


@case("data", "train.jsonl", None, "directory")
def data_path_is_directory(ctx):
    os.makedirs(ctx.path("train.jsonl"))
    return train(ctx, {"datasets": "\n  - path: %s\n    type: alpaca" % ctx.path("train.jsonl")})


def good_parquet(ctx, name="train.parquet", **columns):
    """The good records as a Parquet file written by pyarrow (several row groups), extra columns added."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pa.Table.from_pylist([json.loads(l) for l in good_lines(ctx)])
    for k, v in columns.items():
        t = t.append_column(k, v)
    path = ctx.path(name)
    pq.write_table(t, path, row_group_size=2)
    return path


def dataset_at(ctx, path, extra=""):
    return train(ctx, {"datasets": "\n  - path: %s\n    type: alpaca%s" % (path, extra)})


@case("data", "train.parquet", None, "not a readable Parquet file")
def data_parquet_not_parquet(ctx):
    return dataset_at(ctx, ctx.write("train.parquet", "\n".join(good_lines(ctx)) + "\n"))


@case("data", "train.parquet", None, "Parquet")
def data_parquet_truncated(ctx):
    path = good_parquet(ctx)
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(raw[: len(raw) // 2])
    return dataset_at(ctx, path)


@case("data", "train.parquet", "img", "cannot hold")
def data_parquet_unsupported_column(ctx):
    import pyarrow as pa
    n = len(good_lines(ctx))
    return dataset_at(ctx, good_parquet(ctx, img=pa.array([b"\x89PNG"] * n, pa.binary())))


@case("data", "shards", "split", "no files for split")
def data_directory_wrong_split(ctx):
    os.makedirs(ctx.path("shards"))
    good_parquet(ctx, "shards/train-00000-of-00001.parquet")
    return dataset_at(ctx, ctx.path("shards"), "\n    split: test")


@case("data", "shards", None, "no data files")
def data_directory_empty(ctx):
    os.makedirs(ctx.path("shards"))
    ctx.write("shards/README.md", "# nothing here\n")
    return dataset_at(ctx, ctx.path("shards"))


@case("data", "train.jsonl.gz", None, "gzip")
def data_gzip_not_gzip(ctx):
    return dataset_at(ctx, ctx.write("train.jsonl.gz", "\n".join(good_lines(ctx)) + "\n"))


@case("data", "train.jsonl.gz", None, "truncated gzip")
def data_gzip_truncated(ctx):
    import gzip
    raw = gzip.compress(("\n".join(good_lines(ctx)) + "\n").encode())
    path = ctx.path("train.jsonl.gz")
    with open(path, "wb") as fh:
        fh.write(raw[:-12])
    return dataset_at(ctx, path)


@case("data", "train.csv", None, "malformed CSV")
def data_csv_ragged_row(ctx):
    return dataset_at(ctx, ctx.write("train.csv", "instruction,input,output\na,,b\nc,d,e,f\n"))


@case("data", "train.jsonl", "train.jsonl:4", "UTF-8")
def data_invalid_utf8(ctx):
    ls = [l.encode() for l in good_lines(ctx)]
    ls[3] = ls[3].replace(b"Reverse", b"Rev\xff\xfeerse")
    return data_case(ctx, b"\n".join(ls) + b"\n")


@case("data", "train.jsonl", "train.jsonl:2", "UTF-8")
def data_truncated_utf8_sequence(ctx):
    ls = [l.encode() for l in good_lines(ctx)]
    ls[1] = ls[1].replace(b"word", b"wor\xe2\x82")
    return data_case(ctx, b"\n".join(ls) + b"\n")


@case("data", "train.jsonl", "train.jsonl:3", "bytes")
def data_huge_line(ctx):
    ls = good_lines(ctx)
    r = json.loads(ls[2])
    r["input"] = "a" * (65 << 20)
    ls[2] = json.dumps(r)
    return data_case(ctx, "\n".join(ls) + "\n")


@case("data", "train.jsonl", "sequence_len", "no trainable tokens")
def data_all_truncated_away(ctx):
    return data_case(ctx, "\n".join(good_lines(ctx)) + "\n", over={"sequence_len": "4"})


@case("data", "train.json", "train.json:5", "JSON")
def data_json_array_broken(ctx):
    recs = [json.loads(l) for l in good_lines(ctx, 3)]
    text = "[\n" + ",\n".join(json.dumps(r) for r in recs) + ",\n"
    return data_case(ctx, text, name="train.json")


@case("data", "train.json", "train.json:3", "JSON object")
def data_json_array_non_object(ctx):
    recs = [json.dumps(json.loads(l)) for l in good_lines(ctx, 3)]
    recs[1] = "42"
    return data_case(ctx, "[\n" + ",\n".join(recs) + "\n]\n", name="train.json")


@case("data", "chat.jsonl", "chat.jsonl:1", "messages")
def data_chat_missing_messages(ctx):
    return data_case(ctx, "\n".join(good_lines(ctx)) + "\n", name="chat.jsonl", type_="chat",
                     over={"chat_template": "chatml"})


@case("data", "chat.jsonl", "chat.jsonl:2", "role")
def data_chat_role_wrong_type(ctx):
    ls = open(ctx.fx.chat).read().splitlines()
    r = json.loads(ls[1])
    r["messages"][0]["role"] = 7
    ls[1] = json.dumps(r)
    return data_case(ctx, "\n".join(ls) + "\n", name="chat.jsonl", type_="chat", over={"chat_template": "chatml"})


@case("data", "chat.jsonl", "chat.jsonl:3", "role")
def data_chat_role_rejected_by_template(ctx):
    ls = open(ctx.fx.chat).read().splitlines()
    r = json.loads(ls[2])
    r["messages"][0]["role"] = "wizard"
    ls[2] = json.dumps(r)
    return data_case(ctx, "\n".join(ls) + "\n", name="chat.jsonl", type_="chat", over={"chat_template": "mistral"})


@case("data", "chat.jsonl", "chat.jsonl:3", "wizard")
def data_chat_role_the_template_drops(ctx):
    ls = open(ctx.fx.chat).read().splitlines()
    r = json.loads(ls[2])
    r["messages"].insert(1, {"role": "wizard", "content": "hmm"})
    ls[2] = json.dumps(r)
    tmpl = ("\"{% for m in messages %}{% if m.role == 'user' %}U: {{ m.content }}\\n{% elif m.role == 'assistant' %}"
            "{% generation %}A: {{ m.content }}{% endgeneration %}\\n{% endif %}{% endfor %}\"")
    return data_case(ctx, "\n".join(ls) + "\n", name="chat.jsonl", type_="chat", over={"chat_template": tmpl})


@case("data", "chat.jsonl", "chat.jsonl:1", "content")
def data_chat_content_wrong_type(ctx):
    ls = open(ctx.fx.chat).read().splitlines()
    r = json.loads(ls[0])
    r["messages"][1]["content"] = {"text": "x"}
    ls[0] = json.dumps(r)
    return data_case(ctx, "\n".join(ls) + "\n", name="chat.jsonl", type_="chat", over={"chat_template": "chatml"})


@case("data", "text.jsonl", "text.jsonl:1", "text")
def data_text_missing_field(ctx):
    return data_case(ctx, '{"body": "hello"}\n', name="text.jsonl", type_="text")


@case("data", "eval.jsonl", "eval.jsonl:2", "JSON")
def data_test_dataset_broken(ctx):
    p = ctx.write("eval.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{"instruction": \n')
    return train(ctx, extra="test_datasets:\n  - path: %s\n    type: alpaca\n" % p)


# ---------------------------------------------------------------------------------------------
# model directories: a broken copy of the fixture model at ./model


@case("model", "config.json", None, "config.json")
def model_missing_config_json(ctx):
    os.remove(os.path.join(model(ctx), "config.json"))
    return train_model(ctx)


@case("model", "model", None, "model.safetensors")
def model_missing_weights(ctx):
    os.remove(os.path.join(model(ctx), "model.safetensors"))
    return train_model(ctx)


@case("model", "pytorch_model.bin", None, "convert to safetensors")
def model_pickle_only(ctx):
    import torch
    from safetensors.torch import load_file
    m = model(ctx)
    sd = load_file(os.path.join(m, "model.safetensors"))
    torch.save(sd, os.path.join(m, "pytorch_model.bin"))
    os.remove(os.path.join(m, "model.safetensors"))
    return train_model(ctx)


@case("model", "model.safetensors", None, "run past")
def model_truncated_safetensors(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as fh:
        fh.truncate(size // 2)
    return train_model(ctx)


@case("model", "model.safetensors", None, "header")
def model_header_length_past_eof(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    with open(p, "r+b") as fh:
        fh.write(struct.pack("<Q", 1 << 40))
    return train_model(ctx)


@case("model", "model.safetensors", None, "JSON")
def model_header_not_json(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    with open(p, "r+b") as fh:
        fh.seek(8)
        fh.write(b"{\"x\": [")
    return train_model(ctx)


@case("model", "model.safetensors", lambda ctx: ctx.vars["tensor"], "run past")
def model_offsets_past_eof(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    h, data = st_read(p)
    last = ctx.vars["tensor"] = tensors_by_offset(h)[-1]
    h[last]["data_offsets"][1] += 4096
    st_write(p, h, data)
    return train_model(ctx)


@case("model", "model.safetensors", None, "hole")
def model_offsets_with_hole(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    h, data = st_read(p)
    names = tensors_by_offset(h)
    # Shift every tensor after the first by 64 bytes and grow the file: 64 unused bytes.
    for n in names[1:]:
        h[n]["data_offsets"] = [o + 64 for o in h[n]["data_offsets"]]
    first_end = h[names[0]]["data_offsets"][1]
    data = data[:first_end] + b"\0" * 64 + data[first_end:]
    st_write(p, h, data)
    return train_model(ctx)


@case("model", "model.safetensors", None, "overlap")
def model_offsets_overlap(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    h, data = st_read(p)
    names = tensors_by_offset(h)
    # Two tensors of the same size share one range; the freed range is cut from the end.
    a, b = [n for n in names if n.endswith("input_layernorm.weight")][:2]
    size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    start_b = h[b]["data_offsets"][0]
    h[b]["data_offsets"] = list(h[a]["data_offsets"])
    for n in names:
        if n != b and h[n]["data_offsets"][0] > start_b:
            h[n]["data_offsets"] = [o - size for o in h[n]["data_offsets"]]
    data = data[:start_b] + data[start_b + size:]
    st_write(p, h, data)
    return train_model(ctx)


@case("model", "model.safetensors", Q0, "shape")
def model_shape_disagrees_with_offsets(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    h, data = st_read(p)
    h[Q0]["shape"] = [h[Q0]["shape"][0], h[Q0]["shape"][1] * 2]
    st_write(p, h, data)
    return train_model(ctx)


@case("model", "model.safetensors", Q0, "overflow")
def model_shape_overflows(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    h, data = st_read(p)
    h[Q0]["shape"] = [1 << 40, 1 << 40, 1 << 20]
    st_write(p, h, data)
    return train_model(ctx)


@case("model", "model.safetensors", Q0, "dtype")
def model_unknown_dtype(ctx):
    p = os.path.join(model(ctx), "model.safetensors")
    h, data = st_read(p)
    h[Q0]["dtype"] = "F7"
    st_write(p, h, data)
    return train_model(ctx)


@case("model", "model.safetensors", Q0, "F32, BF16 or F16")
def model_integer_weight(ctx):
    model(ctx)
    save_model_tensors(ctx, lambda sd, torch: sd.__setitem__(Q0, sd[Q0].to(torch.int32)))
    return train_model(ctx)


@case("model", "model.safetensors", Q0, "shape")
def model_shape_disagrees_with_config(ctx):
    model(ctx)
    save_model_tensors(ctx, lambda sd, torch: sd.__setitem__(Q0, sd[Q0][:, :32].contiguous()))
    return train_model(ctx)


@case("model", "model", "lm_head.weight", "missing")
def model_missing_tensor(ctx):
    model(ctx)
    save_model_tensors(ctx, lambda sd, torch: sd.pop("lm_head.weight"))
    return train_model(ctx)


@case("model", "model.safetensors", "model.embed_tokens.weight", "expected shape")
def model_config_hidden_size_disagrees(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(hidden_size=128, head_dim=32))
    return train_model(ctx)


@case("model", "config.json", "model_type", "supported")
def model_unsupported_model_type(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    return train_model(ctx)


@case("model", "config.json", "architectures", "supported")
def model_unsupported_architecture(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(architectures=["LlamaForSequenceClassification"]))
    return train_model(ctx)


@case("model", "config.json", None, "JSON")
def model_config_not_json(ctx):
    with open(os.path.join(model(ctx), "config.json"), "a") as fh:
        fh.write("}{")
    return train_model(ctx)


@case("model", "config.json", "hidden_size", "integer")
def model_config_wrong_type(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(hidden_size="64"))
    return train_model(ctx)


@case("model", "config.json", "num_key_value_heads", "divide")
def model_config_kv_heads_do_not_divide(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(num_key_value_heads=3))
    return train_model(ctx)


@case("model", "config.json", "hidden_act", "silu")
def model_config_unsupported_activation(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(hidden_act="gelu"))
    return train_model(ctx)


@case("model", "config.json", "vocab_size", "positive integer")
def model_config_negative_vocab_size(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(vocab_size=-5))
    return train_model(ctx)


@case("model", "config.json", "num_local_experts", "missing")
def model_moe_without_expert_count(ctx):
    edit_json(os.path.join(model(ctx), "config.json"),
              lambda j: j.update(model_type="mixtral", architectures=["MixtralForCausalLM"], num_experts_per_tok=2))
    return train_model(ctx)


@case("model", "config.json", "mlp_only_layers", "every layer")
def model_moe_with_dense_layers(ctx):
    edit_json(os.path.join(model(ctx), "config.json"),
              lambda j: j.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_experts=4,
                                 num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[0]))
    return train_model(ctx)


@case("model", "config.json", "short_factor", "numbers")
def model_longrope_factor_count(ctx):
    edit_json(os.path.join(model(ctx), "config.json"),
              lambda j: (j.pop("rope_parameters", None),
                         j.update(model_type="phi3", architectures=["Phi3ForCausalLM"],
                                  rope_scaling={"type": "longrope", "short_factor": ["x"], "long_factor": [1.0]})))
    return train_model(ctx)


@case("model", "config.json", "partial_rotary_factor", "even")
def model_partial_rotary_odd(ctx):
    edit_json(os.path.join(model(ctx), "config.json"), lambda j: j.update(partial_rotary_factor=1.5))
    return train_model(ctx)


@case("model", "model.safetensors", Q0, "NaN")
def model_nan_weights(ctx):
    model(ctx)

    def nan(sd, torch):
        sd[Q0][3, 5] = float("nan")
    save_model_tensors(ctx, nan)
    return train_model(ctx)


@case("model", "model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing")
def model_index_names_missing_shard(ctx):
    m = model(ctx, ctx.fx.sharded)
    os.remove(os.path.join(m, "model-00002-of-00002.safetensors"))
    return train_model(ctx)


@case("model", "model.safetensors.index.json", None, "JSON")
def model_index_not_json(ctx):
    m = model(ctx, ctx.fx.sharded)
    with open(os.path.join(m, "model.safetensors.index.json"), "w") as fh:
        fh.write('{"weight_map": {')
    return train_model(ctx)


@case("model", "model.safetensors.index.json", "lm_head.weight", "does not hold")
def model_index_names_wrong_shard(ctx):
    m = model(ctx, ctx.fx.sharded)
    p = os.path.join(m, "model.safetensors.index.json")

    def swap(j):
        wm = j["weight_map"]
        wm["lm_head.weight"] = ("model-00001-of-00002.safetensors"
                                if wm["lm_head.weight"] == "model-00002-of-00002.safetensors"
                                else "model-00002-of-00002.safetensors")
    edit_json(p, swap)
    return train_model(ctx)


@case("model", "model.safetensors.index.json", "weight_map", "shard")
def model_index_shard_outside_directory(ctx):
    m = model(ctx, ctx.fx.sharded)
    edit_json(os.path.join(m, "model.safetensors.index.json"),
              lambda j: j["weight_map"].update({"lm_head.weight": "../elsewhere.safetensors"}))
    return train_model(ctx)


# ---------------------------------------------------------------------------------------------
# tokenizer files (in the copy of the model directory)


@case("tokenizer", "tokenizer.json", None, "JSON")
def tokenizer_json_broken(ctx):
    p = os.path.join(model(ctx), "tokenizer.json")
    with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) // 2)
    return train_model(ctx)


@case("tokenizer", "tokenizer.json", "model.type", "BPE")
def tokenizer_unknown_model_type(ctx):
    edit_json(os.path.join(model(ctx), "tokenizer.json"), lambda j: j["model"].update(type="Hieroglyph"))
    return train_model(ctx)


@case("tokenizer", "tokenizer.json", "merges", "expected")
def tokenizer_bad_merges(ctx):
    edit_json(os.path.join(model(ctx), "tokenizer.json"), lambda j: j["model"].update(merges=42))
    return train_model(ctx)


@case("tokenizer", "model", None, "tokenizer.json")
def tokenizer_files_missing(ctx):
    os.remove(os.path.join(model(ctx), "tokenizer.json"))
    return train_model(ctx)


@case("tokenizer", "tokenizer_config.json", None, "JSON")
def tokenizer_config_not_json(ctx):
    with open(os.path.join(model(ctx), "tokenizer_config.json"), "w") as fh:
        fh.write("{'single': 'quotes'}")
    return train_model(ctx)


@case("tokenizer", "tokenizer_config.json", "chat_template", "template")
def tokenizer_config_bad_chat_template(ctx):
    edit_json(os.path.join(model(ctx), "tokenizer_config.json"),
              lambda j: j.update(chat_template="{% for m in messages %}{{ m.content }"))
    return train_model(ctx, {"datasets": "\n  - path: %s\n    type: chat" % ctx.fx.chat})


@case("tokenizer", "tokenizer_config.json", "eos_token", "expected")
def tokenizer_config_eos_wrong_type(ctx):
    edit_json(os.path.join(model(ctx), "tokenizer_config.json"), lambda j: j.update(eos_token=12))
    return train_model(ctx)


# ---------------------------------------------------------------------------------------------
# checkpoints: a copy of the good run whose newest checkpoint is malformed inside while its
# manifest still matches (the manifest is rewritten), resumed from that checkpoint by path


def sha256(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def ckpt_case(ctx, mutate, fix_manifest=True):
    run = ctx.run_dir()
    cp = os.path.join(run, "checkpoints", "checkpoint-000004")
    mutate(cp)
    if fix_manifest:
        mp = os.path.join(cp, "manifest.json")
        with open(mp) as fh:
            m = json.load(fh)
        for name, e in m["files"].items():
            f = os.path.join(cp, name)
            e["sha256"], e["bytes"] = sha256(f), os.path.getsize(f)
        with open(mp, "w") as fh:
            json.dump(m, fh, indent=2)
    return ["train", ctx.config(checkpoints=True), "--resume", cp]


@case("checkpoint", "trainer_state.json", None, "JSON")
def checkpoint_trainer_state_not_json(ctx):
    def m(cp):
        with open(os.path.join(cp, "trainer_state.json"), "a") as fh:
            fh.write("}}")
    return ckpt_case(ctx, m)


@case("checkpoint", "rng_state.safetensors", None, "size")
def checkpoint_rng_state_wrong_size(ctx):
    def m(cp):
        import torch
        from safetensors.torch import load_file, save_file
        p = os.path.join(cp, "rng_state.safetensors")
        sd = load_file(p)
        k = sorted(sd)[0]
        sd[k] = torch.cat([sd[k].flatten(), sd[k].flatten()[:3]])
        save_file(sd, p)
    return ckpt_case(ctx, m)


@case("checkpoint", "optimizer.safetensors", None, "optimizer")
def checkpoint_optimizer_tensor_renamed(ctx):
    def m(cp):
        from safetensors.torch import load_file, save_file
        p = os.path.join(cp, "optimizer.safetensors")
        sd = load_file(p)
        k = sorted(sd)[0]
        sd["renamed." + k] = sd.pop(k)
        save_file(sd, p)
    return ckpt_case(ctx, m)


@case("checkpoint", "optimizer.safetensors", None, "shape")
def checkpoint_optimizer_tensor_wrong_shape(ctx):
    def m(cp):
        from safetensors.torch import load_file, save_file
        p = os.path.join(cp, "optimizer.safetensors")
        sd = load_file(p)
        k = sorted(sd)[0]
        sd[k] = sd[k].flatten()[: max(1, sd[k].numel() // 2)].clone()
        save_file(sd, p)
    return ckpt_case(ctx, m)


@case("checkpoint", "optimizer.safetensors", None, "dtype")
def checkpoint_optimizer_tensor_wrong_dtype(ctx):
    def m(cp):
        import torch
        from safetensors.torch import load_file, save_file
        p = os.path.join(cp, "optimizer.safetensors")
        sd = load_file(p)
        k = sorted(k for k in sd if sd[k].is_floating_point())[0]
        sd[k] = sd[k].to(torch.float64)
        save_file(sd, p)
    return ckpt_case(ctx, m)


@case("checkpoint", "trainer_state.json", None, "step")
def checkpoint_step_disagrees_with_data_position(ctx):
    def m(cp):
        p = os.path.join(cp, "trainer_state.json")

        def bump(j):
            for k in ("global_step", "step"):
                if k in j:
                    j[k] = j[k] + 1
        edit_json(p, bump)
    return ckpt_case(ctx, m)


@case("checkpoint", "checkpoint-000004", None, "checksum mismatch")
def checkpoint_manifest_mismatch(ctx):
    def m(cp):
        p = os.path.join(cp, "adapter_model.safetensors")
        with open(p, "r+b") as fh:
            fh.seek(os.path.getsize(p) - 1)
            b = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([b[0] ^ 0x5A]))
    return ckpt_case(ctx, m, fix_manifest=False)


@case("checkpoint", "checkpoint-000004", None, "manifest")
def checkpoint_manifest_missing(ctx):
    return ckpt_case(ctx, lambda cp: os.remove(os.path.join(cp, "manifest.json")), fix_manifest=False)


@case("checkpoint", "checkpoint-000004", None, "missing file")
def checkpoint_file_missing(ctx):
    return ckpt_case(ctx, lambda cp: os.remove(os.path.join(cp, "optimizer.json")), fix_manifest=False)


@case("checkpoint", "adapter_config.json", "r", "expected")
def checkpoint_adapter_config_wrong_type(ctx):
    return ckpt_case(ctx, lambda cp: edit_json(os.path.join(cp, "adapter_config.json"), lambda j: j.update(r="four")))


# ---------------------------------------------------------------------------------------------
# export / generate / eval / inspect / quantize arguments


def export(ctx, *args):
    return ["export", ctx.run_dir()] + list(args)


@case("export", "--format", "--format", "peft")
def export_bad_format(ctx):
    return export(ctx, "--format", "onnx", "--out", ctx.path("out"))


@case("export", "out-file", None, "not a directory")
def export_out_is_a_file(ctx):
    return export(ctx, "--format", "peft", "--out", ctx.write("out-file", "x\n"))


@case("export", "out", None, "--force")
def export_out_not_empty(ctx):
    ctx.copy(ctx.fx.peft, "out")
    return export(ctx, "--format", "peft", "--out", ctx.path("out"))


@case("export", "no-such-run", None, "checkpoint")
def export_missing_checkpoint(ctx):
    return ["export", ctx.path("no-such-run"), "--format", "peft", "--out", ctx.path("out")]


@case("export", "--dtype", "--dtype", "bf16")
def export_bad_dtype(ctx):
    return export(ctx, "--format", "merged", "--dtype", "fp8", "--out", ctx.path("out"))


@case("export", "--max-shard-size", "--max-shard-size", "expected")
def export_bad_max_shard_size(ctx):
    return export(ctx, "--format", "merged", "--max-shard-size", "huge", "--out", ctx.path("out"))


@case("export", "--merge-into", "--merge-into", "original")
def export_bad_merge_into(ctx):
    return export(ctx, "--format", "merged", "--merge-into", "whatever", "--out", ctx.path("out"))


@case("export", "no-model", "base", "model directory")
def export_base_model_missing(ctx):
    return export(ctx, "--format", "merged", "--base-model", ctx.path("no-model"), "--out", ctx.path("out"))


@case("generate", "adapter_config.json", None, "JSON")
def generate_adapter_garbage(ctx):
    ctx.write("garbage/adapter_model.safetensors", b"\x00" * 100)
    ctx.write("garbage/adapter_config.json", "not json")
    return ["generate", "--model", ctx.fx.model, "--adapter", ctx.path("garbage"), "--prompt", "hi"]


def peft_dir_with(ctx, edit):
    """A plain PEFT directory: the good run's newest adapter, its adapter_config.json edited."""
    src = os.path.join(ctx.run_dir(), "checkpoints", "checkpoint-000004")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        ctx.copy(os.path.join(src, f), os.path.join("peft", f))
    edit_json(ctx.path("peft", "adapter_config.json"), edit)
    return ctx.path("peft")


@case("generate", "adapter_model.safetensors", "base_model.model.lm_head.weight", "missing")
def generate_modules_to_save_weight_missing(ctx):
    d = peft_dir_with(ctx, lambda j: j.update(modules_to_save=["lm_head"]))
    return ["generate", "--model", ctx.fx.model, "--adapter", d, "--prompt", "hi"]


@case("generate", "adapter_config.json", "modules_to_save", "list of module names")
def generate_modules_to_save_not_a_list(ctx):
    d = peft_dir_with(ctx, lambda j: j.update(modules_to_save=7))
    return ["generate", "--model", ctx.fx.model, "--adapter", d, "--prompt", "hi"]


@case("export", "adapter_config.json", "modules_to_save", "GGUF adapter")
def export_gguf_adapter_with_modules_to_save(ctx):
    d = peft_dir_with(ctx, lambda j: j.update(modules_to_save=["lm_head"]))
    return ["export", d, "--format", "gguf-adapter", "--base-model", ctx.fx.model, "--out", ctx.path("out")]


@case("generate", "--device", "--device", "cpu")
def generate_bad_device(ctx):
    return ["generate", "--model", ctx.fx.model, "--prompt", "hi", "--device", "tpu"]


@case("generate", "--temperature", "--temperature", "expected")
def generate_negative_temperature(ctx):
    return ["generate", "--model", ctx.fx.model, "--prompt", "hi", "--temperature", "-1"]


@case("generate", "--top-p", "--top-p", "expected")
def generate_top_p_above_one(ctx):
    return ["generate", "--model", ctx.fx.model, "--prompt", "hi", "--top-p", "1.5"]


@case("generate", "--max-new-tokens", "--max-new-tokens", "expected")
def generate_max_new_tokens_not_a_number(ctx):
    return ["generate", "--model", ctx.fx.model, "--prompt", "hi", "--max-new-tokens", "many"]


@case("generate", "no-model", None, "model directory")
def generate_model_missing(ctx):
    return ["generate", "--model", ctx.path("no-model"), "--prompt", "hi"]


@case("eval", "no-data.jsonl", None, "no such file")
def eval_data_missing(ctx):
    return ["eval", "--model", ctx.fx.model, "--data", ctx.path("no-data.jsonl"), "--type", "alpaca"]


@case("eval", "eval.jsonl", "dataset type", "expected text, alpaca")
def eval_bad_type(ctx):
    return ["eval", "--model", ctx.fx.model, "--data", ctx.fx.eval, "--type", "sharegpt"]


@case("eval", "--sequence-len", "--sequence-len", "expected")
def eval_zero_sequence_len(ctx):
    return ["eval", "--model", ctx.fx.model, "--data", ctx.fx.eval, "--type", "alpaca", "--sequence-len", "0"]


@case("eval", "eval.jsonl", "eval.jsonl:2", "JSON")
def eval_broken_data(ctx):
    p = ctx.write("eval.jsonl", '{"instruction": "a", "input": "b", "output": "c"}\n{oops}\n')
    return ["eval", "--model", ctx.fx.model, "--data", p, "--type", "alpaca"]


@case("quantize", "--blocksize", "--blocksize", "power of two")
def quantize_bad_blocksize(ctx):
    return ["quantize", "--model", ctx.fx.model, "--out", ctx.path("q"), "--blocksize", "100"]


@case("quantize", "q", None, "--force")
def quantize_out_not_empty(ctx):
    ctx.write("q/keep.txt", "keep me\n")
    return ["quantize", "--model", ctx.fx.model, "--out", ctx.path("q")]


@case("quantize", "model", None, "config.json")
def quantize_model_without_config(ctx):
    os.remove(os.path.join(model(ctx), "config.json"))
    return ["quantize", "--model", ctx.path("model"), "--out", ctx.path("q")]


@case("inspect", "no-model", None, "model directory")
def inspect_missing_directory(ctx):
    return ["inspect", ctx.path("no-model")]


@case("inspect", "/model:", "lm_head.weight", "missing")
def inspect_reports_problem(ctx):
    model(ctx)
    save_model_tensors(ctx, lambda sd, torch: sd.pop("lm_head.weight"))
    return ["inspect", ctx.path("model")]


@case("plan", "cfg.yaml", "lora_target_modules", "matches no linear layer")
def plan_config_against_model(ctx):
    return ["plan", ctx.config({"lora_target_linear": None}, "lora_target_modules: [q_proj, q_projj]\n"), "--no-time"]


@case("plan", "--memory", "--memory", "a size like")
def plan_bad_budget(ctx):
    return ["plan", ctx.config(), "--memory", "lots"]


@case("preprocess", "cfg.yaml", "sequence_len", "at least 2")
def preprocess_bad_sequence_len(ctx):
    return ["preprocess", ctx.config({"sequence_len": "1"})]


@case("init", "no-model", None, "model directory")
def init_missing_model(ctx):
    return ["init", ctx.path("no-model"), "--out", ctx.path("out.yaml")]


@case("cli", "--no-such-flag", "--no-such-flag", "option")
def cli_unknown_option(ctx):
    return train(ctx, args=["--no-such-flag"])


@case("cli", "trian", "trian", "subcommand")
def cli_unknown_subcommand(ctx):
    return ["trian", "cfg.yaml"]


# ---------------------------------------------------------------------------------------------
# a GGUF file as base_model (docs/formats.md §6.5)

def gguf_base(ctx, fill=None, cut=None):
    """./base.gguf: a minimal llama GGUF the gguf package writes (`fill(writer)` may add to or
    replace the good keys), optionally cut to `cut` bytes; the config trains on it."""
    import numpy as np
    import gguf
    p = ctx.path("base.gguf")
    w = gguf.GGUFWriter(p, "llama")
    keys = {"block_count": 1, "embedding_length": 64, "feed_forward_length": 128, "head_count": 4}
    if fill:
        fill(w, keys)
    if "block_count" in keys:
        w.add_block_count(keys["block_count"])
    w.add_embedding_length(keys["embedding_length"])
    w.add_feed_forward_length(keys["feed_forward_length"])
    w.add_head_count(keys["head_count"])
    w.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if cut is not None:
        with open(p, "r+b") as fh:
            fh.truncate(cut)
    return train(ctx, {"base_model": p})


@case("gguf", "base.gguf", "kv_count", "truncated")
def gguf_truncated_header(ctx):
    return gguf_base(ctx, cut=20)


@case("gguf", "base.gguf", "metadata key", "runs past the end of the file")
def gguf_truncated_metadata(ctx):
    return gguf_base(ctx, cut=200)


@case("gguf", "base.gguf", "llama.block_count", "missing")
def gguf_missing_key(ctx):
    return gguf_base(ctx, fill=lambda w, k: k.pop("block_count"))


@case("gguf", "base.gguf", "llama.attention.head_count", "positive integer")
def gguf_zero_heads(ctx):
    return gguf_base(ctx, fill=lambda w, k: k.update(head_count=0))
