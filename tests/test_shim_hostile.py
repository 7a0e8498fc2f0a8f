"""Whatever the bytes, the Event API answers 2xx or 4xx in the Inngest shape, and its outbox holds
exactly the events whose ids it acknowledged. Property-based (hypothesis) over real HTTP, on the
PostgreSQL outbox (integration) and the SQLite one (unit): arbitrary bytes, JSON built from the
classes that used to break it (NaN, 1e400, thousands of digits, lone surrogates, NUL, deep
nesting, invalid UTF-8, long ids), and arbitrary seed headers.
"""

from __future__ import annotations

import json
from collections import Counter
from hashlib import sha256
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shim.settings import ShimSettings
from shim.tables import inngest_event
from support.shim import postgres_outbox, running_shim, sqlite_outbox

BOUNDED = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", marks=pytest.mark.unit),
        pytest.param("postgresql", marks=pytest.mark.integration),
    ],
)
def shim(request, tmp_path_factory):
    """(client, outbox) of a shim in dev mode, its dispatcher off, on either outbox; shared by
    the module's tests, which look only at the rows their own requests added."""
    if request.param == "postgresql":
        outbox = postgres_outbox(request.getfixturevalue("pg_url"))
    else:
        outbox = sqlite_outbox(tmp_path_factory.mktemp("outbox"))
    with (
        running_shim(ShimSettings(), outbox) as (url, _app),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client, outbox


def send(shim, body: bytes, seed: bytes | None = None) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST the body; return the reply and the outbox rows it added."""
    client, outbox = shim
    with outbox.engine.connect() as conn:
        before = set(conn.execute(sa.select(inngest_event.c.pk)).scalars())
    headers = {"x-inngest-event-id-seed": seed} if seed is not None else {}
    reply = client.post("/e/NO_EVENT_KEY_SET", content=body, headers=headers)
    with outbox.engine.connect() as conn:
        added = conn.execute(sa.select(inngest_event).where(inngest_event.c.pk.not_in(before)))
        return reply, [dict(row) for row in added.mappings()]


def assert_acknowledged_exactly(reply: httpx.Response, added: list[dict[str, Any]]) -> dict[str, Any]:
    assert reply.status_code < 500, reply.text
    body = reply.json()
    assert body["status"] == reply.status_code
    if reply.status_code == 200:
        assert "error" not in body
        assert Counter(row["event_id"] for row in added) == Counter(body["ids"])
    else:
        assert body["ids"] == [] and isinstance(body["error"], str) and body["error"]
        assert added == [], "a refused request stored events"
    return body


# --- strategies ---------------------------------------------------------------------------------
NASTY = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"9" * 5000,
    b"-" + b"9" * 400,
    b"9" * 300,
    b'"\\ud800"',
    b'"x\\udc00y"',
    b'"\\ud83d\\ude00"',
    b'"\\u0000"',
    b'"\x00"',
    b'"\xff\xfe"',
    b'"\xed\xa0\x80"',
    b'"\\u202e\\n\\r"',
    b'"' + b"x" * 3000 + b'"',
    b"[" * 511 + b"]" * 511,
    b"[" * 600 + b"]" * 600,
    b"[" * 900 + b"]" * 900,
    b"[" * 960 + b"]" * 960,
    b"[" * 3000,
    b"{" * 100000,
]
KEYS = [
    b'"name"',
    b'"data"',
    b'"id"',
    b'"ts"',
    b'"v"',
    b'"user"',
    b'"meta"',
    b'"jobId"',
    b'"flags"',
    b'"limit"',
]
NAMES = [b'"sync/press"', b'"sync/sync-assemblee"', b'"sync/daily"', b'"inngest/x"', b'""', b'"a\\u0000b"']

json_strings = st.text(max_size=12).map(lambda s: json.dumps(s).encode())
leaves = st.one_of(
    st.sampled_from(NASTY),
    st.sampled_from([b"null", b"true", b"false", b"0", b"-1.5e3", b"1700000000000"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda i: str(i).encode()),
    json_strings,
    st.binary(max_size=6).map(lambda raw: b'"' + raw.replace(b'"', b"") + b'"'),
)


def _object(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(key + b":" + value for key, value in pairs) + b"}"


json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: b"[" + b",".join(items) + b"]"),
        st.lists(st.tuples(st.sampled_from(KEYS) | json_strings, inner), max_size=4).map(_object),
    ),
    max_leaves=12,
)
events = st.lists(
    st.tuples(st.sampled_from(KEYS), json_values) | st.tuples(st.just(b'"name"'), st.sampled_from(NAMES)),
    max_size=6,
).map(_object)
bodies = st.one_of(
    events,
    st.lists(events | json_values, max_size=5).map(lambda items: b"[" + b",".join(items) + b"]"),
    json_values,
)
# Header values as h11 lets them through: no CR, LF or NUL.
header_bytes = st.binary(max_size=40).map(lambda raw: raw.translate(None, b"\r\n\x00").strip(b" \t"))
seeds = st.one_of(
    st.none(),
    st.just(b"1767225600000,MDEyMzQ1Njc4OQ=="),
    st.just(b"9" * 5000 + b",MDEyMzQ1Njc4OQ=="),
    st.just(b"-1,MDEyMzQ1Njc4OQ=="),
    st.just(b"281474976710656,MDEyMzQ1Njc4OQ=="),  # past ULID time: a random id
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda i: b"%d,MDEyMzQ1Njc4OQ==" % i),
    header_bytes,
)


# --- properties ---------------------------------------------------------------------------------
@BOUNDED
@given(body=st.binary(max_size=400), seed=seeds)
@example(body=b"\xff" * 10, seed=None)
@example(body=b"[" * 100000, seed=None)
def test_arbitrary_bytes_never_get_a_5xx(shim, body, seed):
    assert_acknowledged_exactly(*send(shim, body, seed))


@BOUNDED
@given(body=bodies, seed=seeds)
@example(body=b'[{"name":"sync/press","data":{"x":NaN}}]', seed=None)
@example(body=b'[{"name":"sync/press","data":{"x":' + b"9" * 5000 + b"}}]", seed=None)
@example(body=b'[{"name":"sync/press","id":"' + b"k" * 5000 + b'"}]', seed=None)
def test_arbitrary_json_never_gets_a_5xx_and_stores_what_it_acknowledges(shim, body, seed):
    assert_acknowledged_exactly(*send(shim, body, seed))


# Text as the SDKs may send it, lone surrogates included (json.dumps escapes them as \ud800).
texts = st.text(
    alphabet=st.characters() | st.sampled_from(["\x00", "\n", "\ud800", "\udc00", "\u202e", "😀"]),
    max_size=20,
)
data_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
valid_shaped = st.fixed_dictionaries(
    {
        "name": texts | st.sampled_from(["sync/press", "sync/sync-assemblee"]),
        "data": st.dictionaries(texts, data_values, max_size=4),
    },
    optional={
        "id": texts | st.text(min_size=190, max_size=260),
        "v": texts,
        "user": st.dictionaries(texts, data_values, max_size=2),
    },
)


def as_go_reads_it(value: Any) -> Any:
    """What the server decodes: surrogate pairs joined, each lone surrogate U+FFFD (written
    independently of the shim: through UTF-16)."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, list):
        return [as_go_reads_it(item) for item in value]
    if isinstance(value, dict):
        return {as_go_reads_it(key): as_go_reads_it(item) for key, item in value.items()}
    return value


@BOUNDED
@given(batch=st.lists(valid_shaped, min_size=1, max_size=4))
@example(batch=[{"name": "sync/press", "data": {"k\x00": "\ud800\x00"}, "id": "\x00" * 300}])
def test_accepted_events_are_stored_as_the_server_reads_them(shim, batch):
    reply, added = send(shim, json.dumps(batch).encode())
    body = assert_acknowledged_exactly(reply, added)
    read = [as_go_reads_it(event) for event in batch]
    if any("\x00" in event["name"] for event in read if event["name"]):
        assert body["error"] == "event name contains a NUL character" or not all(e["name"] for e in read)
        return
    if not all(event["name"] for event in read) or any(
        e["name"].lower().startswith("inngest/") for e in read
    ):
        assert reply.status_code == 400
        return
    assert reply.status_code == 200
    rows = {row["event_id"]: row for row in added}
    for event_id, event in zip(body["ids"], read, strict=True):
        row = rows[event_id]
        stored = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        event["data"].pop("_inngest", None)
        assert row["name"] == stored["name"] == event["name"]
        assert stored["data"] == event["data"]
        assert stored.get("user") == event.get("user") and stored.get("v") == (event.get("v") or None)
        if event.get("id"):
            assert stored["id"] == event["id"] and row["user_id"] == event["id"].replace("\x00", "\ufffd")
            plain = len(event["id"]) <= 200 and "\x00" not in event["id"]
            assert row["dedupe_key"] == event["id"] if plain else row["dedupe_key"].startswith("sha256:")


# --- the classes that used to get a 500, with their exact replies ------------------------------
@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'[{"name":"sync/press","data":{"x":NaN}}]', "invalid character 'N' looking for beginning of value"),
        (
            b'[{"name":"sync/press","data":{"x":Infinity}}]',
            "invalid character 'I' looking for beginning of value",
        ),
        (b'[{"name":"sync/press","data":{"x":-Infinity}}]', "invalid character 'I' in numeric literal"),
        (
            b'[{"name":"sync/press","data":{"x":1e400}}]',
            "json: cannot unmarshal number 1e400 into Go value of type float64",
        ),
        (
            b'[{"name":"sync/press","data":{"x":' + b"1" * 5000 + b"}}]",
            f"json: cannot unmarshal number {'1' * 40}… into Go value of type float64",
        ),
        (b'[{"name":"sync/press\\u0000"}]', "event name contains a NUL character"),
        (b"[" * 100000, "exceeded max depth: JSON nested more than 512 levels deep"),
        (
            b'[{"name":"a","data":' + b"[" * 512 + b"]" * 512 + b"}]",
            "exceeded max depth: JSON nested more than 512 levels deep",
        ),
        (
            b'[{"name":"a","user":"x"}]',
            "json: cannot unmarshal string into Go struct field Event.user of type map[string]interface {}",
        ),
        (b'[{"name":"a"},', "unexpected end of JSON input"),
        (b'{"name":"a"} {}', "invalid character '{' after top-level value"),
    ],
)
def test_what_used_to_be_a_500_is_a_400_with_the_servers_words(shim, body, error):
    reply, added = send(shim, body)
    assert (reply.status_code, reply.json(), added) == (400, {"ids": [], "status": 400, "error": error}, [])


