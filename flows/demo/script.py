"""A stand-in for a Poligraph script, used when POLIGRAPH_APP_DIR is not set.

    python -m flows.demo.script <script-id> [--flag ...]

Behaves like a createCLI script: refuses flags its catalog entry does not allow
(`Option inconnue`), prints the usual header, progress lines, a results block, exits 0 or 1.

Environment knobs:
    POLIGRAPH_DEMO_SECONDS   how long a run takes (default 4)
    POLIGRAPH_DEMO_FAIL      comma-separated script ids that fail ("*" = all)
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

from deployments.catalog import UnknownTarget, get_catalog
from deployments.flags import FlagError, validate_flags


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m flows.demo.script <script-id> [--flag ...]", file=sys.stderr)
        return 2
    script_id, flags = argv[0], argv[1:]
    try:
        allowed = get_catalog().allowed_flags(script_id)
        checked = validate_flags(script_id, flags, allowed)
    except (FlagError, UnknownTarget) as exc:
        print(f"Option inconnue : {exc}", file=sys.stderr)
        return 1
    options = dict(flag[2:].partition("=")[::2] for flag in checked)
    seconds = float(os.environ.get("POLIGRAPH_DEMO_SECONDS", "4"))
    failing = {s.strip() for s in os.environ.get("POLIGRAPH_DEMO_FAIL", "").split(",") if s}
    total = int(options["limit"]) if options.get("limit") else 20

    print("=" * 50)
    print(f"{script_id} (demo)")
    print("Mode: DRY RUN (no changes)" if "dry-run" in options else "Mode: LIVE")
    if "limit" in options:
        print(f"Limit: {options['limit']}")
    print(f"Started at: {datetime.now(UTC).isoformat()}")
    print("=" * 50, flush=True)

    ticks = 10
    for tick in range(1, ticks + 1):
        time.sleep(seconds / ticks)
        print(f"PROGRESS {total * tick // ticks}/{total}", flush=True)
        if tick == ticks // 2 and (script_id in failing or "*" in failing):
            print("Fatal error:", file=sys.stderr)
            print(f"  demo failure requested for {script_id} (POLIGRAPH_DEMO_FAIL)", file=sys.stderr)
            return 1

    print("Sync Results:")
    print(f"Duration: {seconds:.2f}s")
    print(f"Processed: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
