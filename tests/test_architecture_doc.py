"""docs/architecture.md stays a map of the tree: its "Where do I change…" table answers the
questions a newcomer asks first and points at files that exist, and every module of the four
packages is named in a "Who owns what" table (a module added without a row, or a row left behind
by a move, fails here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from support.paths import REPO

pytestmark = pytest.mark.unit

PAGE = REPO / "docs" / "architecture.md"
PACKAGES = ["deployments", "flows", "shim", "scripts"]
# A backticked path of the tree: a directory, a file with its extension, or a module's file name.
PATH = re.compile(r"`([\w./-]+(?:/|\.py|\.yaml|\.md|\.toml|\.service))`")
# The questions the table must answer (case-insensitive words of its first column).
QUESTIONS = [
    "add a script",
    "parse progress",
    "refusal body",
    "dead run",
    "add a setting",
]


def section(title_start: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"## {title_start}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table_rows(text: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # past the header and its rule


def defines(path: Path) -> bool:
    """Whether a module defines anything (a package marker holds a docstring and imports)."""
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Assign)
        for node in ast.parse(path.read_text(encoding="utf-8")).body
    )


def test_the_where_table_answers_the_first_questions():
    asked = " / ".join(row[0].lower() for row in table_rows(section("Where do I change")))
    missing = [q for q in QUESTIONS if q not in asked]
    assert not missing, f"docs/architecture.md 'Where do I change…' has no row for: {missing}"


def test_every_path_of_the_where_table_exists():
    rows = table_rows(section("Where do I change"))
    named = [path for row in rows for path in PATH.findall(" ".join(row[1:]))]
    assert len(named) >= len(rows), "each row names at least one file"
    gone = [path for path in named if not (REPO / path).exists()]
    assert not gone, f"docs/architecture.md 'Where do I change…' points at files that do not exist: {gone}"


def package_rows(package: str) -> set[str]:
    """The file names the `### `package/`` part of "Who owns what" names."""
    owners = section("Who owns what")
    start = owners.index(f"### `{package}/`")
    end = owners.find("\n### ", start + 1)
    return set(re.findall(r"`([\w./]+\.py)`", owners[start : end if end != -1 else len(owners)]))


def test_every_module_has_its_row_in_who_owns_what():
    missing = []
    for package in PACKAGES:
        named = package_rows(package)
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO / package).as_posix()
            if path.name == "__init__.py" and (path.parent == REPO / package or not defines(path)):
                continue  # the package itself (its layer row), or a package marker
            if "migrations" in path.parts:
                continue  # the migrations directory has its row
            if relative not in named:
                missing.append(f"{package}/{relative}")
    assert not missing, f"docs/architecture.md 'Who owns what' has no row naming: {missing}"
