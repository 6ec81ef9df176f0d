"""Code that runs inside a submission's processes (kept free of harness imports).

The harness puts CLIENT_DIR on a job's PYTHONPATH, so a submission imports `pgolf_events` as a
top-level module; `pgolf export` ships CLIENT_FILE beside a submission that imports it.
"""
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parent
CLIENT_FILE = CLIENT_DIR / "pgolf_events.py"
