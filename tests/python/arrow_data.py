"""Writes dataset files in the formats users keep Hugging Face data in, and the rows the real
libraries read from them, for tests/data/test_arrow_data.cpp.

usage: arrow_data.py DIR

Files (made here with pyarrow and datasets): Parquet with several row groups and nested chat
messages, Parquet with every column type a record can hold, an Arrow cache file as
Dataset.save_to_disk writes it (IPC stream format) and an IPC file (ARROW1), CSV and TSV with
quoting, .jsonl.gz and .json.gz, a Hub-style directory of shards (data/train-00000-of-00002.parquet)
and a directory with split names in its file names. DIR/expected.json lists, per case, the path,
the split and the rows: datasets.load_dataset(<builder>, data_files=..., split=...) for files,
datasets.load_dataset(DIR, split=...) for directories, datasets.load_from_disk for a saved
dataset, pyarrow.parquet.read_table for the column-type file (types datasets would convert).
"""
import gzip, json, os, sys

import datasets
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
datasets.disable_progress_bars()
cache = os.path.join(out, "hf_cache")
cases = []


def rows_of(ds):
    return [dict(r) for r in ds]


def add(path, rows, split="train"):
    cases.append({"path": path, "split": split, "rows": rows})


def p(*parts):
    return os.path.join(out, *parts)


# Chat conversations: list<struct<role, content>>, ragged lengths, unicode.
chats = []
for i in range(23):
    msgs = [{"role": "user", "content": f"question {i} é ü 日本 " + "x" * (i % 5)}]
    for t in range(i % 3):
        msgs.append({"role": "assistant", "content": f"answer {i}.{t}"})
        msgs.append({"role": "user", "content": f"follow-up {i}.{t}"})
    msgs.append({"role": "assistant", "content": f"final answer {i}"})
    chats.append({"messages": msgs, "id": i})
with open(p("chat.jsonl"), "w") as f:
    for r in chats:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
pq.write_table(pa.Table.from_pylist(chats), p("chat.parquet"), row_group_size=5)  # 5 row groups
assert pq.ParquetFile(p("chat.parquet")).metadata.num_row_groups == 5
add(p("chat.parquet"), rows_of(datasets.load_dataset("parquet", data_files=p("chat.parquet"), split="train",
                                                     cache_dir=cache)))

# Every column type a record holds.
n = 7
table = pa.table({
    "s": pa.array([f"s{i}" if i != 3 else None for i in range(n)], pa.string()),
    "ls": pa.array([f"large {i}" for i in range(n)], pa.large_string()),
    "i8": pa.array(range(-3, n - 3), pa.int8()),
    "i64": pa.array([2**40 + i for i in range(n)], pa.int64()),
    "u32": pa.array(range(n), pa.uint32()),
    "f32": pa.array([i / 4 for i in range(n)], pa.float32()),
    "f64": pa.array([i / 3 for i in range(n)], pa.float64()),
    "b": pa.array([i % 2 == 0 for i in range(n)], pa.bool_()),
    "nul": pa.array([None] * n, pa.null()),
    "dict": pa.array([["red", "green", "blue"][i % 3] for i in range(n)]).dictionary_encode(),
    "ll": pa.array([[i, i + 1] for i in range(n)], pa.large_list(pa.int32())),
    "st": pa.array([{"a": i, "b": [f"t{i}"]} for i in range(n)]),
    "text": pa.array([f"text number {i}" for i in range(n)]),
})
pq.write_table(table, p("types.parquet"), row_group_size=3)
add(p("types.parquet"), pq.read_table(p("types.parquet")).to_pylist())

# The datasets library's own Arrow files: a saved dataset (IPC stream) and its data file alone.
ds = datasets.Dataset.from_list(chats)
ds.save_to_disk(p("saved"))
arrow_files = sorted(f for f in os.listdir(p("saved")) if f.endswith(".arrow"))
with open(p("saved", arrow_files[0]), "rb") as f:
    assert f.read(6) != b"ARROW1"  # the stream format
add(p("saved"), rows_of(datasets.load_from_disk(p("saved"))))
add(p("saved", arrow_files[0]), rows_of(datasets.load_dataset("arrow", data_files=p("saved", arrow_files[0]),
                                                              split="train", cache_dir=cache)))
