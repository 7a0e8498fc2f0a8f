"""S1: an SDK's sends while 1,000 slow clients hold connections, next to the same sends alone.

    .venv/bin/python -m bench.slow_clients [--rounds 3] [--seconds 20] [--slow 1000] [--trickling 500]
    .venv/bin/python -m bench.slow_clients --before     # the limits of before: 32 connections, 30 s heads

The shim (`python -m shim`, key mode, its outbox on a durable PostgreSQL, Prefect unreachable so
that events wait) gets one event every 200 ms from the real `inngest` SDK (`key_client`), for
`--seconds` per side. On the "slow" side, another process (this module with `--drive`) holds
`--slow` connections open the whole time: `--trickling` of them send a request head one byte
every 3 s, `--body` of them a whole head then a body one byte every 3 s, the rest nothing; each
one the shim closes is opened again at once. Sides interleave (quiet, slow, slow, quiet, …),
each after the previous one ended. Reported per side: every HTTP attempt's status (the SDK
retries a 5xx, so a send that ends in 200 may hide one: each attempt is counted through an httpx
hook), the sends' p50 and p99 latency, and the shim's peak RSS and open file descriptors
(sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any

import psutil

from bench.harness import (
    KEY,
    REPO,
    WORK,
    Figure,
    Series,
    base_env,
    durable_postgres,
    free_port,
    machine,
    print_table,
    shim,
)

SEND_EVERY = 0.2  # seconds between two sends of the SDK


class Sampler:
    """The peak RSS (MB) and open descriptors of a process while running."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.start_rss = self.peak_rss = self.process.memory_info().rss / 2**20
        self.peak_fds = self.process.num_fds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss / 2**20)
            self.peak_fds = max(self.peak_fds, self.process.num_fds())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def send_for(url: str, seconds: float) -> tuple[list[float], list[int], int]:
    """Send one event every 200 ms for `seconds` with the SDK: each send's latency (ms), every
    HTTP attempt's status, and the sends that did not end in success."""
    import inngest

    from support.shim import attempt_statuses, key_client

    client = key_client(url, KEY)
    statuses = attempt_statuses(client)
    latencies: list[float] = []
    failed = 0
    next_send = time.monotonic()
    ends = next_send + seconds
    while next_send < ends:
        time.sleep(max(0.0, next_send - time.monotonic()))
        next_send += SEND_EVERY
        event = inngest.Event(name="sync/press", data={"jobId": f"c{uuid.uuid4().hex[:24]}"})
        started = time.perf_counter()
        try:
            client.send_sync(event)
        except Exception:  # noqa: BLE001 - counted: the figure says how many failed
            failed += 1
        latencies.append((time.perf_counter() - started) * 1000)
    client._http_client._http_client_sync.close()
    return latencies, statuses, failed


@contextmanager
def slow_clients(port: int, count: int, trickling: int, body: int) -> Any:
    """This module with `--drive`: the slow connections, in a process of their own."""
    args = [sys.executable, "-m", "bench.slow_clients", "--drive", str(port), "--slow", str(count)]
    args += ["--trickling", str(trickling), "--body", str(body)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    stats: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # one line a second; wait until all are open
        stats = json.loads(line)
        if stats["open"] >= count:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the slow connections did not all open: {stats}")
    else:
        raise RuntimeError(f"the slow clients' driver ended: {stats}")
    last: dict[str, Any] = {}

    def follow() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            last.update(json.loads(line))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        yield last
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)


def drive(port: int, count: int, trickling: int, body: int) -> None:
    """`--drive`: hold the connections, print their counts once a second (JSON lines)."""
    import signal

    from support.rawhttp import SlowClients

    clients = SlowClients(port, count, trickling, body, key=KEY)

    def report() -> None:
        while True:
            time.sleep(1)
            line = {
                "open": clients.open,
                "opened": clients.opened,
                "cut": clients.cut,
                "connect_errors": clients.connect_errors,
                "bytes_sent": clients.bytes_sent,
            }
            print(json.dumps(line), flush=True)

    threading.Thread(target=report, daemon=True).start()
    # stopped from outside: at once, the kernel closes the sockets (SystemExit raised inside the
    # event loop would not stop it)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    clients.run_forever()


