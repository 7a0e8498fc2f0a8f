"""Scripts whose descendants leave their process group, for the tests that kill them."""

from __future__ import annotations

# A script that leaves its process group twice over: a child in its own session (what Node's
# `detached: true` does) and a double-forked daemon (re-parented, own session). It records both
# pids in argv[1], prints "ready", then exits (argv[2] == "exit") or stays.
ESCAPER = """
import os, subprocess, sys, time

pidfile, mode = sys.argv[1], sys.argv[2]
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
detached = subprocess.Popen(sleeper, start_new_session=True)
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        os.execv(sys.executable, sleeper)
    os.write(write, str(daemon).encode())
    os._exit(0)
daemon = int(os.read(read, 32))
os.wait()
with open(pidfile + ".tmp", "w") as handle:
    handle.write(f"{detached.pid} {daemon}")
os.replace(pidfile + ".tmp", pidfile)
print("ready", flush=True)
if mode == "stay":
    time.sleep(600)
"""


class Cancelled(Exception):
    """Stands for what Prefect raises inside a run being cancelled."""
