"""HTTP/1.1 by hand over a socket: for what no well-behaved client sends (a body that never
ends, headers one byte at a time, two framings at once) and to see exactly when a server
answers or hangs up."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any


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
