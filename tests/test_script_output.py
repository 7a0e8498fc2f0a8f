"""A sync script's output is hostile input: a 300 MB line without a newline, a 400,000-line flood,
NUL, bytes that are not UTF-8 and ANSI escape sequences on either stream. Real subprocesses (the
stub script) read by the script runner; then real runs on the Prefect server with PostgreSQL rows:
each step ends with its real outcome within seconds of its script's exit, in bounded memory, and
the run log says what it did not get.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.safe_text import safe_text
from flows.progress import ProgressReport
from flows.script_runner import LineSplitter, run_process
from flows.steps import MAX_LOG_LINE, LogBudget, OutputLogger
from support.paths import REPO, TESTS
from support.polling import wait_for
from support.prefect_server import run_logs
from support.syncjob import insert_pending

HUGE = 300 * 1024 * 1024
LIMIT = 64 * 1024
FLOOD = 400_000
MB = 1024 * 1024
STUB = [sys.executable, str(TESTS / "stubs" / "stub_script.py")]
CUT = re.compile(r"(.*)… \[([\d,]+) bytes cut\]", re.S)
SUMMARY = re.compile(r"… ([\d,]+) lines not sent to the run log \(.*\); the last (\d+) are below")
HOSTILE_OUT = b"\x1b[31mrouge\x1b[0m caf\xc3\xa9 \xff nul\x00 tab\tok\r\n"
HOSTILE_ERR = b"\x1b[1;33mwarn\x1b[0m \x00 \xc3\n"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- the script runner, in a process of its own: its exact peak memory -----------------------
# The kernel's high-water mark of resident memory (VmHWM), reset first (clear_refs 5): above the
# resident size before, it bounds everything the reading did, however short-lived. (ru_maxrss
# would not do: a child keeps the peak of the process it was forked from, here pytest's.)
def status(field):  # also run in a bare interpreter, below
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) * 1024


def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS
    return status("VmRSS")


READER = f"""
{inspect.getsource(status)}
{inspect.getsource(reset_peak)}
import json, sys
from flows.script_runner import run_process
lines = []
before = reset_peak()
outcome = run_process(sys.argv[1:], timeout_seconds=60, on_line=lambda s, l: lines.append((s, l)), kill_grace_seconds=1)
print(json.dumps({{"grown": status("VmHWM") - before, "lines": lines, "exit": outcome.exit_code,
                  "seconds": outcome.duration_seconds, "stderr_tail": outcome.stderr_tail}}))
