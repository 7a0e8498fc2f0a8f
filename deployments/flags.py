"""Script flags: their specs and the check that refuses anything the catalog does not allow.

Flags end up as argv items of a subprocess (never a shell), but a script given a flag it does
not know exits non-zero (`Option inconnue`), so they are checked before anything starts.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from deployments.errors import CoreError

FLAG_RE = re.compile(r"--(?P<name>[a-z][a-z0-9-]*)(?:=(?P<value>.*))?", re.DOTALL)
TEXT_VALUE_RE = re.compile(r"[A-Za-z0-9_.:,-]{1,64}")  # used with fullmatch
MAX_INT = 1_000_000


class FlagError(CoreError, ValueError):
    """A flag the catalog does not allow for this script, or a bad value."""


class FlagSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bool", "int", "choice", "text"]
    choices: tuple[str, ...] = ()
    min: int = 0
    help: str = ""


def parse_flag(item: str) -> tuple[str, str | None]:
    match = FLAG_RE.fullmatch(item)
    if not match:
        raise FlagError(f"{item!r} is not a flag: expected --name or --name=value")
    return match["name"], match["value"]


def check_value(name: str, spec: FlagSpec, value: str | None) -> str:
    """Return the flag normalised as one argv item, or raise FlagError."""
    if spec.kind == "bool":
        if value is not None:
            raise FlagError(f"--{name} takes no value (got {value!r})")
        return f"--{name}"
    if value is None or value == "":
        raise FlagError(f"--{name} needs a value: --{name}=...")
    if spec.kind == "int":
        if not value.isascii() or not value.isdigit() or not spec.min <= int(value) <= MAX_INT:
            raise FlagError(f"--{name} must be a whole number from {spec.min} to {MAX_INT}")
        return f"--{name}={int(value)}"
    if spec.kind == "choice":
        if value not in spec.choices:
            raise FlagError(f"--{name} must be one of {', '.join(spec.choices)} (got {value!r})")
        return f"--{name}={value}"
    if not TEXT_VALUE_RE.fullmatch(value):
        raise FlagError(f"--{name} value must be 1-64 characters of A-Z a-z 0-9 _ . : , -")
    return f"--{name}={value}"


def validate_flags(script: str, flags: list[str], allowed: dict[str, FlagSpec]) -> list[str]:
    """Check every flag against `allowed`; return them normalised, in order."""
    seen: set[str] = set()
    normalised: list[str] = []
    for item in flags:
        if not isinstance(item, str):
            raise FlagError(f"flags must be strings, got {item!r}")
        name, value = parse_flag(item)
        spec = allowed.get(name)
        if spec is None:
            known = ", ".join(f"--{n}" for n in sorted(allowed)) or "none"
            raise FlagError(f"--{name} is not allowed for {script} (allowed: {known})")
        if name in seen:
            raise FlagError(f"--{name} is given twice")
        seen.add(name)
        normalised.append(check_value(name, spec, value))
    return normalised


def with_limit(flags: list[str], limit: int) -> list[str]:
    """`flags` with its --limit replaced (or added) by `limit`."""
    kept = [f for f in flags if parse_flag(f)[0] != "limit"]
    return [*kept, f"--limit={limit}"]
