"""The production steps' one source (scripts/production.py) and what it writes: the README's
section and the sample units are not stale, and what the README shows runs when typed as written
(tests/test_production.py runs the steps themselves)."""

from __future__ import annotations

import re
import shlex
import string

import pytest

from scripts import production

pytestmark = pytest.mark.unit


def test_the_readme_section_and_the_units_are_up_to_date():
    assert production.stale() == [], "run: python -m scripts.production"


def test_every_placeholder_has_a_readme_value():
    used = set()
    for step in production.STEPS:
        for text in [*step.commands, *step.env.values()]:
            used |= {field for _, field, _, _ in string.Formatter().parse(text) if field}
    assert used <= set(production.PLACEHOLDERS), used - set(production.PLACEHOLDERS)


def test_what_the_readme_shows_is_plain_words_a_shell_runs_as_written():
    section = production.readme_section()
    lines = [line for line in section.splitlines() if line and not line.startswith(("#", "<!--", "```"))]
    for line in lines:
        assert not re.search(r"[<>|;&`$(){}]", line), line  # no redirection, pipe, substitution
        shlex.split(line.rstrip(" \\"))  # and quotes balance
    for step in production.STEPS:  # each command and each variable of each step is shown
        for command in step.commands:
            assert command.format(**production.PLACEHOLDERS) in section
        for name, value in step.environment(production.PLACEHOLDERS).items():
            assert f"{name}={value} \\" in section


def test_each_long_running_process_has_a_unit_that_restarts_it():
    units = {step.unit: production.unit_text(step) for step in production.STEPS if step.unit}
    assert set(units) == {"prefect-server", "poligraph-worker", "poligraph-shim"}
    for text in units.values():
        assert "Restart=always" in text and "ExecStart=/opt/poligraph-jobs/bin/" in text
        for secret in ("PASSWORD", "A_LONG_RANDOM_KEY"):
            assert not [line for line in text.splitlines() if secret in line and not line.startswith("#")]
    # a stopped worker waits for its runs: SIGTERM to it alone, a timeout above the longest step
    assert (
        "KillMode=mixed" in units["poligraph-worker"] and "TimeoutStopSec=15min" in units["poligraph-worker"]
    )
    assert "--name %H" in units["poligraph-worker"]  # each machine its own worker in the pool
