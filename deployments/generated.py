"""Files this project writes from its own sources and commits: prefect.yaml (from the catalog),
docs/configuration.md (from the settings classes), the README's production section and the
sample units (from scripts/production.py). Each has `python -m <module>` to write it and
`--check` to fail when the committed file is stale (a test runs the check in `make check`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from deployments.settings import PACKAGE_ROOT


def replace_section(text: str, begin: str, end: str, section: str) -> str:
    """`text` with everything from the marker `begin` to the marker `end` replaced by
    `section` (which carries both markers again)."""
    before, rest = text.split(begin, 1)
    return before + section + rest.split(end, 1)[1]


def stale(files: dict[Path, str]) -> list[Path]:
    """The files whose committed content is not what they are generated as."""
    return [
        path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def _shown(path: Path) -> str:
    return str(path.relative_to(PACKAGE_ROOT)) if path.is_relative_to(PACKAGE_ROOT) else str(path)


def write_or_check(files: dict[Path, str], argv: list[str], command: str) -> int:
    """`python -m <command>`: write the files; with `--check`, exit 1 naming the stale ones."""
    names = ", ".join(map(_shown, files))
    if "--check" in argv:
        if old := stale(files):
            which = ", ".join(map(_shown, old))
            print(
                f"{which} {'is' if len(old) == 1 else 'are'} stale: run python -m {command}", file=sys.stderr
            )
            return 1
        print(f"{names}: up to date")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0
