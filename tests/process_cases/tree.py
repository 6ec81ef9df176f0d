"""A plain-python process tree that misbehaves like torchrun's ranks, cheaply.

argv: hang | exit | child
  hang:  start a child, print "ready", ignore SIGTERM and sleep
  exit:  start a child, wait until it is ready, exit 0 and leave it behind
  child: move to its own session (setsid), ignore SIGTERM, start `sleep 300`, print "child ready", sleep
"""
import os
import signal
import subprocess
import sys
import time

role = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if role == "child":
    os.setsid()
    subprocess.Popen(["sleep", "300"])
    os.write(1, b"child ready\n")
    time.sleep(300)
else:
    read, write = os.pipe()
    subprocess.Popen([sys.executable, __file__, "child"], stdout=write)
    os.write(1, f"ready pid={os.getpid()}\n".encode())
    os.close(write)
    with os.fdopen(read) as child_out:
        os.write(1, child_out.readline().encode())
    if role == "hang":
        time.sleep(300)
