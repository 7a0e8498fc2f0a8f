"""Where the test session keeps its state (one temp dir per session)."""

from __future__ import annotations

import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
STATE = Path(tempfile.mkdtemp(prefix="poligraph-jobs-tests-"))
STUB_ROOT = STATE / "stubs"
