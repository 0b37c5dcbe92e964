"""Prints Python's repr of each float32 given as 8 hex digits (one per line of the file)."""
import struct
import sys

for line in open(sys.argv[1]):
    if line.strip():
        print(repr(struct.unpack("<f", bytes.fromhex(line.strip()))[0]))
