"""The reconciler (`python -m scripts.reconcile`) as a child process of the worker, kept alive.

A process of its own rather than a thread of the worker: a reconciler pass that blocks on a
database or a Prefect server that does not answer cannot hold the worker's event loop or its
GIL-bound threads, a crash of either does not take the other down, and it stops a run that a
hung worker no longer cancels (the worker itself being what hangs). It writes to the worker's own
stdout and stderr, restarts with backoff when it dies and gets SIGTERM when the worker dies (see
scripts/supervisor.py).
"""

from __future__ import annotations

import os
import sys
import threading

from scripts.supervisor import Backoff, ChildSpec, Supervisor

TICK_SECONDS = 0.5


class ReconcilerProcess:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "scripts.reconcile"]
        # its lines go straight where the worker's go: a pipe to a hung worker would fill and
        # stop the reconciler too
        spec = ChildSpec("reconcile", argv, dict(env or os.environ), inherit_output=True)
        self._supervisor = Supervisor([spec], backoff=Backoff(max_seconds=30.0), own_name="worker")
        self._stop = threading.Event()
        # The ticking thread starts the child: it lives as long as the child must (the child
        # gets SIGTERM when the thread that started it ends).
        self._thread = threading.Thread(target=self._run, name="reconciler-process", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._supervisor.pid("reconcile")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._supervisor.tick()
            self._stop.wait(TICK_SECONDS)
        self._supervisor.stop()
