"""Event -> action mapping: a router remembers the plans that passed, and answers as if it did not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.catalog import load_catalog
from deployments.settings import DEFAULT_CATALOG
from shim.mapping import FAIL_JOB, RUN, EventRouter, PlanCheck, map_event

pytestmark = pytest.mark.unit
CATALOG = load_catalog(DEFAULT_CATALOG)
JOB = "cjld2cjxh0000qzrmn831i7rn"


def test_a_request_that_passed_once_is_still_refused_with_other_flags():
    router = EventRouter(CATALOG)
    good = {"jobId": JOB, "flags": "--dry-run --limit=5"}
    bad = {"jobId": JOB, "flags": "--dry-run --limit=5 --nope"}
    for _ in range(2):
        assert router.map_events([("sync/sync-senat", good)])[0].action == RUN
        refused = router.map_events([("sync/sync-senat", bad)])[0]
        assert refused.action == FAIL_JOB and "--nope" in (refused.reason or "")


def test_a_group_limit_is_checked_per_value():
    router = EventRouter(CATALOG)
    assert router.map_events([("sync/press", {"limit": 3})])[0].action == RUN
    assert router.map_events([("sync/press", {"limit": 0, "jobId": JOB})])[0].action == FAIL_JOB


def test_the_remembered_plans_are_bounded():
    check = PlanCheck(CATALOG)
    for limit in range(1, PlanCheck.MAX_KEPT + 50):
        check("script", "sync-senat", None, limit)
    assert len(check._passed) <= PlanCheck.MAX_KEPT


EVENT_NAMES = st.sampled_from(["sync/press", "sync/sync-senat", "sync/sync-scrutins-an", "sync/nope"])
FLAG_WORDS = st.sampled_from(
    ["--dry-run", "--all", "--limit=2", "--leg=17", "--today", "--x", "-v", "--limit=0"]
)
DATA = st.fixed_dictionaries(
    {"jobId": st.just(JOB)},
    optional={
        "limit": st.one_of(st.integers(-2, 5), st.booleans(), st.text(max_size=3)),
        "flags": st.one_of(st.lists(FLAG_WORDS, max_size=4).map(" ".join), st.integers()),
        "all": st.one_of(st.booleans(), st.none(), st.integers(0, 3)),
        "dryRun": st.booleans(),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(EVENT_NAMES, DATA), min_size=1, max_size=12))
def test_a_router_answers_each_event_as_a_fresh_mapping_would(events):
    router = EventRouter(CATALOG)  # one router for the whole sequence: its memory at work
    for name, data in events:
        assert router.map_events([(name, data)]) == [map_event(CATALOG, name, data)]
