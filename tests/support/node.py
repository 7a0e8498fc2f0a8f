"""A Node project with `tsx` installed from npm, where real TypeScript scripts run with `npx tsx`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support.paths import STATE, TESTS

TSX_VERSION = "4"
NPM_TIMEOUT_SECONDS = 180


def tsx_project() -> Path:
    """STATE/node with tsx in node_modules and the test scripts; raises when npm cannot install.

    Installing needs the npm registry. A machine without it must fail these tests, not skip
    them: they are the proof that a detached Node child is killed.
    """
    project = STATE / "node"
    if (project / "node_modules" / ".bin" / "tsx").exists():
        return project
    project.mkdir(parents=True, exist_ok=True)
    (project / "package.json").write_text('{"name": "poligraph-jobs-tests", "private": true}\n')
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the Node tests need Node 20 and npm")
    install = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", f"tsx@{TSX_VERSION}"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_SECONDS,
        check=False,
    )
    if install.returncode != 0:
        raise RuntimeError(
            f"npm install tsx failed (is the npm registry reachable?):\n{install.stderr[-3000:]}"
        )
    shutil.copy(TESTS / "stubs" / "detach.ts", project / "detach.ts")
    return project