def slow_figures(
    rounds: int, seconds: float, count: int, trickling: int, body: int, before: bool
) -> list[Figure]:
    idle = count - trickling - body
    label = f"{count} slow clients ({trickling} trickling heads, {body} bodies, {idle} idle)"
    figures = {
        q: Figure(
            key="S1",
            title=f"SDK send {q}, one send / 200 ms, {label}",
            unit="ms",
            baseline_name="the same sends, no slow client",
            goal="every attempt 200, ≤ 2× quiet",
            fmt="{:.1f}",
        )
        for q in ("p50", "p99")
    }
    for figure in figures.values():
        figure.passes = lambda f: f.ratio <= 2 and not refused["slow"]
    refused: dict[str, list[int]] = {"quiet": [], "slow": []}
    rss: dict[str, Series] = {"quiet": Series(), "slow": Series()}
    fds: dict[str, Series] = {"quiet": Series(), "slow": Series()}
    home = WORK / f"slow-{uuid.uuid4().hex[:6]}"
    env = base_env(home)
    with durable_postgres() as pg_url:
        shim_env = env | {
            "DATABASE_URL": pg_url,
            "POLIGRAPH_SHIM_SCHEMA": f"bench_{uuid.uuid4().hex[:8]}",
            "POLIGRAPH_EVENT_KEYS": KEY,
            "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing there: events wait
        }
        if before:
            shim_env |= {
                "POLIGRAPH_SHIM_MAX_CONNECTIONS": "32",
                "POLIGRAPH_SHIM_HEAD_TIMEOUT_SECONDS": "30",
            }
        with shim(shim_env) as (url, proc):
            port = int(url.rsplit(":", 1)[1])
            send_for(url, 2)  # warm-up
            for round_no in range(rounds):
                for side in ("quiet", "slow") if round_no % 2 == 0 else ("slow", "quiet"):
                    with Sampler(proc.pid) as sampler:
                        if side == "slow":
                            with slow_clients(port, count, trickling, body) as clients:
                                latencies, statuses, failed = send_for(url, seconds)
                            extra = f", slow connections {clients}"
                        else:
                            latencies, statuses, failed = send_for(url, seconds)
                            extra = ""
                    series = Series(latencies)
                    target = figures["p50"].baseline if side == "quiet" else figures["p50"].ours
                    target.add(series.quantile(0.5))
                    target = figures["p99"].baseline if side == "quiet" else figures["p99"].ours
                    target.add(series.quantile(0.99))
                    not_ok = [s for s in statuses if s != 200]
                    refused[side] += not_ok
                    rss[side].add(sampler.peak_rss)
                    fds[side].add(sampler.peak_fds)
                    print(
                        f"  S1 round {round_no + 1} {side}: {len(latencies)} sends, {failed} failed, "
                        f"attempts {len(statuses)} ({len(not_ok)} not 200: {sorted(set(not_ok))}), "
                        f"p50 {series.quantile(0.5):.1f} ms, p99 {series.quantile(0.99):.1f} ms, "
                        f"max {max(latencies):.1f} ms; shim peak RSS {sampler.peak_rss:.0f} MB "
                        f"(from {sampler.start_rss:.0f}), peak fds {sampler.peak_fds}{extra}",
                        flush=True,
                    )
    for side in ("quiet", "slow"):
        figures["p50"].notes.append(
            f"{side}: attempts not 200: {len(refused[side])}; shim peak RSS MB "
            f"{rss[side].summary('{:.0f}')}, peak open fds {fds[side].summary('{:.0f}')}"
        )
    if before:
        figures["p50"].notes.append("limits of before: POLIGRAPH_SHIM_MAX_CONNECTIONS=32, heads within 30 s")
    return list(figures.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20, help="of sends, per side and round")
    parser.add_argument("--slow", type=int, default=1000, help="slow connections")
    parser.add_argument("--trickling", type=int, default=500, help="of them trickling a head")
    parser.add_argument("--body", type=int, default=0, help="of them trickling a body")
    parser.add_argument("--before", action="store_true", help="the limits of before (32 connections)")
    parser.add_argument("--drive", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.slow, args.trickling, args.body)
        return
    print(f"machine: {machine()}", flush=True)
    figures = slow_figures(args.rounds, args.seconds, args.slow, args.trickling, args.body, args.before)
    print(f"machine at the end: {machine()}")
    print_table(figures)


if __name__ == "__main__":
    main()
