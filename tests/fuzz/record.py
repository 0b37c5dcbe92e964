"""Collects the logs of long fuzzing runs (scripts/fuzz.sh TARGET --runs N) into one JSON file.

usage: record.py LOG_DIR OUT.json TARGET...
Per target: executions, seconds, exec/s, libFuzzer's final cov/ft/corpus, peak RSS, whether the
run ended on a finding, and the regression inputs kept under tests/fuzz/regressions/TARGET.
Targets already in OUT.json and not named keep their entry.
"""
import json
import os
import platform
import re
import subprocess
import sys


def lscpu():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"model_name": info.get("Model name", platform.processor()), "cpus": os.cpu_count()}


def parse(log_path):
    text = open(log_path, encoding="utf-8", errors="replace").read()
    r = {}
    done = [m for m in re.finditer(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+).*?exec/s: (\d+)", text, re.M)]
    if done:
        m = done[-1]
        r.update(cov=int(m.group(3)), ft=int(m.group(4)), corpus_units=int(m.group(5)), corpus_size=m.group(6))
    if done:  # a run that ends on a finding prints no totals: its last status line counts
        r["runs"], r["exec_per_sec"] = int(done[-1].group(1)), int(done[-1].group(7))
    for key, name in (("number_of_executed_units", "runs"), ("average_exec_per_sec", "exec_per_sec"),
                      ("peak_rss_mb", "peak_rss_mb"), ("slowest_unit_time_sec", "slowest_unit_s")):
        m = re.search(r"^stat::%s:\s*(\d+)" % key, text, re.M)
        if m:
            r[name] = int(m.group(1))
    m = re.search(r"^Done (\d+) runs in (\d+) second", text, re.M)
    if m:
        r["runs"], r["seconds"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"^INFO: Seed: (\d+)", text, re.M)
    if m:
        r["seed"] = int(m.group(1))
    finding = re.search(r"^(==\d+==ERROR: .*|SUMMARY: .*|fuzz: .*not a UserError.*|.*deadly signal.*|.*ALARM: .*)$",
                        text, re.M)
    r["finding"] = finding.group(1).strip() if finding else None
    return r


def main():
    log_dir, out, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    doc = {}
    if os.path.exists(out):
        doc = json.load(open(out))
    doc.setdefault("targets", {})
    doc["machine"] = lscpu()
    doc["command"] = "nice -n 19 scripts/fuzz.sh TARGET --runs N (build-fuzz: clang -fsanitize=fuzzer,address,undefined)"
    for t in targets:
        entry = parse(os.path.join(log_dir, t + ".log"))
        reg = os.path.join(root, "tests", "fuzz", "regressions", t)
        entry["regressions"] = sorted(os.listdir(reg)) if os.path.isdir(reg) else []
        doc["targets"][t] = entry
    with open(out, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
