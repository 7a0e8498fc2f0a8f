"""`python -m scripts.local_stack` as a test drives it: its output, its children, its ready lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil

from support.paths import REPO
from support.polling import wait_for

READY_LINE = re.compile(r"^\d\d:\d\d:\d\d stack\s+\| ready: ")
# What each supervised child runs, to find it among the stack's children.
CHILD_COMMANDS = {
    "prefect": ["-m", "prefect", "server", "start"],
    "worker": ["-m", "prefect", "worker", "start"],
    "shim": ["-m", "shim"],
}


class LocalStackProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.local_stack"],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stack_lines(self) -> list[str]:
        """The supervisor's own lines (starts, exits, restarts, ready)."""
        return [line[9:] for line in self.lines() if line[9:].startswith("stack ")]

    def ready_count(self) -> int:
        return sum(1 for line in self.lines() if READY_LINE.match(line))

    def wait_ready(self, count: int, timeout: float = 180, interval: float = 0.1) -> None:
        """Until the stack has said 'ready' `count` times in all."""

        def said() -> bool:
            assert self.proc.poll() is None, "\n".join(self.lines()[-60:])
            return self.ready_count() >= count

        wait_for(said, timeout=timeout, interval=interval, what=f"ready line #{count}")

    def child(self, name: str) -> psutil.Process | None:
        """The live process the stack runs as `name` (its direct child)."""
        for proc in psutil.Process(self.proc.pid).children():
            try:
                cmdline = proc.cmdline()
            except psutil.Error:
                continue
            wanted = CHILD_COMMANDS[name]
            runs_it = any(cmdline[i : i + len(wanted)] == wanted for i in range(len(cmdline)))
            if runs_it and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        return None

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
