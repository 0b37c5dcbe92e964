"""Prints bitsandbytes' signed and unsigned dynamic maps as float32 bit patterns (hex)."""
import struct
import bitsandbytes.functional as F

for signed in (True, False):
    m = F.create_dynamic_map(signed=signed)
    print(("signed" if signed else "unsigned") + " " +
          " ".join(struct.pack("<f", float(v)).hex() for v in m.tolist()))
