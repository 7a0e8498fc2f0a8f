"""Create the Prefect server's PostgreSQL database, once, before the server first starts.

    PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:<password>@db-host:5432/prefect \\
        python -m scripts.prefect_database

`prefect server start` creates its tables but not its database: on a server without it, it
exits with `database "prefect" does not exist`. This reads the URL the server will use,
connects to the `postgres` database of the same server with the same role (which needs
CREATEDB, or create the database as its owner with `createdb -O prefect prefect`), and creates
the database when it is missing. Safe to run again; it waits for a PostgreSQL that is still
starting (POLIGRAPH_DATABASE_WAIT_SECONDS, 120 s). The password is never printed.
"""

from __future__ import annotations

import os
import sys

from sqlalchemy.engine import make_url

from scripts.prefect_settings import DATABASE_WAIT_SECONDS, DatabaseUnusable, ensure_database

VARIABLE = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def main() -> int:
    raw = os.environ.get(VARIABLE, "")
    if not raw.startswith("postgresql"):
        print(f"{VARIABLE} must be the server's postgresql+asyncpg:// URL", file=sys.stderr)
        return 2
    url = make_url(raw)
    if not url.database:
        print(f"{VARIABLE} names no database", file=sys.stderr)
        return 2
    admin = url.set(drivername="postgresql", database="postgres", query={})
    wait = float(os.environ.get("POLIGRAPH_DATABASE_WAIT_SECONDS", DATABASE_WAIT_SECONDS))
    try:
        ensure_database(admin.render_as_string(hide_password=False), url.database, wait, source=VARIABLE)
    except DatabaseUnusable as exc:
        print(f"prefect database: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"prefect database {url.database} on {url.host or 'localhost'}:{url.port or 5432}: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
