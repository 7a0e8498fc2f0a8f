"""The Event API over real HTTP, with the real `inngest` Python SDK as its client.

The dispatcher is off here: these tests look at what was accepted and stored.
"""

from __future__ import annotations

import base64
import json

import httpx
import inngest
import pytest
from inngest._internal.errors import SendEventsError  # the SDK does not re-export it

from shim.ids import event_ids, parse_seed, seeded_id
from shim.settings import ShimSettings
from support.shim import dev_client, key_client, running_shim, sqlite_outbox

pytestmark = pytest.mark.unit

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference_ulid(millis: int, entropy: bytes) -> str:
    """ULID by the spec, written independently of shim.ids: 128 bits, 26 Crockford chars."""
    number = (millis << 80) | int.from_bytes(entropy, "big")
    return "".join(CROCKFORD[(number >> (5 * i)) & 31] for i in range(25, -1, -1))


def seed_header(millis: int, entropy: bytes) -> str:
    return f"{millis},{base64.b64encode(entropy).decode()}"


@pytest.fixture
def dev_shim(tmp_path):
    outbox = sqlite_outbox(tmp_path)
    with running_shim(ShimSettings(), outbox) as (url, _app):
        yield url, outbox


# --- ids ----------------------------------------------------------------------------------------
def test_seeded_ids_follow_the_inngest_server_rules():
    entropy = bytes(range(10))
    header = seed_header(1743130137367, entropy)
    expected = []
    for index in (1, 2, 3):  # 1-based; bytes 6-9 as big-endian uint32 plus the index
        counter = int.from_bytes(entropy[6:10], "big") + index
        expected.append(reference_ulid(1743130137367, entropy[:6] + counter.to_bytes(4, "big")))
    assert event_ids(header, 3) == expected
    assert expected[0] == "01JQDAE4RQ000G40R40M30E20A"


def test_seeded_id_counter_wraps_without_carry():
    entropy = bytes([9, 9, 9, 9, 9, 9, 0xFF, 0xFF, 0xFF, 0xFF])
    got = seeded_id(parse_seed(seed_header(1700000000000, entropy)), 1)
    assert got == reference_ulid(1700000000000, bytes([9, 9, 9, 9, 9, 9, 0, 0, 0, 0]))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "abc",
        "0,AAAAAAAAAAAAAA==",
        "-5,AAAAAAAAAAAAAA==",
        "12,AAAA",
        "12,not base64!",
        "12,AAAAAAAAAAAAAA==,x",
        "1_000,AAAAAAAAAAAAAA==",
    ],
)
def test_invalid_seeds_give_random_ulids(header):
    assert parse_seed(header) is None
    first, second = event_ids(header, 1), event_ids(header, 1)
    assert len(first[0]) == 26 and first != second


# --- the SDK against the shim -------------------------------------------------------------------
def test_sdk_single_and_batch_sends_are_stored_in_order(dev_shim):
    url, outbox = dev_shim
    client = dev_client(url)
    (single,) = client.send_sync(inngest.Event(name="sync/press", data={"jobId": "cjob1"}))
    batch = client.send_sync(
        [inngest.Event(name="sync/sync-assemblee"), inngest.Event(name="sync/daily", id="user-1")]
    )
    assert len(single) == 26 and len(batch) == 2 and len(set(batch)) == 2
    rows = {row["event_id"]: row for row in outbox.events()}
    assert rows[single]["deployment"] == "sync-group/press"
    assert rows[single]["parameters"] == {"job_id": "cjob1"} and rows[single]["status"] == "pending"
    assert rows[batch[0]]["deployment"] == "sync-script/sync-assemblee"
    assert rows[batch[1]]["deployment"] == "sync-group/sync-daily"
    assert rows[batch[1]]["user_id"] == "user-1" and rows[batch[1]]["dedupe_key"] == "user-1"


def test_sync_daily_alias_reaches_the_daily_group(dev_shim):
    url, outbox = dev_shim
    (event_id,) = dev_client(url).send_sync(inngest.Event(name="sync/sync-daily", data={"jobId": "c2"}))
    (row,) = [r for r in outbox.events() if r["event_id"] == event_id]
    assert row["deployment"] == "sync-group/sync-daily" and row["parameters"] == {"job_id": "c2"}


