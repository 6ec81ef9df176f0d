"""Planted fault for the container tests: ranks that will not stop.

Each rank ignores SIGTERM, starts a `sleep` grandchild in a session of its own (out of reach of
torchrun's process-group kills), says so, and sleeps: only the PID namespace's teardown ends them.
"""
import os
import signal
import subprocess
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen(["sleep", "600"], start_new_session=True)
print(f"rank {os.environ['RANK']} ready", flush=True)
time.sleep(600)
