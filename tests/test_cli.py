"""The operator CLI's pure parts and its exit codes (the end-to-end runs are in test_local_stack)."""

from __future__ import annotations

import pytest
from conftest import insert_pending

from scripts.trigger import event_name, follow, parse_flags


@pytest.mark.parametrize(
    ("raw", "event"),
    [
        ("sync:press", "sync/press"),
        ("sync/press", "sync/press"),
        ("sync:daily", "sync/daily"),
        ("discover:affairs", "sync/discover-affairs"),
        ("generate:ai", "sync/generate-ai"),
        ("index:embeddings", "sync/index-embeddings"),
        ("sync-assemblee", "sync/sync-assemblee"),
    ],
)
def test_names_are_normalised_as_the_functions_listen(raw, event):
    assert event_name(raw) == event


def test_limit_is_taken_out_of_the_flags():
    assert parse_flags(["--limit=50", "--all"]) == (50, ["--all"])
    with pytest.raises(Exception, match="positive whole number"):
        parse_flags(["--limit=0"])


def test_follow_exits_1_on_failed_and_0_on_completed(store):
    insert_pending(store, "cfollowfailed000000000001", "sync-press")
    store.mark_failed("cfollowfailed000000000001", "step x failed")
    assert follow("cfollowfailed000000000001", poll_seconds=0.01) == 1
    insert_pending(store, "cfollowdone00000000000001", "sync-press")
    store.mark_completed("cfollowdone00000000000001", {})
    assert follow("cfollowdone00000000000001", poll_seconds=0.01) == 0
    assert follow("cnosuchjob000000000000001", poll_seconds=0.01) == 1