def test_same_seed_twice_returns_the_same_ids_and_one_pending_event_each(dev_shim):
    url, outbox = dev_shim
    body = [{"name": "sync/press", "data": {}}, {"name": "sync/votes", "data": {}}]
    headers = {"x-inngest-event-id-seed": seed_header(1767225600000, b"0123456789")}
    first = httpx.post(f"{url}/e/NO_EVENT_KEY_SET", json=body, headers=headers).json()
    second = httpx.post(f"{url}/e/NO_EVENT_KEY_SET", json=body, headers=headers).json()
    assert first == second and first["status"] == 200 and len(first["ids"]) == 2
    statuses = sorted(r["status"] for r in outbox.events())
    assert statuses == ["duplicate", "duplicate", "pending", "pending"]


def test_same_user_id_within_24h_is_recorded_but_starts_nothing(dev_shim):
    url, outbox = dev_shim
    client = dev_client(url)
    client.send_sync(inngest.Event(name="sync/press", id="order-7"))
    client.send_sync(inngest.Event(name="sync/press", id="order-7"))
    assert [r["status"] for r in outbox.events()] == ["pending", "duplicate"]


def test_key_mode_accepts_configured_keys_only(tmp_path):
    outbox = sqlite_outbox(tmp_path)
    settings = ShimSettings(event_keys="k-one,k-two")
    with running_shim(settings, outbox) as (url, _app):
        assert key_client(url, "k-two").send_sync(inngest.Event(name="sync/press"))
        with pytest.raises(SendEventsError, match="Event key not found"):
            key_client(url, "wrong").send_sync(inngest.Event(name="sync/press"))
        with pytest.raises(SendEventsError, match="Event key not found"):
            dev_client(url).send_sync(inngest.Event(name="sync/press"))
        response = httpx.post(f"{url}/e/wrong", json=[{"name": "sync/press"}])
        assert response.status_code == 401
        assert response.json() == {"status": 401, "message": "", "error": "Event key not found"}
        assert response.headers["x-inngest-server-kind"] == "cloud"
    assert len(outbox.events()) == 1


def test_dev_mode_is_refused_off_loopback_unless_forced():
    with pytest.raises(ValueError, match="loopback"):
        ShimSettings(host="0.0.0.0").check()
    ShimSettings(host="0.0.0.0", event_keys="k").check()
    ShimSettings(host="0.0.0.0", allow_dev_off_loopback=True).check()
    ShimSettings(host="::1").check()


def test_health_and_dev_probe(dev_shim):
    url, _outbox = dev_shim
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json() == {"status": 200, "message": "OK"}
    assert health.headers["x-inngest-server-kind"] == "dev"
    assert isinstance(httpx.get(f"{url}/dev").json(), dict)


def test_single_object_body_and_empty_body(dev_shim):
    url, outbox = dev_shim
    one = httpx.post(f"{url}/e/any-key", content=b'{"name":"sync/press","data":null}').json()
    assert one["status"] == 200 and len(one["ids"]) == 1 and "error" not in one
    assert httpx.post(f"{url}/e/any-key", content=b"").json() == {"ids": [], "status": 200}
    assert outbox.events()[0]["payload"]["data"] == {}


# --- validation: exact bodies, nothing stored ---------------------------------------------------
BIG = "x" * (3 * 1024 * 1024)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([{"name": ""}], "event name is empty"),
        ([{"data": {}}], "event name is empty"),
        (
            [{"name": "inngest/function.failed"}],
            "event name is reserved for internal use: inngest/function.failed",
        ),
        ([{"name": "INNGEST/x"}], "event name is reserved for internal use: INNGEST/x"),
        ([{"name": "sync/press", "ts": 1700000000}], "timestamp is before Jan 1, 1980"),
        ([{"name": "sync/press", "ts": 4102444800001}], "timestamp is after Jan 1, 2100"),
        (
            [{"name": "sync/press", "data": [1]}],
            "json: cannot unmarshal array into Go struct field Event.data of type map[string]interface {}",
        ),
        (
            [{"name": "sync/press", "data": "x"}],
            "json: cannot unmarshal string into Go struct field Event.data of type map[string]interface {}",
        ),
        ([{"name": 5}], "json: cannot unmarshal number into Go struct field Event.name of type string"),
        (
            [{"name": "sync/press", "ts": 1.5}],
            "json: cannot unmarshal number 1.5 into Go struct field Event.ts of type int64",
        ),
        (
            [{"name": "sync/press", "id": 7}],
            "json: cannot unmarshal number into Go struct field Event.id of type string",
        ),
        ([{"name": "sync/press"}] * 5001, "Cannot have more than 5000 events in a batch"),
        (
            [{"name": "sync/press", "data": {"blob": BIG}}],
            f"Event is over the max size: Max 3145728 bytes / Size {len(BIG) + 40} bytes",
        ),
        ("just text", "Request body must contain an event object or an array of event objects"),
        ([{"name": "sync/press"}, {"name": ""}], "event name is empty"),
    ],
)
def test_bad_events_get_the_servers_error_and_change_nothing(dev_shim, body, error):
    url, outbox = dev_shim
    content = body.encode() if isinstance(body, str) else json.dumps(body, separators=(",", ":")).encode()
    response = httpx.post(f"{url}/e/NO_EVENT_KEY_SET", content=content, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"ids": [], "status": 400, "error": error}
    assert outbox.events() == []


