"""The documentation keeps its promises: the configuration reference is the settings classes'
own (scripts/config_docs.py), every setting says what it is, secrets stay secret, the README is
read in five minutes, and every relative link of the README and docs/ leads somewhere."""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from scripts import config_docs, prefect_settings
from support.paths import REPO

pytestmark = pytest.mark.unit

README_MAX_LINES = 200
PAGES = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Variables the project sets for the scripts it starts, never reads as configuration.
SET_NOT_READ = {"POLIGRAPH_FLOW_RUN_ID", "POLIGRAPH_STEP_ID"}


def test_the_configuration_page_is_up_to_date():
    assert not config_docs.is_stale(), "run: python -m scripts.config_docs"


def test_every_settings_field_has_a_description():
    missing = [
        f"{section.settings.__name__}.{name}"
        for section in config_docs.SECTIONS
        for name, field in section.settings.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"add description= to: {missing}"


def test_every_settings_class_of_the_project_has_its_section():
    documented = {(s.settings.__module__, s.settings.__name__) for s in config_docs.SECTIONS}
    found = set()
    for package in ("deployments", "flows", "shim", "scripts"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and "BaseSettings" in {ast.unparse(b) for b in node.bases}:
                    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                    found.add((module, node.name))
    assert found == documented


def test_secrets_are_marked_and_no_default_of_theirs_is_shown():
    class Example(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="EXAMPLE_")
        token: SecretStr = Field(default=SecretStr("hunter2-looks-real"), description="A token.")
        tokens: list[SecretStr] = Field(default=[], description="Tokens.")
        plain: str = Field(default="shown", description="Not a secret.")

    section = config_docs.Section("Example", Example, "Read by nobody.")
    rows = {
        line.split(" | ")[0].strip("| `"): line
        for line in config_docs.section_lines(section)
        if "`EXAMPLE_" in line
    }
    assert "hunter2" not in "\n".join(rows.values())
    assert "| (secret) | **Secret.** A token." in rows["EXAMPLE_TOKEN"]
    assert "| unset | **Secret.** Tokens." in rows["EXAMPLE_TOKENS"]
    assert "| `shown` | Not a secret." in rows["EXAMPLE_PLAIN"]
    page = config_docs.PAGE.read_text(encoding="utf-8")
    for secret in ("POLIGRAPH_EVENT_KEYS", "POLIGRAPH_ALERT_WEBHOOK_URL", "PREFECT_API_KEY"):
        (row,) = [line for line in page.splitlines() if line.startswith(f"| `{secret}`")]
        assert "**Secret.**" in row


def test_the_environment_names_are_the_ones_pydantic_reads(monkeypatch):
    from deployments.settings import Settings
    from shim.settings import ShimSettings

    monkeypatch.setenv("POLIGRAPH_SHIM_SCHEMA", "from_env")
    monkeypatch.setenv("NEXT_PUBLIC_BASE_URL", "https://example.org")
    monkeypatch.setenv("POLIGRAPH_TAIL_LINES", "7")
    assert ShimSettings().schema_name == "from_env"
    settings = Settings()
    assert (settings.admin_base_url, settings.tail_lines) == ("https://example.org", 7)
    page = config_docs.PAGE.read_text(encoding="utf-8")
    for name in ("`POLIGRAPH_SHIM_SCHEMA`", "`NEXT_PUBLIC_BASE_URL`", "`POLIGRAPH_TAIL_LINES`"):
        assert f"| {name}" in page


def test_every_poligraph_variable_the_docs_name_is_in_the_reference():
    documented = set(re.findall(r"`(POLIGRAPH_[A-Z_]+)`", config_docs.generated()))
    unknown = {}
    for page in PAGES:
        for name in set(re.findall(r"\bPOLIGRAPH_[A-Z][A-Z_]*[A-Z]\b", page.read_text(encoding="utf-8"))):
            if name not in documented | SET_NOT_READ:
                unknown.setdefault(name, []).append(str(page.relative_to(REPO)))
    assert not unknown, f"named in the docs but no setting of that name: {unknown}"


def test_the_local_stacks_prefect_settings_are_the_ones_the_page_says():
    page = config_docs.PAGE.read_text(encoding="utf-8")
    settings = (
        prefect_settings.SERVER_SETTINGS | prefect_settings.SQLITE_SETTINGS | prefect_settings.WORKER_SETTINGS
    )
    for name, value in settings.items():
        assert f"`{name}={value}`" in page, name


def test_the_readme_is_read_in_five_minutes():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move details to docs/"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces become hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", without_code(page.read_text(encoding="utf-8")), re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def test_slugs_are_githubs():
    assert slug("Limits and bad input") == "limits-and-bad-input"
    assert slug("The Prefect server restarts") == "the-prefect-server-restarts"
    assert slug("Jobs: `deployments.settings.Settings`") == "jobs-deploymentssettingssettings"


def test_every_relative_link_points_at_a_file_that_exists():
    broken = []
    for page in PAGES:
        for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not file.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where} (no such heading)")
    assert not broken, broken
