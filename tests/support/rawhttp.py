"""HTTP/1.1 by hand over a socket: for what no well-behaved client sends (a body that never
ends, headers one byte at a time, two framings at once) and to see exactly when a server
answers or hangs up."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

from shim.server import raise_fd_limit


class RawConnection:
    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.received = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, dict[str, str], Any]:
        """The status, headers and JSON body of the next reply (its Content-Length framed)."""
        while b"\r\n\r\n" not in self.received:
            self._read()
        head, _, rest = self.received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += self._read_more()
        self.received = rest[length:]
        return int(lines[0].split()[1]), headers, json.loads(rest[:length])

    def status_line(self) -> int:
        """The status of the next reply, whatever its body (uvicorn's own replies are text)."""
        while b"\r\n" not in self.received:
            self._read()
        return int(self.received.split(b"\r\n")[0].split()[1])

    def closed_within(self, seconds: float) -> float | None:
        """Seconds until the server closed the connection, or None if it stayed open."""
        started = time.monotonic()
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return None
        except ConnectionResetError:
            pass
        return time.monotonic() - started

    def trickle(self, data: bytes, every: float, limit: float) -> float | None:
        """Send `data` one byte per `every` seconds (a slow-loris client) until the server
        hangs up; the seconds that took, or None if it was still open after `limit` seconds."""
        started = time.monotonic()
        for byte in data:
            if time.monotonic() - started > limit:
                return None
            try:
                self.sock.sendall(bytes([byte]))
            except OSError:  # reset: the server closed it
                return time.monotonic() - started
            readable, _, _ = select.select([self.sock], [], [], every)
            if readable and not self._recv_or_empty():
                return time.monotonic() - started
        return None

    def _recv_or_empty(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def _read(self) -> None:
        self.received += self._read_more()

    def _read_more(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data


def request_head(path: str, **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: shim",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SlowClients:
    """`count` connections that never finish a request: `trickling` of them send a request head
    one byte every `every` seconds, `body_trickling` send a whole head and then a body one byte
    every `every` seconds, and the rest open and send nothing. Each one the server closes (or
    answers) is opened again, so that `count` stay open. Its own event loop, in a thread (or
    `run_forever` in a process of its own, as bench.slow_clients does)."""

    def __init__(
        self,
        port: int,
        count: int,
        trickling: int = 0,
        body_trickling: int = 0,
        every: float = 3.0,
        key: str = "slow",
    ) -> None:
        assert trickling + body_trickling <= count
        self.port, self.count, self.every = port, count, every
        self.head = f"POST /e/{key} HTTP/1.1\r\nHost: shim\r\nX-Slow: ".encode() + b"z" * 4000
        self.body_head = f"POST /e/{key} HTTP/1.1\r\nHost: shim\r\nContent-Length: 100000\r\n\r\n[".encode()
        self.kinds = ["trickle"] * trickling + ["body"] * body_trickling
        self.kinds += ["idle"] * (count - len(self.kinds))
        self.open = 0  # connections open now
        self.opened = 0  # connections opened in all
        self.cut = 0  # closed (or answered) by the server
        self.connect_errors = 0
        self.bytes_sent = 0
        self._loop: Any = None
        self._stop: Any = None
        self._thread: Any = None

    def __enter__(self) -> SlowClients:
        import threading

        started = threading.Event()
        self._thread = threading.Thread(target=self.run_forever, args=(started,), daemon=True)
        self._thread.start()
        started.wait(30)
        deadline = time.monotonic() + 60
        while self.open < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.open >= self.count, f"only {self.open} of {self.count} slow connections opened"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def run_forever(self, started: Any = None) -> None:
        import asyncio

        raise_fd_limit(2 * self.count + 256)

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            if started is not None:
                started.set()
            tasks = [asyncio.create_task(self._client(i, kind)) for i, kind in enumerate(self.kinds)]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())

    async def _client(self, index: int, kind: str) -> None:
        import asyncio
        import random

        rng = random.Random(index)
        await asyncio.sleep(rng.uniform(0, min(1.0, self.every)))  # not all in the same instant
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(0.1)
                continue
            self.open += 1
            self.opened += 1
            try:
                if kind == "idle":
                    await reader.read(65536)  # until the server closes it
                else:
                    await self._trickle(reader, writer, kind, rng)
            except OSError:
                pass
            finally:
                self.open -= 1
                self.cut += 1
                writer.close()

    async def _trickle(self, reader: Any, writer: Any, kind: str, rng: Any) -> None:
        import asyncio

        if kind == "body":  # the head at once, then the body byte by byte
            writer.write(self.body_head)
            data = b"0," * 50000
        else:
            data = self.head
        await asyncio.sleep(rng.uniform(0, self.every))
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            self.bytes_sent += 1
            try:
                if not await asyncio.wait_for(reader.read(65536), self.every):
                    return  # closed by the server
                return  # answered (the server gave up on it): open another
            except TimeoutError:
                continue