def test_sdk_raises_the_servers_error_text(dev_shim):
    url, outbox = dev_shim
    with pytest.raises(SendEventsError, match="^event name is empty$"):
        dev_client(url).send_sync(inngest.Event(name=""))
    assert outbox.events() == []


def test_oversized_single_object_is_refused(dev_shim):
    url, _outbox = dev_shim
    content = json.dumps({"name": "sync/press", "data": {"blob": BIG}}).encode()
    body = httpx.post(f"{url}/e/k", content=content, timeout=30).json()
    assert body["status"] == 400 and body["error"].startswith("Event is over the max size: Max 3145728")


# --- mapping: what each event will do -----------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "data", "action", "expected"),
    [
        ("sync/press", {"jobId": "c1", "limit": 5}, "run", {"job_id": "c1", "limit": 5}),
        ("sync/sync-scrutins-senat", {"flags": "--all --limit=5"}, "run", {"flags": ["--all", "--limit=5"]}),
        ("sync/index-embeddings", {}, "run", {}),
        (
            "sync/sync-careers",
            {"foundersOnly": True, "limit": 3},
            "run",
            {"flags": ["--founders-only"], "limit": 3},
        ),
        (
            "sync/sync-assemblee",
            {"jobId": "c3", "flags": "--bogus"},
            "fail_job",
            "sync/sync-assemblee: --bogus is not allowed for sync-assemblee",
        ),
        (
            "sync/sync-assemblee",
            {"jobId": "c4", "flags": "--limit=5;rm"},
            "fail_job",
            "--limit must be a whole number",
        ),
        (
            "sync/sync-assemblee",
            {"jobId": "c5", "limit": "ten"},
            "fail_job",
            "limit must be a positive whole number",
        ),
        ("sync/press", {"jobId": "c6", "flags": "--all"}, "fail_job", "a group takes no flags"),
        ("sync/sync-assemblee", {"jobId": "c7", "script": "x"}, "fail_job", "unknown key 'script'"),
        ("sync/nothing-here", {"jobId": "c8"}, "fail_job", "no flow handles sync/nothing-here"),
        ("discover/affairs", {}, "nothing", "no flow handles discover/affairs"),
    ],
)
def test_event_data_becomes_parameters_or_a_reason(dev_shim, name, data, action, expected):
    url, outbox = dev_shim
    dev_client(url).send_sync(inngest.Event(name=name, data=data))
    (row,) = outbox.events()
    assert row["action"] == action
    if action == "run":
        assert row["parameters"] == expected and row["status"] == "pending"
    else:
        assert expected in row["reason"] and row["parameters"] is None
        assert row["status"] == ("pending" if action == "fail_job" else "done")


def test_a_repeated_id_starts_a_run_again_once_its_24_hours_are_over(dev_shim):
    import sqlalchemy as sa

    from shim.tables import inngest_dedupe

    url, outbox = dev_shim
    client = dev_client(url)
    client.send_sync(inngest.Event(name="sync/press", id="weekly"))
    with outbox.engine.begin() as conn:  # a day later
        conn.execute(sa.update(inngest_dedupe).values(expires_at=sa.func.datetime("now", "-1 minute")))
    client.send_sync(inngest.Event(name="sync/press", id="weekly"))
    client.send_sync(inngest.Event(name="sync/press", id="weekly"))
    assert [r["status"] for r in outbox.events()] == ["pending", "pending", "duplicate"]


def test_migrations_build_exactly_the_tables_the_code_uses(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shim.tables import metadata

    outbox = sqlite_outbox(tmp_path)
    with outbox.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []
