"""Deployment descriptions and run forms (parameter schemas), from the real catalog.

The schemas are checked with Prefect's own validator, the one the server runs when
`enforce_parameter_schema` is on: everything the catalog allows must pass, and so must bad flags,
which the flow then refuses with the catalog's reason.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.utilities.schema_tools.validation import ValidationError, validate

from deployments.catalog import load_catalog
from deployments.flags import FlagError, validate_flags
from deployments.prefect_yaml import render
from deployments.settings import DEFAULT_CATALOG
from deployments.specs import deployment_specs
from scripts.run_forms import run_form

pytestmark = pytest.mark.unit

CATALOG = load_catalog(DEFAULT_CATALOG)
SPECS = {spec.name: spec for spec in deployment_specs(CATALOG)}


def schema_of(name: str) -> dict:
    return run_form(CATALOG, SPECS[name]).model_dump(exclude_unset=True)


def accepted(name: str, parameters: dict) -> bool:
    try:
        validate({SPECS[name].kind: name, **parameters}, schema_of(name), raise_on_error=True)
    except ValidationError:
        return False
    return True


def test_descriptions_are_the_admin_label_and_description() -> None:
    first, *rest = SPECS["sync-assemblee"].description.split("\n\n")
    assert first == "Assemblée nationale — Députés, commissions, groupes"
    assert "Default flags: `--today`." in SPECS["sync-scrutins-an"].description
    assert SPECS["sync-opensanctions"].description.startswith("OpenSanctions (full)\n\n")
    assert "(../../artifacts/key/sync-assemblee-steps)" in rest[-1]


def test_group_descriptions_list_their_steps() -> None:
    press = SPECS["press"].description
    assert press.startswith("Presse RSS puis analyse IA\n\n")
    assert (
        "1. parse-rss: `sync-press`\n2. ai-analysis: `sync-press-analysis --limit=100` (takes `limit`)"
        in press
    )
    daily = SPECS["sync-daily"].description
    assert "1. votes-an: `sync-scrutins-an --today` (required)" in daily
    assert "9. judilibre: `sync-judilibre --limit=20` (disabled: skipped)" in daily
    assert "[summary](../../artifacts/key/sync-daily-summary)" in daily


def test_prefect_yaml_carries_the_descriptions() -> None:
    document = yaml.safe_load(render(CATALOG))
    by_name = {entry["name"]: entry for entry in document["deployments"]}
    assert {name: entry["description"] for name, entry in by_name.items()} == {
        name: spec.description for name, spec in SPECS.items()
    }
    assert all(entry["enforce_parameter_schema"] is True for entry in by_name.values())


def test_script_form_shows_its_flags_and_defaults() -> None:
    properties = schema_of("sync-scrutins-an")["properties"]
    assert properties["script"]["readOnly"] is True and properties["script"]["enum"] == ["sync-scrutins-an"]
    flags = properties["flags"]
    assert flags["description"].startswith("Replaces the default flags of sync-scrutins-an (--today).")
    assert "--leg=TEXT (legislature number)" in flags["description"]
    (array,) = [branch for branch in flags["anyOf"] if branch.get("type") == "array"]
    picked, typed = array["items"]["anyOf"]
    assert picked["enum"] == [
        "--dry-run",
        "--force",
        "--verbose",
        "--today",
        "--all",
        "--official-groups-only",
    ]
    assert typed == {"title": "Type a flag", "type": "string", "description": "e.g. --limit=N, --leg=TEXT"}
    assert "replacing any --limit" in properties["limit"]["description"]
    assert "SyncJob row" in properties["job_id"]["description"]
    choices = schema_of("sync-legislation-content")["properties"]["limit"]["description"]
    assert choices.endswith("(--limit=20).")


def test_group_form_says_what_limit_does() -> None:
    assert schema_of("press")["properties"]["limit"]["description"] == (
        "--limit=N of step ai-analysis (sync-press-analysis); unset: 100. The other steps keep their own flags."
    )
    assert "takes no limit" in schema_of("votes")["properties"]["limit"]["description"]
    assert schema_of("votes")["properties"]["group"]["enum"] == ["votes"]


def test_what_the_readme_runs_passes_the_schema() -> None:
    assert accepted("sync-scrutins-an", {"flags": ["--all"]})
    assert accepted("sync-press-analysis", {"limit": 5})
    assert accepted("sync-scrutins-an", {"flags": ["--limit=5", "--leg=17"], "job_id": "cjob", "limit": None})
    assert accepted("press", {"limit": 5})
    assert accepted("votes", {"limit": 5})  # refused by the flow, with the catalog's reason
    assert not accepted("sync-scrutins-an", {"script": "sync-senat"})  # the deployment's own script only
    assert not accepted("sync-scrutins-an", {"flags": [5]})


flag_like = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda n, v: f"--{n}={v}", st.sampled_from(["limit", "leg", "type", "today"]), st.text(max_size=10)
    ),
)


@settings(deadline=None)  # a property of results; one example took 300 ms on a loaded machine
@given(
    script=st.sampled_from(sorted(s.id for s in CATALOG.standalone_scripts)),
    flags=st.lists(flag_like, max_size=4),
)
def test_the_schema_never_refuses_a_list_of_strings(script: str, flags: list[str]) -> None:
    """Whatever the flags, the catalog decides (and says why), not a schema error."""
    assert accepted(script, {"flags": flags})


@pytest.mark.parametrize("script", sorted(s.id for s in CATALOG.standalone_scripts))
def test_every_flag_offered_is_one_the_catalog_allows(script: str) -> None:
    (array,) = [b for b in schema_of(script)["properties"]["flags"]["anyOf"] if b.get("type") == "array"]
    offered = array["items"]["anyOf"][0]["enum"]
    assert offered and all(validate_flags(script, [flag], CATALOG.allowed_flags(script)) for flag in offered)
    with pytest.raises(FlagError):
        validate_flags(script, ["--not-offered"], CATALOG.allowed_flags(script))
