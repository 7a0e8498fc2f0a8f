"""The benchmarks' no-op step: records when it started (time.time()) and exits 0.

    python -I -S bench/noop_script.py <script-id> [flags...]

Writes $BENCH_STARTS/<script-id>-<pid>.start. Standard library only (runs with -S).
"""

import os
import sys
import time

started = time.time()
directory = os.environ.get("BENCH_STARTS")
if directory:
    with open(os.path.join(directory, f"{sys.argv[1]}-{os.getpid()}.start"), "w") as handle:
        handle.write(repr(started))
