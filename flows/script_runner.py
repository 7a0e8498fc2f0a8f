"""Run one command as a process tree we can always kill, streaming its output line by line.

The output is bytes from outside, read with bounded memory whatever it is: each stream in chunks
of READ_CHUNK_BYTES, split into lines here (not `readline`, which holds a line whole however long
it grows), a line longer than the limit (POLIGRAPH_OUTPUT_LINE_LIMIT_BYTES, 64 KiB) cut with a
marker saying how many bytes were dropped (`… [12,345,678 bytes cut]`), each line made safe text
(`deployments.safe_text`: valid UTF-8, no NUL, no ANSI codes, controls escaped) once, here, before
anyone logs, keeps or stores it. At most QUEUED_READS chunks of lines wait for the consumer, so a
script printing faster than its lines are handled waits on its pipe instead of filling memory.

Why not subprocess.run(timeout=) or Prefect's task timeout: both stop only the direct child, so
`npx` -> `node` -> its children survive (docs/prefect.md, "Timeouts"). The command gets its own
session (process group) and environment tags (`flows.process_tree`); this process becomes a child
subreaper. On timeout, cancellation or any exit we SIGTERM the group and every descendant that
left it (tagged, or re-parented here), SIGKILL what is left after a grace period, and reap them.
Why not prefect-shell's ShellOperation: it runs commands through a shell, and nothing here may
ever go through one.
"""

from __future__ import annotations

import codecs
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

import psutil

from deployments.safe_text import safe_text
from flows.process_tree import (
    STEP_TAG,
    adopted_orphans,
    become_subreaper,
    children_pids,
    group_members,
    reap,
    tagged,
    terminate,
    zombie_children,
)

DRAIN_SECONDS = 2.0
LINE_LIMIT_BYTES = 64 * 1024  # the default of POLIGRAPH_OUTPUT_LINE_LIMIT_BYTES
READ_CHUNK_BYTES = 64 * 1024  # one os.read: a pipe's whole buffer on Linux
QUEUED_READS = 4  # chunks of lines read and not handled yet, both streams together
LINE_CUT_MARKER = "… [{count:,} bytes cut]"
_LINE_CUT = re.compile(r"… \[[\d,]+ bytes cut\]\Z")
LineHandler = Callable[[str, str], None]  # (stream name "stdout" | "stderr", line without \n)
_Lines = tuple[str, list[str]] | None  # the lines of one read; None: one stream reached its end


