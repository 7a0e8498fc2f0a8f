"""Install this project into a virtualenv of its own, at the locked versions: one command per host.

    python3 poligraph-jobs/scripts/install.py /opt/poligraph-jobs

Creates the virtualenv when missing, then `pip install -c requirements.lock <this checkout>`
into it (again to upgrade: the same command). Runs with the standard library alone, from the
checkout, before anything is installed; nothing goes through a shell.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 scripts/install.py <virtualenv directory>", file=sys.stderr)
        return 2
    target = Path(argv[0]).absolute()
    if not (target / "bin" / "python").exists():
        venv.create(target, with_pip=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-c", str(CHECKOUT / "requirements.lock"), str(CHECKOUT)], check=True)
    print(f"installed into {target}: {target / 'bin' / 'prefect'}, {target / 'bin' / 'poligraph-jobs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
