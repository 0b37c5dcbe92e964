"""TensorBoard's own readers and checksum, for tests/run/test_tensorboard.cpp.

usage: tensorboard_records.py crc FILE...   TFRecord's masked CRC-32C of each file's bytes, one a line
       tensorboard_records.py list DIR      each event of each event file in DIR (name order), as a JSON
                                            line {file, step, kind: version|session_start|scalar|text, tag, value}
"""
import json
import os
import sys

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.util import tensor_util

if sys.argv[1] == "crc":
    for p in sys.argv[2:]:
        with open(p, "rb") as fh:
            print(pywrap_tensorflow.masked_crc32c(fh.read()))
elif sys.argv[1] == "list":
    d = sys.argv[2]
    for name in sorted(os.listdir(d)):
        for ev in event_file_loader.EventFileLoader(os.path.join(d, name)).Load():
            row = {"file": name, "step": ev.step}
            if ev.file_version:
                row.update(kind="version", tag=ev.file_version)
            if ev.HasField("session_log"):
                row.update(kind="session_" + event_pb2.SessionLog.SessionStatus.Name(ev.session_log.status).lower())
            for v in ev.summary.value:  # the loader has migrated simple_value to a scalar tensor
                value = tensor_util.make_ndarray(v.tensor).item()
                text = v.metadata.plugin_data.plugin_name == "text"
                row.update(kind="text" if text else "scalar", tag=v.tag, value=value.decode() if text else value)
            print(json.dumps(row))
else:
    sys.exit("usage: tensorboard_records.py crc FILE... | list DIR")