"""


@pytest.mark.unit
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_300_mb_line_without_newline_is_cut_and_read_in_bounded_memory(stubs, stream: str) -> None:
    stubs.configure("huge", huge_line={"stream": stream, "bytes": HUGE})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", READER, *STUB, "huge"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["exit"] == 0 and time.monotonic() - started < 30
    assert report["grown"] < 100 * MB, f"the reader grew by {report['grown'] / MB:.0f} MB"
    huge = [line for s, line in report["lines"] if s == stream and line.startswith("x")]
    # on stdout, the stub's last line ("huge done") ends the huge line: its bytes are cut too
    rest = len("huge done") if stream == "stdout" else 0
    assert huge == ["x" * LIMIT + f"… [{HUGE + rest - LIMIT:,} bytes cut]"]
    print(f"\n{stream}: 300 MB line read in {report['seconds']}s, peak grew {report['grown'] / MB:.2f} MB")


@pytest.mark.unit
def test_long_lines_are_cut_at_a_character_boundary_and_the_tail_is_exact() -> None:
    # 100 stderr lines of 100,005 bytes: a 5-byte prefix, then "é" (2 bytes) from an odd offset,
    # so the limit falls inside a character.
    code = "import sys\nfor i in range(100):\n    sys.stderr.write(f'{i:04d} ' + 'é' * 50000 + '\\n')\nsys.exit(1)"
    seen: list[tuple[str, str]] = []
    outcome = run_process(
        [sys.executable, "-c", code],
        timeout_seconds=30,
        on_line=lambda stream, line: seen.append((stream, line)),
        tail_lines=30,
    )
    assert outcome.exit_code == 1 and len(seen) == 100
    kept = 5 + (LIMIT - 5) // 2 * 2  # whole characters only: 65,535 bytes
    expected = [
        f"{i:04d} " + "é" * ((kept - 5) // 2) + f"… [{100_005 - kept:,} bytes cut]" for i in range(70, 100)
    ]
    assert outcome.stderr_tail == expected and outcome.tail == expected


@pytest.mark.unit
def test_nul_invalid_utf8_and_ansi_codes_on_either_stream_become_safe_lines(stubs) -> None:
    stubs.configure("raw", raw_stdout=b64(HOSTILE_OUT), raw_stderr=b64(HOSTILE_ERR))
    seen: list[tuple[str, str]] = []
    outcome = run_process(
        [*STUB, "raw"], timeout_seconds=30, on_line=lambda stream, line: seen.append((stream, line))
    )
    assert outcome.ok
    assert ("stdout", "rouge café \\xff nul\\x00 tab\tok") in seen
    assert ("stderr", "warn \\x00 \\xc3") in seen
    assert outcome.stderr_tail == ["warn \\x00 \\xc3"]


# A line as lists of pieces that make the cut interesting: multi-byte characters, \r, bytes that
# are not UTF-8, escape sequences, NUL.
PIECES = st.one_of(
    st.binary(max_size=6),
    st.sampled_from(
        ["é".encode(), "🎉".encode(), "中".encode(), b"\r", b"\xe2\x82", b"\xff", b"\x1b[31m", b"\x00"]
    ),
)
LINE = st.lists(PIECES, max_size=12).map(lambda pieces: b"".join(pieces).replace(b"\n", b""))


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=12), st.booleans(), st.integers(4, 40), st.data())
def test_lines_split_from_any_reads_are_each_cut_as_a_whole(
    lines: list[bytes], ends_with_newline: bool, limit: int, data: st.DataObject
) -> None:
    stream = b"\n".join(lines) + (b"\n" if ends_with_newline and lines else b"")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = LineSplitter(limit)
    out: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += splitter.feed(stream[start:end])
        assert len(splitter._part) <= limit  # never more than the limit held between reads
    if (last := splitter.close()) is not None:
        out.append(last)
    expected = [raw[:-1] if raw.endswith(b"\r") else raw for raw in stream.split(b"\n")]
    if stream.endswith(b"\n") or not stream:
        expected.pop()
    assert len(out) == len(expected)
    for raw, line in zip(expected, out, strict=True):
        if len(raw) <= limit:
            assert line == safe_text(raw)
            continue
        cut = CUT.fullmatch(line)
        assert cut, line
        dropped = int(cut[2].replace(",", ""))
        head = raw[: len(raw) - dropped]
        assert limit - 3 <= len(head) <= limit and cut[1] == safe_text(head)
        # no character cut in two: the head reads as the start of the whole line reads
        assert raw.decode("utf-8", "surrogateescape").startswith(head.decode("utf-8", "surrogateescape"))


# --- the run log: batches, a budget, a summary --------------------------------------------------
class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


class Progress:
    def __init__(self) -> None:
        self.reports: list[ProgressReport] = []

    def report(self, report: ProgressReport) -> None:
        self.reports.append(report)


def capture() -> tuple[logging.Logger, Records]:
    logger = logging.getLogger(f"test-output-{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Records()
    logger.addHandler(handler)
    return logger, handler


def output_logger(
    budget: LogBudget | None = None, clock: Any = time.monotonic
) -> tuple[OutputLogger, Records, Progress]:
    logger, records = capture()
    progress = Progress()
    return OutputLogger(logger, progress, budget, tail_lines=30, clock=clock), records, progress  # type: ignore[arg-type]


def default_budget() -> LogBudget:
    return LogBudget(200, 256 * 1024, 20_000, 8 * MB)


def sent_and_unsent(messages: list[str], is_output: Any) -> tuple[int, list[tuple[int, list[str]]]]:
    """Output lines sent as ordinary records, and the summaries (count, lines shown)."""
    sent, summaries = 0, []
    for message in messages:
        first, *rest = message.split("\n")
        if match := SUMMARY.fullmatch(first):
            assert len(rest) == int(match[2])
            summaries.append((int(match[1].replace(",", "")), rest))
        else:
            sent += sum(1 for line in message.split("\n") if is_output(line))
    return sent, summaries


def stub_line(script: str) -> Any:
    def is_output(line: str) -> bool:
        return line.startswith("flood line ") or line in (
            f"{script} starting with no flags",
            "PROGRESS 4/4",
            f"{script} done",
        )

    return is_output


@pytest.mark.unit
def test_a_flood_goes_to_the_log_within_its_budget_then_as_a_summary_with_the_exact_tail(stubs) -> None:
    stubs.configure("flood", flood={"lines": FLOOD}, raw_stdout=b64(b"PROGRESS 4/4\n"))
    output, records, progress = output_logger(default_budget())
    started = time.monotonic()
    try:
        outcome = run_process([*STUB, "flood"], timeout_seconds=60, on_line=output, on_idle=output.flush)
    finally:
        output.close()
    took = time.monotonic() - started
    assert outcome.ok and took < 10, took
    messages = [message for _, message in records.records]
    assert len(records.records) < 50  # lines joined into records, most of them not sent
    sent, summaries = sent_and_unsent(messages, stub_line("flood"))
    total = FLOOD + 3  # the start line, the flood, the progress line, the done line
    assert sent <= 2_000 + 200 * took + 1 and sent + sum(count for count, _ in summaries) == total
    assert summaries and summaries[-1][1] == [
        *(f"flood line {i}" for i in range(FLOOD - 28, FLOOD)),
        "PROGRESS 4/4",
        "flood done",
    ]
    assert [(r.processed, r.total) for r in progress.reports] == [(4, 4)]  # seen past the budget
    print(f"\n{FLOOD:,} lines handled in {took:.2f}s: {sent:,} sent in {len(messages)} records")


@pytest.mark.unit
def test_past_the_rate_lines_wait_for_a_summary_then_go_out_again() -> None:
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    output, records, _ = output_logger(
        LogBudget(20, 10**6, 10**6, 10**9, burst_seconds=1, clock=clock), clock
    )
    for i in range(100):
        output("stdout", f"line {i}")
    output.flush()
    assert [m for _, m in records.records] == ["\n".join(f"line {i}" for i in range(20))]
    now[0] = 4.0  # budget back, but lines go unsent at least LOG_SUMMARY_SECONDS
    output.flush()
    assert len(records.records) == 1
    now[0] = 6.0
    output.flush()
    level, summary = records.records[-1]
    assert level == logging.WARNING and summary.split("\n") == [
        "… 80 lines not sent to the run log (more than 20 lines/s or 1,000,000 per step); the last 30 are below",
        *(f"line {i}" for i in range(70, 100)),
    ]
    output("stderr", "after")
    output.close()
    assert records.records[-1] == (logging.WARNING, "after")


@pytest.mark.unit
def test_few_lines_are_one_record_each_many_are_joined_by_stream() -> None:
    output, records, _ = output_logger()
    output("stdout", "one")
    output("stdout", "two")
    output.flush()
    for i in range(50):
        output("stdout", f"out {i}")
    output("stderr", "err")
    output.flush()
    output("stdout", "x" * (MAX_LOG_LINE + 5))
    output.close()
    assert records.records == [
        (logging.INFO, "one"),
        (logging.INFO, "two"),
        (logging.INFO, "\n".join(f"out {i}" for i in range(50))),
        (logging.WARNING, "err"),
        (logging.INFO, safe_text("x" * (MAX_LOG_LINE + 5), MAX_LOG_LINE)),
    ]
    assert records.records[-1][1].endswith(" chars cut]") and len(records.records[-1][1]) <= MAX_LOG_LINE


@pytest.mark.unit
def test_a_spent_total_sends_nothing_more_and_the_few_unsent_lines_go_out_at_the_end() -> None:
    output, records, progress = output_logger(LogBudget(10**6, 10**9, 3, 10**9))
    for i in range(5):
        output("stdout", f"line {i}")
    output("stdout", "PROGRESS 1/2")
    output.close()
    # 3 unsent lines, all kept in the tail: nothing lost, so no summary, just the lines
    assert [m for _, m in records.records] == [
        "line 0",
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "PROGRESS 1/2",
    ]
    assert [(r.processed, r.total) for r in progress.reports] == [(1, 2)]


# --- real runs: Prefect server, PostgreSQL rows -------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _run_logs_sent_before_the_server_stops() -> Iterator[None]:
    """Prefect sends run logs in the background: the last ones go while the session's server
    still answers (else the interpreter's exit retries them against a stopped server for a
    minute)."""
    yield
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)


def ended_within(syncjobs, job_id: str, stubs, script: str, state: Any, seconds: float = 5.0) -> float:
    """How long after the script's own exit the row and the Prefect run ended; both within bound."""
    (end,) = [e["time"] for e in stubs.events(script, "end")]
    row = syncjobs.get(job_id)
    row_end = row["completedAt"].replace(tzinfo=UTC).timestamp() - end
    prefect_end = state.timestamp.timestamp() - end
    assert row_end < seconds and prefect_end < seconds, (row_end, prefect_end)
    return max(row_end, prefect_end)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_a_400000_line_flood_ends_its_run_seconds_after_the_script(syncjobs, stubs) -> None:
    from flows.sync_script import sync_script

    stubs.configure("gamma", flood={"lines": FLOOD}, raw_stdout=b64(b"PROGRESS 4/4\n"))
    insert_pending(syncjobs, "cflood0000000000000000001", "gamma")
    state = sync_script(script="gamma", job_id="cflood0000000000000000001", return_state=True)
    assert state.is_completed()
    row = syncjobs.get("cflood0000000000000000001")
    assert row["status"] == "COMPLETED" and (row["processed"], row["total"]) == (4, 4)
    late = ended_within(syncjobs, "cflood0000000000000000001", stubs, "gamma", state)
    flow_run_id = str(state.state_details.flow_run_id)

    def summarised() -> list[str]:
        messages = run_logs(flow_run_id)
        return messages if any(SUMMARY.match(m) for m in messages) else []

    messages = wait_for(summarised, timeout=30, what="the flood's summary in the run log")
    sent, summaries = sent_and_unsent(messages, stub_line("gamma"))
    assert sent + sum(count for count, _ in summaries) == FLOOD + 3
    assert summaries[-1][1][-3:] == [f"flood line {FLOOD - 1}", "PROGRESS 4/4", "gamma done"]
    print(f"\nflood: row and run ended {late:.2f}s after the script; {sent:,} lines sent")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_300_mb_line_in_a_run_keeps_memory_bounded_and_ends_the_row(syncjobs, stubs, stream: str) -> None:
    from flows.sync_script import sync_script

    failing = stream == "stderr"  # on stderr, with exit 1: the cut line is the error's last line
    stubs.configure("gamma", huge_line={"stream": stream, "bytes": HUGE}, fail_times=1 if failing else 0)
    job_id = f"chuge{stream}{'0' * (20 - len(stream))}"
    insert_pending(syncjobs, job_id, "gamma")
    before = reset_peak()  # this process reads the script's output: the run is in-process
    state = sync_script(script="gamma", job_id=job_id, return_state=True)
    grown = status("VmHWM") - before
    assert grown < 100 * MB, f"grew by {grown / MB:.0f} MB"
    row = syncjobs.get(job_id)
    late = ended_within(syncjobs, job_id, stubs, "gamma", state)
    if failing:
        assert state.is_failed() and row["status"] == "FAILED"
        # the stub's failure line ends the huge line: cut again for the error, it still says
        # how long it was
        cut = f"… [{HUGE + len('gamma failed on purpose') - LIMIT:,} bytes cut]"
        assert "exit code 1" in row["error"] and row["error"].endswith(cut)
        assert "exit code 1" in state.message and state.message.endswith(cut)
    else:
        assert state.is_completed() and row["status"] == "COMPLETED"
    print(f"\n300 MB line on {stream}: grew {grown / MB:.1f} MB, ended {late:.2f}s after the script")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_nul_in_the_last_stderr_line_with_exit_1_fails_the_row_on_postgresql(syncjobs, stubs) -> None:
    from flows.sync_script import sync_script

    stubs.configure("gamma", fail_times=1, stderr="TypeError: boom \x00 at fetch()")
    insert_pending(syncjobs, "cnulbyte00000000000000001", "gamma")
    state = sync_script(script="gamma", job_id="cnulbyte00000000000000001", return_state=True)
    assert state.is_failed()
    row = syncjobs.get("cnulbyte00000000000000001")
    assert row["status"] == "FAILED" and row["error"].endswith("TypeError: boom \\x00 at fetch()")
    assert row["error"].startswith("step gamma (gamma) failed on attempt 1/1: exit code 1")
    assert "TypeError: boom \\x00 at fetch()" in state.message and "\x00" not in state.message
    late = ended_within(syncjobs, "cnulbyte00000000000000001", stubs, "gamma", state)
    print(f"\nNUL in the last stderr line: row FAILED {late:.2f}s after the script")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_invalid_utf8_and_ansi_codes_reach_log_row_and_state_as_safe_text(syncjobs, stubs) -> None:
    from flows.sync_group import sync_group

    # the daily group goes on past its failed step b (broken), and records its error in `result`
    stubs.configure("broken", fail_times=99, raw_stdout=b64(HOSTILE_OUT), raw_stderr=b64(HOSTILE_ERR))
    state = sync_group(group="daily", return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    from deployments.syncjob import job_id_for_flow_run

    row = syncjobs.get(job_id_for_flow_run(flow_run_id))
    (failure,) = [s for s in row["result"]["steps"] if s["status"] == "failed"]
    assert failure["error"].endswith("warn \\x00 \\xc3\nbroken failed on purpose")
    messages = wait_for(
        lambda: (m := run_logs(flow_run_id)) and any("warn \\x00 \\xc3" in x for x in m) and m,
        what="the hostile lines in the run log",
    )
    assert any(m == "rouge café \\xff nul\\x00 tab\tok" for m in messages)
    assert not any("\x00" in m or "\x1b" in m for m in messages)