@dataclass
class ProcessOutcome:
    argv: list[str]
    exit_code: int | None
    duration_seconds: float
    timed_out: bool
    tail: list[str] = field(default_factory=list)  # last lines of both streams, in order
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class ScriptProcess:
    """One command in its own process group: start it, stream its lines, always stop every process
    it started, whatever they did to their session."""

    # leaders of the scripts running in this process: their exit status belongs to their Popen
    _leaders: ClassVar[set[int]] = set()

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        kill_grace_seconds: float = 10.0,
        tail_lines: int = 30,
        line_limit_bytes: int = LINE_LIMIT_BYTES,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.step_id = uuid.uuid4().hex  # tags every descendant of this one command
        self.env = {**(os.environ if env is None else env), **(tags or {}), STEP_TAG: self.step_id}
        self.kill_grace_seconds = kill_grace_seconds
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.stderr_tail: deque[str] = deque(maxlen=tail_lines)
        self.line_limit_bytes = line_limit_bytes
        self._lines: queue.Queue[_Lines] = queue.Queue(maxsize=QUEUED_READS)
        self._discard = threading.Event()  # set once nobody reads the queue any more
        self._readers: list[threading.Thread] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._born = 0.0  # the leader's start time, as psutil tells process start times
        self._earlier: set[int] = set()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "start() first"
        return self._proc

    def start(self) -> int:
        """Start the command (no shell); return its pid, which is also its process group id."""
        become_subreaper()  # orphans of the script re-parent here: found, killed and reaped
        self._earlier = children_pids()  # not the step's, whatever their start time
        self._started = time.monotonic()
        self._born = time.time()
        self._proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group
        )
        ScriptProcess._leaders.add(self._proc.pid)
        try:
            self._born = psutil.Process(self._proc.pid).create_time()
        except psutil.Error:  # already gone: keep the wall-clock start
            pass
        for pipe, name in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            assert pipe is not None
            splitter = LineSplitter(self.line_limit_bytes)
            reader = threading.Thread(
                target=_pump,
                args=(pipe, name, splitter, self._lines, self._discard),
                name=f"script-{name}",
                daemon=True,
            )
            reader.start()
            self._readers.append(reader)
        return self._proc.pid

    def stream(
        self, on_line: LineHandler, timeout_seconds: float, on_idle: Callable[[], None] | None = None
    ) -> bool:
        """Hand every line to `on_line` until the command is done; True when it timed out.

        `on_idle` is called whenever every line read so far has been handled, and every 0.2 s
        while the command is quiet (a consumer that batches its lines flushes then)."""
        deadline = self._started + timeout_seconds
        open_streams = len(self._readers)
        drain_until: float | None = None  # set once the leader has exited
        while open_streams:
            now = time.monotonic()
            if drain_until is None and self.proc.poll() is not None:
                # A leftover background child may hold the pipes open for ever: read until the
                # output has been quiet for a moment, then stop listening (the group is killed).
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and now >= drain_until:
                break
            if now >= deadline:
                return True
            try:
                item = self._lines.get(timeout=min(deadline - now, 0.2))
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                continue
            if item is None:
                open_streams -= 1
                continue
            if drain_until is not None:  # still draining: wait for silence, not a fixed time
                drain_until = time.monotonic() + DRAIN_SECONDS
            name, lines = item
            for line in lines:
                self._keep(name, line)
                on_line(name, line)
            if on_idle is not None and self._lines.empty():
                on_idle()
        try:  # streams closed; the leader may still be exiting
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return True
        return False

    def stop(self) -> None:
        """SIGTERM every process of this command, SIGKILL whatever is left after the grace, reap."""
        self._discard.set()  # readers still waiting for room in the queue drop their lines
        if self._proc is not None:
            with sigterm_held():
                terminate(self._members, self.kill_grace_seconds, on_poll=self._reap)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
            self._reap()
            ScriptProcess._leaders.discard(self._proc.pid)
        for reader in self._readers:
            reader.join(timeout=2)
        while not self._lines.empty():  # what nobody will read (a timeout, an exception)
            self._lines.get_nowait()

    def _members(self) -> list[psutil.Process]:
        """Every live process of this command: its group, its tagged descendants wherever they
        went, and orphans re-parented here (with what they started) since it started."""
        found = {p.pid: p for p in group_members(self.proc.pid)}
        for process in [
            *tagged(STEP_TAG, self.step_id),
            *adopted_orphans(self._born, self.step_id, self._earlier),
        ]:
            found.setdefault(process.pid, process)
        return list(found.values())

    def _reap(self) -> None:
        """Reap our leader through its Popen, and orphans of this command re-parented here.

        Never another script's leader: os.waitpid on it would make its Popen report exit 0.
        """
        self.proc.poll()
        reap(pid for pid in zombie_children(self._born) if pid not in ScriptProcess._leaders)

    def outcome(self, timed_out: bool) -> ProcessOutcome:
        return ProcessOutcome(
            argv=self.argv,
            exit_code=None if timed_out else self.proc.returncode,
            duration_seconds=round(time.monotonic() - self._started, 3),
            timed_out=timed_out,
            tail=list(self.tail),
            stderr_tail=list(self.stderr_tail),
        )

    def _keep(self, stream: str, line: str) -> None:
        self.tail.append(line)
        if stream == "stderr":
            self.stderr_tail.append(line)


