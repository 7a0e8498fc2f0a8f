"""The optional progress protocol: a script may print lines that say how far it got.

    PROGRESS 40/120     processed 40 items out of 120
    PROGRESS 35%        35 percent done (no item counts)

The word is case-sensitive and must start the line (leading spaces allowed); anything else on
the line makes it ordinary output. Other output is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COUNT_RE = re.compile(r"^\s*PROGRESS\s+(\d{1,9})\s*/\s*(\d{1,9})\s*$")
_PERCENT_RE = re.compile(r"^\s*PROGRESS\s+(\d{1,3}(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class ProgressReport:
    fraction: float  # 0.0 - 1.0
    processed: int | None = None
    total: int | None = None


def parse_progress(line: str) -> ProgressReport | None:
    if match := _COUNT_RE.match(line):
        processed, total = int(match[1]), int(match[2])
        if total == 0:
            return ProgressReport(fraction=0.0, processed=processed, total=total)
        return ProgressReport(min(processed / total, 1.0), processed, total)
    if match := _PERCENT_RE.match(line):
        return ProgressReport(fraction=min(float(match[1]) / 100, 1.0))
    return None
