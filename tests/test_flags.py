"""`validate_flags`: only what the catalog allows reaches a script's argv, normalised."""

from __future__ import annotations

import pytest

from deployments.catalog import Catalog, load_catalog
from deployments.flags import MAX_INT, FlagError, FlagSpec, validate_flags, with_limit
from deployments.plans import plan_group, plan_script
from deployments.settings import DEFAULT_CATALOG

pytestmark = pytest.mark.unit

ALLOWED = {
    "dry-run": FlagSpec(kind="bool"),
    "limit": FlagSpec(kind="int", min=1),
    "offset": FlagSpec(kind="int"),  # min 0
    "type": FlagSpec(kind="choice", choices=("FACTCHECK", "PARTY")),
    "leg": FlagSpec(kind="text"),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG)


def check(*flags: object) -> list[str]:
    return validate_flags("my-script", list(flags), ALLOWED)  # type: ignore[arg-type]


# --- accepted --------------------------------------------------------------------------------


def test_accepts_allowed_flags_in_order() -> None:
    assert check("--dry-run", "--limit=5", "--type=PARTY", "--leg=17") == [
        "--dry-run",
        "--limit=5",
        "--type=PARTY",
        "--leg=17",
    ]


def test_empty_is_fine() -> None:
    assert check() == []


def test_int_is_normalised() -> None:
    assert check("--limit=007") == ["--limit=7"]


def test_int_bounds_inclusive() -> None:
    assert check("--limit=1") == ["--limit=1"]
    assert check(f"--limit={MAX_INT}") == [f"--limit={MAX_INT}"]
    assert check("--offset=0") == ["--offset=0"]


def test_text_accepts_its_alphabet() -> None:
    assert check("--leg=a-Z_0.9:1,2") == ["--leg=a-Z_0.9:1,2"]
    assert check("--leg=" + "x" * 64) == ["--leg=" + "x" * 64]


# --- refused ---------------------------------------------------------------------------------


def test_unknown_flag_names_flag_and_script() -> None:
    with pytest.raises(FlagError) as info:
        check("--bogus")
    message = str(info.value)
    assert "--bogus" in message
    assert "my-script" in message


def test_duplicate_refused() -> None:
    with pytest.raises(FlagError, match="twice"):
        check("--limit=1", "--limit=2")
    with pytest.raises(FlagError, match="twice"):
        check("--dry-run", "--dry-run")


@pytest.mark.parametrize("item", ["--dry-run=1", "--dry-run=", "--dry-run=true"])
def test_bool_with_value_refused(item: str) -> None:
    with pytest.raises(FlagError, match="dry-run"):
        check(item)


@pytest.mark.parametrize(
    "item",
    [
        "--limit",
        "--limit=",
        "--limit=abc",
        "--limit=1.5",
        "--limit=0",
        "--limit=-1",
        "--limit=+5",
        f"--limit={MAX_INT + 1}",
        "--limit=" + "9" * 40,
        "--limit=\u0661\u0662",  # Arabic-Indic digits: str.isdigit() is True for them
        "--limit= 5",
        "--limit=5\n",
    ],
)
def test_bad_int_refused(item: str) -> None:
    with pytest.raises(FlagError, match="limit"):
        check(item)


@pytest.mark.parametrize("item", ["--type=party", "--type=OTHER", "--type=", "--type", "--type=PARTY;"])
def test_choice_outside_list_refused(item: str) -> None:
    with pytest.raises(FlagError, match="type"):
        check(item)


@pytest.mark.parametrize(
    "value",
    [
        "17;rm",
        ";",
        "$(id)",
        "a b",
        "`id`",
        "17\nrm",
        "\n17",
        "17\n",
        "17|x",
        "17&",
        "a>b",
        "'17'",
        '"17"',
        "x" * 65,
        "",
    ],
)
def test_text_metacharacters_refused(value: str) -> None:
    with pytest.raises(FlagError, match="leg"):
        check(f"--leg={value}")


@pytest.mark.parametrize("item", ["limit=5", "-limit=5", "dry-run", "x", "", "--", "--Limit=5", "—limit=5"])
def test_positional_or_malformed_refused(item: str) -> None:
    with pytest.raises(FlagError):
        check(item)


@pytest.mark.parametrize("item", [5, None, b"--dry-run", ["--dry-run"]])
def test_non_str_refused(item: object) -> None:
    with pytest.raises(FlagError, match="strings"):
        check(item)


def test_nothing_allowed_lists_none() -> None:
    with pytest.raises(FlagError, match="allowed: none"):
        validate_flags("bare", ["--dry-run"], {})


def test_with_limit_replaces_or_adds() -> None:
    assert with_limit(["--dry-run", "--limit=3"], 9) == ["--dry-run", "--limit=9"]
    assert with_limit(["--dry-run"], 9) == ["--dry-run", "--limit=9"]


# --- through the real catalog ------------------------------------------------------------------


def test_plan_script_refuses_flag_of_another_script(catalog: Catalog) -> None:
    # --today is sync-scrutins-an's, not sync-press's
    with pytest.raises(FlagError) as info:
        plan_script(catalog, "sync-press", flags=["--today"])
    assert "--today" in str(info.value)
    assert "sync-press" in str(info.value)


def test_plan_script_accepts_script_flags(catalog: Catalog) -> None:
    plan = plan_script(catalog, "sync-scrutins-an", flags=["--leg=17", "--dry-run", "--limit=010"])
    assert plan.steps[0].flags == ("--leg=17", "--dry-run", "--limit=10")
    plan = plan_script(catalog, "index-embeddings", flags=["--type=FACTCHECK"])
    assert plan.steps[0].flags == ("--type=FACTCHECK",)


@pytest.mark.parametrize(
    "flags",
    [
        ["--leg=17; touch /tmp/pwned"],
        ["--leg=$(id)"],
        ["--leg=`id`"],
        ["--leg=17\n"],
        ["--today", "--today"],
        ["--today=yes"],
        ["--limit=0"],
        ["--limit=-2"],
        ["; touch /tmp/pwned"],
        ["--type=FACTCHECK"],  # not a flag of sync-scrutins-an
    ],
)
def test_plan_script_refuses_bad_flags(catalog: Catalog, flags: list[str]) -> None:
    with pytest.raises(FlagError):
        plan_script(catalog, "sync-scrutins-an", flags=flags)


@pytest.mark.parametrize("limit", [0, -1, MAX_INT + 1])
def test_plan_script_refuses_bad_limit(catalog: Catalog, limit: int) -> None:
    with pytest.raises(FlagError, match="limit"):
        plan_script(catalog, "sync-press", limit=limit)


def test_plan_group_refuses_bad_limit(catalog: Catalog) -> None:
    with pytest.raises(FlagError, match="limit"):
        plan_group(catalog, "press", limit=MAX_INT + 1)
