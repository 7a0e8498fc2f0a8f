"""A scriptable stand-in for a Poligraph script, for tests.

    python tests/stubs/stub_script.py <script-id> [flags...]

Reads its behaviour from $STUB_DIR/<script-id>.json (all keys optional):
    {"sleep": 0.2, "fail_times": 0, "exit_code": 1, "progress": [[1, 4], [4, 4]],
     "grandchild": false, "ignore_term": false, "stderr": "boom",
     "detached": false, "daemon": false, "exec": ["npx", "tsx", "x.ts"], "cwd": "/dir",
     "until": "/path/of/a/gate", "huge_line": {"stream": "stdout", "bytes": 314572800},
     "flood": {"stream": "stdout", "lines": 400000}, "raw_stdout": "<base64>", "raw_stderr": "<base64>"}
grandchild: a child in its group; detached: a child in its own session (setsid, as Node's
`detached: true`); daemon: a double-forked daemon (re-parented, own session); exec: after the
start line (and the children), the stub becomes that command, run in `cwd`; until: after its
sleep, wait (at most 5 min) for that file to exist, so a test decides when it ends.
Hostile output, written after that wait and before the failure's stderr line: huge_line, that many
bytes of "x" with no newline (written 1 MiB at a time); flood, that many short lines
(`flood line <i>`) as fast as the pipe takes them; raw_stdout / raw_stderr, those bytes (base64
in the JSON: NUL, invalid UTF-8, ANSI escape sequences) as they are. Each goes to its stream.
and appends one JSON line per invocation to $STUB_DIR/calls.jsonl:
    {"script", "flags", "pid", "start", "end", "exit"}  (an "end" line is written on exit;
     a run killed on timeout has only its start line).
Grandchild, detached and daemon pids go to $STUB_DIR/<script-id>.pids, one per line.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def record(stub_dir: Path, entry: dict) -> None:
    with (stub_dir / "calls.jsonl").open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()


def previous_starts(stub_dir: Path, script: str) -> int:
    calls = stub_dir / "calls.jsonl"
    if not calls.exists():
        return 0
    lines = [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]
    return sum(1 for c in lines if c["script"] == script and c["event"] == "start")


SLEEPER = "import time; time.sleep(600)"


def note_pid(stub_dir: Path, script: str, pid: int) -> None:
    with (stub_dir / f"{script}.pids").open("a") as handle:
        handle.write(f"{pid}\n")


def start_daemon(stub_dir: Path, script: str) -> None:
    """The classic double fork: the daemon ends up in its own session, its parent gone."""
    read, write = os.pipe()
    if os.fork() == 0:  # first child: new session, fork the daemon, exit
        os.close(read)
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            os.close(write)
            os.execv(sys.executable, [sys.executable, "-c", SLEEPER])
        os.write(write, str(daemon).encode())
        os._exit(0)
    os.close(write)
    pid = int(os.read(read, 32))
    os.close(read)
    os.wait()  # the first child, so that the daemon is an orphan
    note_pid(stub_dir, script, pid)


def grandparent() -> int | None:
    """The process that started our parent (a Prefect worker, when a worker runs the flow)."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def hostile_output(spec: dict) -> None:
    """The behaviours a sync script's output may have: one huge line, a flood, raw bytes."""
    sys.stdout.flush()
    sys.stderr.flush()
    streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    if huge := spec.get("huge_line"):
        out, left = streams[huge.get("stream", "stdout")], int(huge["bytes"])
        block = b"x" * (1 << 20)
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
        out.flush()
    if flood := spec.get("flood"):
        out, count = streams[flood.get("stream", "stdout")], int(flood["lines"])
        for start in range(0, count, 10_000):  # 10,000 lines per write: as fast as the pipe goes
            out.write(b"".join(b"flood line %d\n" % i for i in range(start, min(start + 10_000, count))))
        out.flush()
    for name in ("stdout", "stderr"):
        if raw := spec.get(f"raw_{name}"):
            streams[name].write(base64.b64decode(raw))
            streams[name].flush()


def main() -> int:
    script, flags = sys.argv[1], sys.argv[2:]
    stub_dir = Path(os.environ["STUB_DIR"])
    spec_file = stub_dir / f"{script}.json"
    spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
    attempt = previous_starts(stub_dir, script) + 1
    record(
        stub_dir,
        {
            "event": "start",
            "script": script,
            "flags": flags,
            "pid": os.getpid(),
            "time": time.time(),
            "attempt": attempt,
            "gppid": grandparent(),
        },
    )
    if spec.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if spec.get("grandchild"):
        note_pid(stub_dir, script, subprocess.Popen([sys.executable, "-c", SLEEPER]).pid)
    if spec.get("detached"):
        child = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
        note_pid(stub_dir, script, child.pid)
    if spec.get("daemon"):
        start_daemon(stub_dir, script)
    if command := spec.get("exec"):
        os.chdir(spec.get("cwd", "."))
        os.execvp(command[0], command)
    print(f"{script} starting with {' '.join(flags) or 'no flags'}", flush=True)
    progress = spec.get("progress", [])
    steps = max(len(progress), 1)
    for item in progress or [None]:
        time.sleep(float(spec.get("sleep", 0.1)) / steps)
        if item:
            print(f"PROGRESS {item[0]}/{item[1]}", flush=True)
    if gate := spec.get("until"):
        deadline = time.monotonic() + 300
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    hostile_output(spec)
    failing = attempt <= int(spec.get("fail_times", 0))
    code = int(spec.get("exit_code", 1)) if failing else 0
    if failing:
        print(spec.get("stderr", f"{script} failed on purpose"), file=sys.stderr, flush=True)
    print(f"{script} done", flush=True)
    record(
        stub_dir, {"event": "end", "script": script, "pid": os.getpid(), "time": time.time(), "exit": code}
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