def test_lone_surrogates_and_invalid_utf8_become_replacement_characters(shim):
    body = b'[{"name":"sync/\xffx","data":{"k\\ud800":"\\udc00\\ud83d\\ude00\xed\xa0\x80"}}]'
    reply, (row,) = send(shim, body)
    assert reply.status_code == 200
    assert row["name"] == "sync/\ufffdx"
    assert row["payload"]["data"] == {"k\ufffd": "\ufffd😀\ufffd\ufffd\ufffd"}


def test_nesting_up_to_the_limit_is_stored(shim):
    nested = b"[" * 511 + b"]" * 511  # the event object is level 1
    reply, (row,) = send(shim, b'[{"name":"a","data":{"x":' + nested[1:-1] + b"}}]")
    assert reply.status_code == 200
    depth, value = 0, row["payload"]["data"]["x"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    assert depth == 510


def test_no_nesting_depth_gets_a_5xx(shim):
    """Around the limit, and where Python's own recursion limit used to bite (parsing or
    serialising again for the database, depending on the stack at that point)."""
    for depth in [*range(505, 520), *range(900, 1030)]:
        reply, added = send(shim, b'[{"name":"a","data":{"x":' + b"[" * depth + b"]" * depth + b"}}]")
        assert (reply.status_code, len(added)) == ((200, 1) if depth <= 510 else (400, 0)), depth


def test_long_and_nul_ids_are_stored_and_still_deduplicated(shim):
    for user_id in ["k" * 100_000, "a\u0000b"]:
        body = json.dumps([{"name": "sync/press", "id": user_id}]).encode()
        (first, (row1,)), (second, (row2,)) = send(shim, body), send(shim, body)
        assert first.status_code == second.status_code == 200
        assert (row1["status"], row2["status"]) == ("pending", "duplicate")
        assert row1["dedupe_key"] == row2["dedupe_key"] == f"sha256:{sha256(user_id.encode()).hexdigest()}"


@pytest.mark.parametrize(
    "seed",
    [b"9" * 5000 + b",MDEyMzQ1Njc4OQ==", b"1,\xff\xfe\xfd", b"12," + b"A" * 3000, b"\xff,\xff", b"1e400,x"],
)
def test_an_invalid_seed_means_a_random_id(shim, seed):
    reply, (row,) = send(shim, b'[{"name":"sync/press"}]', seed)
    assert reply.status_code == 200 and reply.json()["ids"] == [row["event_id"]]
    assert len(row["event_id"]) == 26


def test_an_implausible_job_id_touches_no_row(shim):
    for job_id in ["", "x" * 65, 'c1\'; DELETE FROM "SyncJob"; --', "c1\u0000", "../c1"]:
        reply, (row,) = send(shim, json.dumps([{"name": "sync/press", "data": {"jobId": job_id}}]).encode())
        assert reply.status_code == 200
        assert row["action"] == "nothing" and row["job_id"] is None
        assert row["reason"].startswith("jobId must be a SyncJob id (1 to 64 characters of A-Z a-z 0-9 _ -)")