def run_process(
    argv: Sequence[str],
    *,
    timeout_seconds: float,
    on_line: LineHandler,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    kill_grace_seconds: float = 10.0,
    tail_lines: int = 30,
    line_limit_bytes: int = LINE_LIMIT_BYTES,
    on_start: Callable[[int], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> ProcessOutcome:
    """Run `argv` (no shell) until it exits or `timeout_seconds` pass; never leave a survivor.

    `tags` are added to its environment (and so to every descendant's), e.g. the flow-run id.
    """
    process = ScriptProcess(
        argv,
        cwd=cwd,
        env=env,
        tags=tags,
        kill_grace_seconds=kill_grace_seconds,
        tail_lines=tail_lines,
        line_limit_bytes=line_limit_bytes,
    )
    pgid = process.start()
    try:
        if on_start is not None:
            on_start(pgid)
        timed_out = process.stream(on_line, timeout_seconds, on_idle)
    finally:
        # Always: on timeout, on cancellation (Prefect raises inside the flow), on any exception
        # and on success (a script may leave background children or daemons behind).
        process.stop()
    return process.outcome(timed_out)


@contextmanager
def sigterm_held() -> Iterator[None]:
    """Hold SIGTERM until the block ends, then deliver it (main thread only).

    A cancel arrives as SIGTERM, which Prefect turns into an exception; the cleanup it starts
    must not be cut short by a second SIGTERM (a runner or a reconciler insisting, a service
    stopping), or the script's processes would outlive it.
    """
    held: list[int] = []
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame: held.append(signum))
    except ValueError:  # not the main thread, where Python runs signal handlers: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if held:
            os.kill(os.getpid(), signal.SIGTERM)


class LineSplitter:
    """One stream's bytes, in reads of any size, into safe lines: each at most `limit` bytes of
    the script's output (cut at a character boundary), followed by a marker when it was cut.

    Holds at most `limit` bytes between reads: the start of the line not ended yet. Hand-written
    because nothing in the standard library splits lines with a bound (`readline(limit)` returns
    the rest of a long line as further lines instead of dropping it)."""

    def __init__(self, limit: int = LINE_LIMIT_BYTES) -> None:
        self.limit = limit
        self._part = bytearray()  # the line not ended yet, its first `limit` bytes
        self._dropped = 0  # bytes of that line past the limit, counted, not kept
        self._cr = False  # that line's last byte so far is \r (of a \r\n, not the line's)

    def feed(self, chunk: bytes) -> list[str]:
        """The lines that `chunk` ends."""
        first = chunk.find(b"\n")
        if first == -1:
            self._extend(chunk)
            return []
        view = memoryview(chunk)
        self._extend(view[:first])
        lines = [self._end_line()]
        last = chunk.rfind(b"\n")
        if last > first:
            lines += self._whole_lines(chunk[first + 1 : last])
        self._extend(view[last + 1 :])
        return lines

    def close(self) -> str | None:
        """The last line, when the stream ended without a newline."""
        return self._end_line() if self._part or self._dropped else None

    def _extend(self, data: bytes | memoryview) -> None:
        if not data:
            return
        room = max(0, self.limit - len(self._part))
        if room:
            self._part += data[:room]
        self._dropped += max(0, len(data) - room)
        self._cr = data[-1] == 0x0D

    def _end_line(self) -> str:
        """The line held so far, without its final \r (a \r\n ends a line as \n does)."""
        raw, dropped = bytes(self._part), self._dropped
        if self._cr:
            if dropped:
                dropped -= 1
            else:
                raw = raw[:-1]
        self._part.clear()
        self._dropped = 0
        self._cr = False
        if dropped:
            keep = utf8_boundary(raw)
            raw, dropped = raw[:keep], dropped + len(raw) - keep
        return self._line(raw, dropped)

    def _whole_lines(self, region: bytes) -> list[str]:
        """Lines that begin and end inside one read: made safe together, then split (escapes
        and ANSI sequences never hold a newline, so the split is the same)."""
        raw_lines = region.replace(b"\r\n", b"\n").split(b"\n")
        if raw_lines[-1].endswith(b"\r"):  # the last one's \n is the read's last newline
            raw_lines[-1] = raw_lines[-1][:-1]
        if all(len(raw) <= self.limit for raw in raw_lines):  # always, when reads <= the limit
            return safe_text(b"\n".join(raw_lines)).split("\n")
        lines = []
        for raw in raw_lines:
            keep = utf8_boundary(raw[: self.limit]) if len(raw) > self.limit else len(raw)
            lines.append(self._line(raw[:keep], len(raw) - keep))
        return lines

    @staticmethod
    def _line(raw: bytes, dropped: int) -> str:
        text = safe_text(raw)
        return text + LINE_CUT_MARKER.format(count=dropped) if dropped else text


def shorten(line: str, limit: int) -> str:
    """A line of ours in at most about `limit` characters (safe text's own marker says the cut),
    still ending with the marker of a cut the reader made, which says how long the line was."""
    if len(line) <= limit:
        return line
    found = _LINE_CUT.search(line, max(0, len(line) - 40))
    marker = found.group() if found else ""
    return safe_text(line[: len(line) - len(marker)], max(0, limit - len(marker))) + marker


def utf8_boundary(head: bytes) -> int:
    """How much of `head` (the start of a longer text) to keep so that no UTF-8 character is cut
    in two: all of it, or up to where the character it ends inside begins. The decoder's own
    answer: an incremental decoder holds back the bytes of a character not complete yet (at most
    3, so the last 4 bytes tell)."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    decoder.decode(head[-4:], final=False)
    return len(head) - len(decoder.getstate()[0])


def _pump(
    pipe: IO[bytes], stream: str, splitter: LineSplitter, out: queue.Queue[_Lines], discard: threading.Event
) -> None:
    def put(item: _Lines) -> None:
        while not discard.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:  # the consumer is busy: the script waits on its pipe meanwhile
                continue

    try:
        fd = pipe.fileno()
        while chunk := os.read(fd, READ_CHUNK_BYTES):
            if lines := splitter.feed(chunk):
                put((stream, lines))
        if (last := splitter.close()) is not None:
            put((stream, [last]))
    finally:
        pipe.close()
        put(None)
