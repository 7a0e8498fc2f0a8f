"""`GET /metrics`: what the shim counts, what its outbox holds, whether it reaches Prefect; no key
and nothing a client sent in it. A real shim (SQLite outbox) whose Prefect is unreachable, so
events wait and the dispatcher only probes."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.catalog import load_catalog
from deployments.settings import DEFAULT_CATALOG
from shim.settings import ShimSettings
from support.polling import wait_for
from support.ports import free_port
from support.shim import running_shim, sqlite_outbox

pytestmark = pytest.mark.unit

KEY = "metrics-secret-key-5d1f"


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(f"{url}/metrics", timeout=10)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happens_and_show_no_secret(tmp_path):
    settings = ShimSettings(
        event_keys=[KEY],
        prefect_api_url=f"http://127.0.0.1:{free_port()}/api",  # nothing listens: events wait
        probe_seconds=0.2,
    )
    hostile = "sync/\u202enope\nFORGED"
    with running_shim(
        settings, sqlite_outbox(tmp_path), run_dispatcher=True, catalog=load_catalog(DEFAULT_CATALOG)
    ) as (
        url,
        _app,
    ):
        send = f"{url}/e/{KEY}"
        assert (
            httpx.post(send, json=[{"name": "sync/press"}, {"name": "sync/press", "id": "once"}]).status_code
            == 200
        )
        assert httpx.post(send, json=[{"name": "sync/press", "id": "once"}]).status_code == 200  # duplicate
        assert (
            httpx.post(
                send, json=[{"name": hostile, "data": {"jobId": "cmetrics00000000000000001"}}]
            ).status_code
            == 200
        )
        assert (
            httpx.post(send, json=[{"name": "sync/sync-assemblee", "data": {"flags": "--rm"}}]).status_code
            == 200
        )
        assert httpx.post(send, content=b"{oops").status_code == 400
        assert httpx.post(f"{url}/e/wrong-key", json=[{"name": "sync/press"}]).status_code == 401
        wait_for(
            lambda: value(samples(url), "poligraph_shim_prefect_up") == 0,
            timeout=30,
            what="Prefect seen down",
        )
        wait_for(
            lambda: value(samples(url), "poligraph_shim_prefect_probes_total") >= 2, timeout=30, what="probes"
        )
        found = samples(url)
        text = httpx.get(f"{url}/metrics").text

    assert value(found, "poligraph_shim_events_total", outcome="accepted", reason="") == 2
    assert value(found, "poligraph_shim_events_total", outcome="duplicate", reason="") == 1
    assert value(found, "poligraph_shim_events_total", outcome="refused", reason="no_handler") == 1
    assert value(found, "poligraph_shim_events_total", outcome="refused", reason="bad_data") == 1
    assert value(found, "poligraph_shim_requests_refused_total", reason="bad_request") == 1
    assert value(found, "poligraph_shim_requests_refused_total", reason="unknown_key") == 1
    # the refused event with a jobId is pending too (its SyncJob is failed by the dispatcher,
    # which needs no Prefect for it); the two accepted ones wait for Prefect
    assert value(found, "poligraph_shim_outbox_pending_events") == 2
    assert value(found, "poligraph_shim_outbox_oldest_pending_age_seconds") > 0
    assert value(found, "poligraph_shim_outbox_up") == 1
    assert value(found, "poligraph_shim_dispatch_errors_total", kind="down") >= 1
    assert value(found, "poligraph_shim_dispatch_attempts_total", result="job_failed") == 1
    assert value(found, "process_resident_memory_bytes") > 0
    assert KEY not in text and "wrong-key" not in text and "FORGED" not in text and "nope" not in text


def test_metrics_say_when_the_outbox_is_down(tmp_path):
    import sqlalchemy as sa

    from shim.outbox import EventOutbox

    dead = EventOutbox(sa.create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"))
    with running_shim(ShimSettings(), dead) as (url, _app):
        found = samples(url)
    assert value(found, "poligraph_shim_outbox_up") == 0
    assert ("poligraph_shim_outbox_pending_events", ()) not in found
