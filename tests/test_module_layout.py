"""Rules of how modules are laid out that no linter checks.

A module run as `python -m pkg.mod` executes top to bottom: a function or class defined after
its `if __name__ == "__main__":` block does not exist yet when `main()` runs (the reconciler once
raised NameError that way on its first stuck cancel, and every later pass was skipped).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.paths import REPO

pytestmark = pytest.mark.unit

PACKAGES = ["deployments", "flows", "shim", "scripts", "bench"]


def defined_after_main_block(source: str) -> list[str]:
    """Names of the functions and classes a module defines after its `__main__` block."""
    body = ast.parse(source).body
    for i, node in enumerate(body):
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return [
                n.name
                for n in body[i + 1 :]
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            ]
    return []


def test_the_check_sees_a_function_defined_after_the_main_block():
    late = 'def main():\n    helper()\n\nif __name__ == "__main__":\n    main()\n\ndef helper():\n    pass\n'
    assert defined_after_main_block(late) == ["helper"]
    assert (
        defined_after_main_block("def helper():\n    pass\n\nif __name__ == '__main__':\n    helper()\n")
        == []
    )


def test_no_module_defines_what_its_main_needs_after_the_main_block():
    offenders = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if late := defined_after_main_block(path.read_text(encoding="utf-8")):
                offenders[str(Path(path).relative_to(REPO))] = late
    assert not offenders, f"defined after `if __name__ == '__main__':` (move them above it): {offenders}"


def class_names(paths: list[Path]) -> dict[str, list[str]]:
    """Every top-level class name → the modules defining it."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    return found


def test_no_two_classes_share_a_name():
    # Two unrelated classes with one name (there were two PrefectBusy) send a reader to the wrong
    # one; tests/support counts too, test modules (Test* groupings) do not.
    paths = [p for package in [*PACKAGES, "tests/support"] for p in sorted((REPO / package).rglob("*.py"))]
    shared = {name: where for name, where in class_names(paths).items() if len(where) > 1}
    assert not shared, f"classes sharing a name (rename one): {shared}"
