"""The real catalog: every event the app sends has one handler, groups and plans are as specified."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from deployments.catalog import Catalog, UnknownTarget, load_catalog
from deployments.flags import FlagError
from deployments.plans import plan_group, plan_script
from deployments.prefect_yaml import PREFECT_YAML, render
from deployments.settings import DEFAULT_CATALOG, PACKAGE_ROOT
from deployments.specs import GROUP_FLOW, SCRIPT_FLOW, deployment_specs, spec_for_event

pytestmark = pytest.mark.unit


# The admin page's SCRIPT_CATALOG: each id sends sync/<id>.
ADMIN_IDS = [
    "sync-assemblee",
    "sync-senat",
    "sync-gouvernement",
    "sync-president",
    "sync-europarl",
    "sync-wikidata-ids",
    "sync-photos",
    "sync-birthdates",
    "sync-careers",
    "sync-partis",
    "sync-mep-parties",
    "sync-hatvp",
    "sync-deceased",
    "sync-scrutins-an",
    "sync-scrutins-senat",
    "sync-legislation",
    "sync-legislation-content",
    "sync-press",
    "sync-press-analysis",
    "sync-factchecks",
    "sync-judilibre",
    "classify-themes",
    "index-embeddings",
    "reindex-measures-search",
    "recalculate-prominence",
    "assign-publication-status",
    "reconcile-affairs",
    "compute-municipales-snapshots",
]
OPENSANCTIONS_IDS = ["sync-opensanctions", "sync-opensanctions-incremental"]

GROUP_STEPS = {
    "press": ["sync-press", "sync-press-analysis"],
    "votes": ["sync-scrutins-an", "sync-scrutins-senat"],
    "legislation": ["sync-legislation", "sync-legislation-content"],
    "discover-affairs": ["discover-affairs", "reconcile-affairs"],
    "factchecks": ["sync-factchecks", "sync-judilibre"],
    "generate-ai": [
        "generate-biographies",
        "generate-summaries",
        "generate-scrutin-summaries",
        "classify-themes",
    ],
    "index-embeddings": ["index-embeddings"],
    "politicians": ["sync-assemblee", "sync-senat", "sync-gouvernement", "sync-europarl", "sync-photos"],
    "maintenance": ["recalculate-prominence", "assign-publication-status"],
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG)


def raw_catalog() -> dict[str, Any]:
    with DEFAULT_CATALOG.open(encoding="utf-8") as handle:
        return copy.deepcopy(yaml.safe_load(handle))


# --- events ----------------------------------------------------------------------------------


def test_admin_list_has_28_distinct_ids() -> None:
    assert len(ADMIN_IDS) == 28
    assert len(set(ADMIN_IDS)) == 28


@pytest.mark.parametrize("script_id", ADMIN_IDS + OPENSANCTIONS_IDS)
def test_every_app_event_has_a_handler(catalog: Catalog, script_id: str) -> None:
    targets = catalog.event_targets()
    assert f"sync/{script_id}" in targets, f"no handler for sync/{script_id}"


def test_catalog_admin_scripts_are_exactly_the_admin_page(catalog: Catalog) -> None:
    assert sorted(s.id for s in catalog.scripts if s.admin) == sorted(ADMIN_IDS)


@pytest.mark.parametrize("script_id", OPENSANCTIONS_IDS)
def test_opensanctions_get_one_script_deployments(catalog: Catalog, script_id: str) -> None:
    assert catalog.event_targets()[f"sync/{script_id}"] == ("script", script_id)
    spec = spec_for_event(catalog, f"sync/{script_id}")
    assert spec is not None
    assert spec.full_name == f"{SCRIPT_FLOW}/{script_id}"
    assert spec.parameters == {"script": script_id}


def test_index_embeddings_event_goes_to_its_group(catalog: Catalog) -> None:
    assert catalog.event_targets()["sync/index-embeddings"] == ("group", "index-embeddings")


@pytest.mark.parametrize("event", ["sync/daily", "sync/sync-daily"])
def test_daily_events_go_to_the_daily_group(catalog: Catalog, event: str) -> None:
    assert catalog.event_targets()[event] == ("group", "sync-daily")
    spec = spec_for_event(catalog, event)
    assert spec is not None
    assert spec.full_name == f"{GROUP_FLOW}/sync-daily"


def test_unknown_event_has_no_spec(catalog: Catalog) -> None:
    assert spec_for_event(catalog, "sync/nope") is None
    assert "sync/nope" not in catalog.event_targets()


# --- groups ----------------------------------------------------------------------------------


def test_daily_group(catalog: Catalog) -> None:
    daily = catalog.group("sync-daily")
    assert len(daily.steps) == 16
    assert daily.continue_on_failure is True
    assert [(s.cron, s.timezone) for s in daily.schedules] == [("0 5,11,19 * * *", "UTC")]
    plan = plan_group(catalog, "sync-daily")
    assert len(plan.steps) == 16
    assert plan.continue_on_failure is True
    assert plan.job_script == "sync-daily"
    assert all(step.timeout_seconds == 600 for step in plan.steps)
    # only the steps marked required fail a continue_on_failure run
    assert {s.name for s in plan.steps if s.required} == {"votes-an", "press-analysis"}


def test_daily_spec_carries_its_schedule(catalog: Catalog) -> None:
    spec = next(s for s in deployment_specs(catalog) if s.name == "sync-daily")
    assert [(s.cron, s.timezone) for s in spec.schedules] == [("0 5,11,19 * * *", "UTC")]


@pytest.mark.parametrize(("group", "scripts"), GROUP_STEPS.items())
def test_group_steps_in_order(catalog: Catalog, group: str, scripts: list[str]) -> None:
    assert [step.script for step in catalog.group(group).steps] == scripts
    assert [step.script for step in plan_group(catalog, group).steps] == scripts


def test_press_default_limit(catalog: Catalog) -> None:
    plan = plan_group(catalog, "press")
    assert [s.name for s in plan.steps] == ["parse-rss", "ai-analysis"]
    assert plan.steps[0].flags == ()
    assert plan.steps[1].flags == ("--limit=100",)


def test_press_run_limit_replaces_default(catalog: Catalog) -> None:
    plan = plan_group(catalog, "press", limit=7)
    assert plan.steps[0].flags == ()
    assert plan.steps[1].flags == ("--limit=7",)


def test_press_bad_limit_refused(catalog: Catalog) -> None:
    with pytest.raises(FlagError):
        plan_group(catalog, "press", limit=0)
    with pytest.raises(FlagError):
        plan_group(catalog, "press", limit=-3)


def test_group_without_limit_step_refuses_limit(catalog: Catalog) -> None:
    with pytest.raises(FlagError, match="votes"):
        plan_group(catalog, "votes", limit=5)


def test_press_timeouts(catalog: Catalog) -> None:
    plan = plan_group(catalog, "press")
    assert [s.timeout_seconds for s in plan.steps] == [300, 600]


def test_unknown_group_raises(catalog: Catalog) -> None:
    with pytest.raises(UnknownTarget):
        plan_group(catalog, "nope")


def test_non_daily_groups_stop_on_failure(catalog: Catalog) -> None:
    for group in GROUP_STEPS:
        plan = plan_group(catalog, group)
        assert plan.continue_on_failure is False
        assert all(step.required for step in plan.steps), group


# --- single scripts --------------------------------------------------------------------------


def test_plan_script_default_flags(catalog: Catalog) -> None:
    plan = plan_script(catalog, "sync-scrutins-an")
    assert plan.job_script == "sync-scrutins-an"
    assert len(plan.steps) == 1
    step = plan.steps[0]
    assert step.script == "sync-scrutins-an"
    assert step.flags == ("--today",)
    assert step.required is True
    assert step.timeout_seconds == 600


def test_plan_script_explicit_flags_replace_defaults(catalog: Catalog) -> None:
    assert plan_script(catalog, "sync-scrutins-an", flags=["--all"]).steps[0].flags == ("--all",)
    assert plan_script(catalog, "sync-scrutins-an", flags=[]).steps[0].flags == ()


def test_plan_script_limit(catalog: Catalog) -> None:
    assert plan_script(catalog, "sync-scrutins-an", limit=3).steps[0].flags == ("--today", "--limit=3")
    # a default --limit is replaced, not duplicated
    assert plan_script(catalog, "sync-legislation-content", limit=5).steps[0].flags == ("--limit=5",)
    assert plan_script(catalog, "sync-press", flags=["--limit=9"], limit=4).steps[0].flags == ("--limit=4",)


def test_plan_script_disabled_is_carried(catalog: Catalog) -> None:
    assert plan_script(catalog, "sync-judilibre").steps[0].disabled
    assert plan_script(catalog, "sync-press").steps[0].disabled is None


def test_plan_script_unknown_raises(catalog: Catalog) -> None:
    with pytest.raises(UnknownTarget, match="no-such-script"):
        plan_script(catalog, "no-such-script")


# --- deployments -----------------------------------------------------------------------------


def test_deployment_specs(catalog: Catalog) -> None:
    specs = deployment_specs(catalog)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    script_names = sorted(s.name for s in specs if s.flow == SCRIPT_FLOW)
    group_names = sorted(s.name for s in specs if s.flow == GROUP_FLOW)
    assert script_names == sorted(s.id for s in catalog.standalone_scripts)
    assert group_names == sorted([*GROUP_STEPS, "sync-daily"])
    assert len(specs) == len(catalog.standalone_scripts) + len(catalog.groups)
    by_name = {s.name: s for s in specs}
    assert by_name["press"].full_name == "sync-group/press"
    assert by_name["sync-assemblee"].full_name == "sync-script/sync-assemblee"
    assert "index-embeddings" in group_names and "index-embeddings" not in script_names


def test_every_event_maps_to_exactly_one_spec(catalog: Catalog) -> None:
    specs = deployment_specs(catalog)
    for event, (kind, name) in catalog.event_targets().items():
        owners = [s for s in specs if event in s.events]
        assert len(owners) == 1, event
        assert owners[0].flow == (SCRIPT_FLOW if kind == "script" else GROUP_FLOW)
        assert owners[0].name == name


def test_committed_prefect_yaml_is_not_stale() -> None:
    assert PREFECT_YAML == PACKAGE_ROOT / "prefect.yaml"
    committed = PREFECT_YAML.read_text(encoding="utf-8")
    assert committed == render(load_catalog(DEFAULT_CATALOG)), (
        "prefect.yaml is stale: run python -m deployments.prefect_yaml"
    )


# --- invalid catalogs ------------------------------------------------------------------------


def test_raw_catalog_is_valid() -> None:
    Catalog.model_validate(raw_catalog())  # the baseline the negative tests mutate


def test_two_handlers_for_one_event_refused() -> None:
    data = raw_catalog()
    press = next(g for g in data["groups"] if g["name"] == "press")
    press["events"] = [*press["events"], "sync/sync-press"]  # also sync-press's own deployment
    with pytest.raises(ValidationError, match="two handlers"):
        Catalog.model_validate(data)


def test_step_with_unknown_script_refused() -> None:
    data = raw_catalog()
    votes = next(g for g in data["groups"] if g["name"] == "votes")
    votes["steps"] = [*votes["steps"], {"name": "ghost", "script": "no-such-script"}]
    with pytest.raises(ValidationError, match="unknown script no-such-script"):
        Catalog.model_validate(data)


def test_admin_script_without_handler_refused() -> None:
    data = raw_catalog()
    president = next(s for s in data["scripts"] if s["id"] == "sync-president")
    president["standalone"] = False  # no deployment and no group listens to sync/sync-president
    with pytest.raises(ValidationError, match="sync-president has no handler"):
        Catalog.model_validate(data)


def test_bad_step_flag_refused() -> None:
    data = raw_catalog()
    votes = next(g for g in data["groups"] if g["name"] == "votes")
    votes["steps"][0] = {**votes["steps"][0], "flags": ["--today", "--bogus"]}
    with pytest.raises(ValidationError, match="bogus"):
        Catalog.model_validate(data)