datasets.DatasetDict({"train": ds.select(range(5)), "test": ds.select(range(5, 8))}).save_to_disk(p("saved_dict"))
add(p("saved_dict"), rows_of(datasets.load_from_disk(p("saved_dict"))["test"]), "test")
# The IPC file format, in two record batches.
t = pa.Table.from_pylist(chats)
with ipc.new_file(p("file.arrow"), t.schema) as w:
    for b in t.to_batches(max_chunksize=10):
        w.write_batch(b)
add(p("file.arrow"), t.to_pylist())

# CSV and TSV: a header, quoting (commas, quotes, newlines inside), numbers, empty values.
csv_rows = [["instruction", "input", "output"],
            ["Say hi", "", "hi"],
            ["Add, please", "1 + 2", "3"],
            ['Quote "this"', "x", "done"],
            ["Two\nlines", "y", "ok"],
            ["42", "3.5", "7"]]


def csv_line(row, sep):
    out = []
    for v in row:
        if any(c in v for c in (sep, '"', "\n")):
            v = '"' + v.replace('"', '""') + '"'
        out.append(v)
    return sep.join(out)


strings = datasets.Features({c: datasets.Value("string") for c in csv_rows[0]})
for ext, sep, extra in (("csv", ",", {}), ("tsv", "\t", {"sep": "\t"})):
    with open(p("data." + ext), "w") as f:
        f.write("\n".join(csv_line(r, sep) for r in csv_rows) + "\n")
    add(p("data." + ext), rows_of(datasets.load_dataset("csv", data_files=p("data." + ext), split="train",
                                                        features=strings, cache_dir=cache, **extra)))

# gzip-compressed JSON Lines and JSON array.
with gzip.open(p("chat.jsonl.gz"), "wt") as f:
    for r in chats[:9]:
        f.write(json.dumps(r) + "\n")
add(p("chat.jsonl.gz"), rows_of(datasets.load_dataset("json", data_files=p("chat.jsonl.gz"), split="train",
                                                      cache_dir=cache)))
with gzip.open(p("alpaca.json.gz"), "wt") as f:
    json.dump([{"instruction": f"i{k}", "input": "", "output": f"o{k}"} for k in range(4)], f, indent=1)
add(p("alpaca.json.gz"), rows_of(datasets.load_dataset("json", data_files=p("alpaca.json.gz"), split="train",
                                                       cache_dir=cache)))

# A Hub-style directory: data/<split>-NNNNN-of-NNNNN.parquet shards and a README.
hub = p("hub")
os.makedirs(os.path.join(hub, "data"), exist_ok=True)
with open(os.path.join(hub, "README.md"), "w") as f:
    f.write("---\nlicense: mit\n---\n")
for k, (lo, hi) in enumerate(((0, 10), (10, 18))):
    pq.write_table(pa.Table.from_pylist(chats[lo:hi]), os.path.join(hub, "data", f"train-{k:05d}-of-00002.parquet"),
                   row_group_size=4)
pq.write_table(pa.Table.from_pylist(chats[18:]), os.path.join(hub, "data", "test-00000-of-00001.parquet"))
for split in ("train", "test"):
    add(hub, rows_of(datasets.load_dataset(hub, split=split, cache_dir=cache)), split)

# Split names in file names (JSON Lines), and a file without one, which is then not read.
named = p("named")
os.makedirs(named, exist_ok=True)
for name, lo, hi in (("train.jsonl", 0, 6), ("my_train-2.jsonl", 6, 9), ("valid.jsonl", 9, 12),
                     ("test.jsonl", 12, 15), ("notes.jsonl", 15, 16)):
    with open(os.path.join(named, name), "w") as f:
        for r in chats[lo:hi]:
            f.write(json.dumps(r) + "\n")
for split in ("train", "validation", "test"):
    add(named, rows_of(datasets.load_dataset(named, split=split, cache_dir=cache)), split)
# Split names in directory names.
bydir = p("bydir")
for split, lo, hi in (("train", 0, 4), ("dev", 4, 7)):
    os.makedirs(os.path.join(bydir, split), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(chats[lo:hi]), os.path.join(bydir, split, "part-0.parquet"))
add(bydir, rows_of(datasets.load_dataset(bydir, split="train", cache_dir=cache)), "train")
add(bydir, rows_of(datasets.load_dataset(bydir, split="validation", cache_dir=cache)), "validation")

# A column no record can hold (bytes): an error naming it.
pq.write_table(pa.table({"text": ["a"], "img": pa.array([b"\x00"], pa.binary())}), p("binary.parquet"))

with open(p("expected.json"), "w") as f:
    json.dump(cases, f, ensure_ascii=False)
print(f"ok {len(cases)} cases")
