"""What hostile and maximal requests cost the shim: peak RSS and `/health` latency.

    .venv/bin/python bench/intake_limits.py                       # outbox in SQLite (temp dir)
    .venv/bin/python bench/intake_limits.py --database-url postgresql://user@host/db

Starts `python -m shim` in key mode (the dispatcher runs, Prefect is unreachable: events wait
in the outbox). Each round, side by side: idle; a 200 MB body with its Content-Length; a 200 MB
chunked body (no length: counted as it streams); a legitimate 5,000-event batch. During each,
another connection probes `GET /health` again and again; the shim's RSS is sampled every 5 ms.
Targets: 200 MB refused in < 1 s with < 50 MB RSS growth; `/health` < 100 ms during the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"
HUGE = 200 * 1024 * 1024
CHUNK = b"[" + b'{"name":"sync/press"},' * 2978  # about 64 KiB of events, never closed


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def shim_process(database_url: str | None) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    env = {
        **os.environ,
        "POLIGRAPH_HOME": str(home),
        "POLIGRAPH_EVENT_KEYS": KEY,
        "POLIGRAPH_SHIM_PORT": str(port),
        "POLIGRAPH_SHIM_SCHEMA": f"bench_{uuid.uuid4().hex[:8]}",
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
    }
    env.pop("DATABASE_URL", None)
    if database_url:
        env["POLIGRAPH_SHIM_DATABASE_URL"] = database_url
    log = (home / "shim.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "shim"], env=env, cwd=REPO, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the shim did not start: see {home / 'shim.log'}")
            time.sleep(0.1)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class Probe:
    """While running: /health latencies (ms) on one keep-alive connection, and peak RSS."""

    def __init__(self, url: str, process: psutil.Process) -> None:
        self.url, self.process = url, process
        self.latencies: list[float] = []
        self.peak_rss = self.start_rss = process.memory_info().rss
        self._stop = threading.Event()

    def _probe(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                client.get(f"{self.url}/health")
                self.latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.005)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(0.005)

    def run(self, work: Callable[[], str]) -> tuple[float, str]:
        threads = [threading.Thread(target=self._probe), threading.Thread(target=self._sample)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)  # a few probes before the work starts
        started = time.perf_counter()
        try:
            outcome = work()
        finally:
            elapsed = time.perf_counter() - started
            time.sleep(0.05)
            self._stop.set()
            for thread in threads:
                thread.join()
        return elapsed, outcome


def idle() -> str:
    time.sleep(1)
    return "idle 1 s"


def declared_huge(url: str) -> Callable[[], str]:
    def send() -> str:
        def body() -> Iterator[bytes]:
            for _ in range(HUGE // len(CHUNK)):
                yield CHUNK

        headers = {"Content-Length": str(HUGE // len(CHUNK) * len(CHUNK))}
        reply = httpx.post(f"{url}/e/{KEY}", content=body(), headers=headers, timeout=60)
        return f"HTTP {reply.status_code}"

    return send


def chunked_huge(url: str) -> Callable[[], str]:
    def send() -> str:
        def body() -> Iterator[bytes]:
            for _ in range(HUGE // len(CHUNK)):
                yield CHUNK

        try:
            reply = httpx.post(f"{url}/e/{KEY}", content=body(), timeout=60)
        except httpx.HTTPError as exc:  # the shim closed the connection on a client still sending
            return f"{type(exc).__name__}"
        return f"HTTP {reply.status_code}"

    return send


def batch(url: str) -> Callable[[], str]:
    events = [{"name": "sync/press", "data": {"jobId": f"c{uuid.uuid4().hex[:24]}"}} for _ in range(5000)]
    content = json.dumps(events).encode()

    def send() -> str:
        reply = httpx.post(f"{url}/e/{KEY}", content=content, timeout=120)
        ids = reply.json().get("ids", [])
        return f"HTTP {reply.status_code}, {len(ids)} ids, {len(content) // 1024} KiB"

    return send


def stats(values: list[float]) -> str:
    return f"{min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="PostgreSQL for the outbox (default: SQLite)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total // 2**30} GiB, Python {platform.python_version()}, "
        f"load average {psutil.getloadavg()[0]:.1f}; "
        f"outbox: {'PostgreSQL' if args.database_url else 'SQLite'}"
    )
    results: dict[str, dict[str, list[float]]] = {}
    with shim_process(args.database_url) as (url, process):
        cases = {
            "idle": idle,
            "200 MB, Content-Length": declared_huge(url),
            "200 MB, chunked": chunked_huge(url),
            "5,000-event batch": batch(url),
        }
        for round_no in range(1, args.rounds + 1):
            for name, work in cases.items():  # interleaved: every case once per round
                probe = Probe(url, process)
                elapsed, outcome = probe.run(work)
                result = results.setdefault(name, {"health": [], "seconds": [], "rss": []})
                result["health"] += probe.latencies
                result["seconds"].append(elapsed)
                result["rss"].append((probe.peak_rss - probe.start_rss) / 2**20)
                print(f"round {round_no} {name:24} {elapsed:6.2f} s  {outcome}")
        rss_end = process.memory_info().rss / 2**20
    baseline = statistics.median(results["idle"]["health"])
    print()
    print(
        f"{'':24} {'/health ms min/median/max (n)':>30} {'p95':>6} {'x idle':>7}"
        f" {'seconds min/med/max':>23} {'RSS growth MB':>23}"
    )
    for name, result in results.items():
        health = result["health"]
        ratio = statistics.median(health) / baseline
        print(
            f"{name:24} {stats(health)} ({len(health):4d}) {p95(health):6.1f} {ratio:6.1f}x"
            f" {stats(result['seconds'])} {stats(result['rss'])}"
        )
    print(f"shim RSS at the end: {rss_end:.0f} MB")


if __name__ == "__main__":
    main()
