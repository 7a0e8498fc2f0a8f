"""The install is locked: requirements.lock pins every package this environment holds (the
project's dependencies and dev tools), and `make` installs with it as pip constraints."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.requirements import Requirement

from support.paths import REPO

pytestmark = pytest.mark.unit

NOT_LOCKED = {"poligraph-jobs", "pip", "setuptools", "wheel", "py-spy"}  # the project; tools of the venv


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[_name(requirement.name)] = specifier.version
    return pins


def _name(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_installed_package_is_pinned_at_its_installed_version():
    pins = locked()
    drift = {}
    for dist in metadata.distributions():
        name = _name(dist.metadata["Name"])
        if name in NOT_LOCKED:
            continue
        if pins.get(name) != dist.version:
            drift[name] = (dist.version, pins.get(name))
    assert not drift, f"installed vs locked (run `make lock` after changing dependencies): {drift}"


def test_every_dependency_of_the_project_is_in_the_lock():
    pins = locked()
    wanted = [Requirement(r) for r in metadata.requires("poligraph-jobs") or []]
    missing = [str(r) for r in wanted if _name(r.name) not in pins]
    assert not missing, missing
    for requirement in wanted:  # and the pinned version satisfies what pyproject.toml asks
        assert requirement.specifier.contains(pins[_name(requirement.name)], prereleases=True), requirement
