"""Rules of how modules are laid out that no linter checks.

A module run as `python -m pkg.mod` executes top to bottom: a function or class defined after
its `if __name__ == "__main__":` block does not exist yet when `main()` runs (the reconciler once
raised NameError that way on its first stuck cancel, and every later pass was skipped).
"""

from __future__ import annotations

import ast
import builtins
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


# Each layer's exceptions descend from its root (docs/architecture.md, "Errors"); control flow
# that is not an error of the layer is listed here with why.
LAYER_ROOTS = {
    "deployments": "CoreError",
    "flows": "RunError",
    "shim": "ShimError",
    "scripts": "OperationError",
}
NOT_ERRORS = {"ForcedStop"}  # scripts/local_stack.py: the stack's own way out of its wait loop


def exception_classes(package: str) -> dict[str, list[str]]:
    """The package's classes that are exceptions → their base names (class names are unique)."""
    bases: dict[str, list[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in seen:
            return False
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type):
            return issubclass(builtin, BaseException)
        return any(is_exception(b, seen | {name}) for b in bases.get(name, []))

    return {name: parents for name, parents in bases.items() if is_exception(name)}


def descends_from(name: str, root: str, bases: dict[str, list[str]]) -> bool:
    return name == root or any(descends_from(b, root, bases) for b in bases.get(name, []))


@pytest.mark.parametrize("package", sorted(LAYER_ROOTS))
def test_every_exception_of_a_layer_descends_from_its_root(package):
    root = LAYER_ROOTS[package]
    found = exception_classes(package)
    assert root in found, f"{package} has no {root}"
    strays = sorted(n for n in found if n not in NOT_ERRORS and not descends_from(n, root, found))
    assert not strays, f"{package}: make these subclass {root} (keeping their built-in base): {strays}"
