"""What the requests in progress may hold at once: how many there are, and the body bytes they
hold together. A request past its head takes a ticket before its body is read, holds its body's
bytes on it as they arrive, and gives it all back once answered; when either bound is reached
the request gets 503 with Retry-After at once (the SDKs send again), its body left unread.

Quiet sockets cost nothing here: a connection counts only once its request head is in
(`shim.server` bounds the sockets). Everything runs on the event loop: plain counters, no lock.
"""

from __future__ import annotations

from types import TracebackType


class Admission:
    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0  # requests holding a ticket
        self.bytes = 0  # body bytes they hold

    def admit(self) -> Ticket | None:
        """A ticket for one more request, or None when as many as allowed are in progress."""
        if self.requests >= self.max_requests:
            return None
        self.requests += 1
        return Ticket(self)


class Ticket:
    """One request's share: `hold` its body's size as it grows; released on exit (once)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.held = 0
        self._released = False

    def hold(self, size: int) -> bool:
        """Hold `size` bytes in all (no less than before); False when that does not fit."""
        more = size - self.held
        if more <= 0:
            return True
        if self._admission.bytes + more > self._admission.max_bytes:
            return False
        self._admission.bytes += more
        self.held = size
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission.bytes -= self.held
            self._admission.requests -= 1
            self.held = 0

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
