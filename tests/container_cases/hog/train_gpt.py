"""Planted fault for the container tests: the train phase allocates memory until the kernel stops it."""
import os

if os.environ.get("PGOLF_PHASE") == "train":
    held = []
    while True:
        held.append(b"\x01" * (32 << 20))  # written, so resident: 32 MB at a time
