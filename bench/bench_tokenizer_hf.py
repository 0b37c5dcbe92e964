"""The Hugging Face side of bench_tokenizer: fixtures, corpus, and HF `tokenizers` timings.

usage: bench_tokenizer_hf.py make OUT_DIR     tokenizers (as in tests/python/tokenizer_fixtures.py)
                                               and OUT_DIR/corpus.json (a few MB of samples)
       bench_tokenizer_hf.py time OUT_DIR      times encode_batch of every fixture's backend
                                               tokenizer (what AutoTokenizer runs), prints JSON,
                                               writes OUT_DIR/<fixture>.hf_ids.txt
Threads: the Rust pool size is fixed at start, so run `time` with RAYON_NUM_THREADS=1 for the
single-thread number.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
import tokcorpus  # noqa: E402

FIXTURES = ["sp_model", "sp_json", "gpt2", "llama3", "qwen2"]


def make(out):
    import tokenizer_fixtures as fx
    os.makedirs(out, exist_ok=True)
    train_lines = tokcorpus.lines(42, 12000)
    fx.make_sentencepiece(out, train_lines)
    fx.make_gpt2(out, train_lines)
    fx.make_llama3(out, train_lines)
    fx.make_qwen2(out, train_lines)
    # Dataset-like samples: ~10 lines each, ~4 MB in all, from a seed the tokenizers never saw.
    text = tokcorpus.document(2024, 28000).split("\n")
    samples = ["\n".join(text[i:i + 10]) for i in range(0, len(text), 10)]
    with open(os.path.join(out, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(samples, f, ensure_ascii=False)
    print(f"ok {len(samples)} samples, {sum(len(s.encode()) for s in samples) / 1e6:.2f} MB")


def time_all(out):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    samples = json.load(open(os.path.join(out, "corpus.json"), encoding="utf-8"))
    nbytes = sum(len(s.encode()) for s in samples)
    import tokenizers
    import transformers
    res = {"threads": os.environ.get("RAYON_NUM_THREADS", "all"), "bytes": nbytes, "samples": len(samples),
           "tokenizers": tokenizers.__version__, "transformers": transformers.__version__, "fixtures": {}}
    for name in FIXTURES:
        backend = AutoTokenizer.from_pretrained(os.path.join(out, name)).backend_tokenizer
        backend.encode_batch(samples[:200], add_special_tokens=True)  # warm up
        best = best_cpu = None
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            enc = backend.encode_batch(samples, add_special_tokens=True)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            best = dt if best is None else min(best, dt)
            best_cpu = dc if best_cpu is None else min(best_cpu, dc)
        ntok = sum(len(e.ids) for e in enc)
        res["fixtures"][name] = {"seconds": best, "tokens": ntok, "tokens_per_s": ntok / best, "tokens_per_cpu_s": ntok / best_cpu,
                                 "mb_per_s": nbytes / best / 1e6}
        # HF's ids, one compact JSON list per line, for bench_tokenizer to compare with ours.
        with open(os.path.join(out, name + ".hf_ids.txt"), "w") as f:
            f.writelines(json.dumps(e.ids, separators=(",", ":")) + "\n" for e in enc)
    print(json.dumps(res))


if __name__ == "__main__":
    {"make": make, "time": time_all}[sys.argv[1]](os.path.abspath(sys.argv[2]))
