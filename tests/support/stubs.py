"""Drive tests/stubs/stub_script.py: what each stub script does, and what it reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Stubs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def reset(self) -> None:
        for path in self.root.iterdir():
            path.unlink()

    def configure(self, script: str, **spec: Any) -> None:
        (self.root / f"{script}.json").write_text(json.dumps(spec))

    def events(self, script: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        calls = self.root / "calls.jsonl"
        if not calls.exists():
            return []
        rows = [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]
        return [
            r
            for r in rows
            if (script is None or r["script"] == script) and (event is None or r["event"] == event)
        ]

    def starts(self, script: str) -> int:
        return len(self.events(script, "start"))

    def intervals(self, script: str) -> list[tuple[float, float]]:
        starts = {r["pid"]: r["time"] for r in self.events(script, "start")}
        ends = {r["pid"]: r["time"] for r in self.events(script, "end")}
        return sorted((starts[pid], ends[pid]) for pid in starts if pid in ends)

    def pids(self, script: str) -> list[int]:
        path = self.root / f"{script}.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []
