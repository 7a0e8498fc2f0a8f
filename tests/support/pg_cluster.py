"""Throwaway PostgreSQL server for tests, started from the installed binaries.

Usage::

    with temporary_postgres() as url:
        apply_sql(url, Path("tests/sql/syncjob.sql"))
        engine = sqlalchemy.create_engine(url)

    cluster = PostgresCluster()     # one a test can stop and start again on the same port
    cluster.start(); cluster.create_database(); cluster.stop(); cluster.start(); cluster.remove()
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from support.ports import free_port

DB_NAME = "poligraph"
SUPERUSER = "postgres"  # role created by initdb; auth is `trust`
STARTUP_TIMEOUT = 30.0  # seconds
INSTALL_HINT = "apt-get install postgresql"


def _version_key(bindir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/9.6/bin -> (9, 6); /usr/lib/postgresql/15/bin -> (15,)
    version = Path(bindir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_pg_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres: `pg_config --bindir`, else newest Debian dir."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        # Debian's libpq-dev pg_config reports a bindir even without the server installed,
        # so the candidate is only accepted if initdb is actually there.
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return Path(bindir)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb) not found via `pg_config --bindir` or "
        f"/usr/lib/postgresql/*/bin. Install them with: {INSTALL_HINT}"
    )


def _run_as_kwargs(workdir: Path) -> dict[str, Any]:
    """Popen kwargs so server binaries run unprivileged (initdb/postgres refuse to run as root)."""
    kwargs: dict[str, Any] = {"cwd": str(workdir), "stdin": subprocess.DEVNULL}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError(
                "Running as root, but there is no `postgres` system user to run the server as. "
                f"Install PostgreSQL properly ({INSTALL_HINT}) or run the tests as a normal user."
            ) from exc
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        kwargs["env"] = {**os.environ, "HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    return kwargs


def _run(cmd: list[str], run_as: dict[str, Any], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **run_as)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no server log>"


def _wait_ready(server: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Poll until a connection succeeds; fail fast if the server process exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"postgres exited with code {server.returncode} during startup.\n"
                f"--- server log tail ---\n{_log_tail(log_path)}"
            )
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres", connect_timeout=2
            ):
                return
        except psycopg.OperationalError as exc:
            last_error = exc
            time.sleep(0.05)  # poll interval, not a fixed wait
    raise RuntimeError(
        f"postgres did not accept connections on 127.0.0.1:{port} within {STARTUP_TIMEOUT:.0f}s "
        f"(last error: {last_error}).\n--- server log tail ---\n{_log_tail(log_path)}"
    )


class PostgresCluster:
    """A throwaway cluster that a test can stop and start again on the same port (an outage)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable  # fsync and synchronous commits on, as in production (benchmarks)
        self.bindir = find_pg_bindir()
        self.tmp = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data_dir = self.tmp / "data"
        self.sock_dir = self.tmp / "sock"
        self.log_path = self.tmp / "server.log"
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.run_as: dict[str, Any] = {}
        try:
            self._init()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _init(self) -> None:
        self.run_as = _run_as_kwargs(self.tmp)
        self.sock_dir.mkdir()
        if "user" in self.run_as:  # root: hand the whole temp dir to the postgres user
            for path in (self.tmp, self.sock_dir):
                os.chown(path, self.run_as["user"], self.run_as["group"])
        _run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-A", "trust",
                "-U", SUPERUSER,
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            self.run_as,
            "initdb",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{DB_NAME}"

    def start(self) -> None:
        """Start the server (again) on its port; returns once it accepts connections."""
        with open(self.log_path, "ab") as log:  # child keeps its own copy of the fd
            self.server = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D", str(self.data_dir),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"port={self.port}",
                    "-c", f"unix_socket_directories={self.sock_dir}",
                    *(["-c", "max_connections=200"] if self.durable else [
                        "-c", "fsync=off",
                        "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off",
                    ]),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self.run_as,
            )  # fmt: skip
        _wait_ready(self.server, self.port, self.log_path)

    def create_database(self) -> None:
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"'.encode())

    def read_only(self, on: bool, cut_clients: bool = False) -> None:
        """Every session read-only (or not again) from its next transaction (ALTER SYSTEM and a
        reload reach sessions already open); `cut_clients` also ends them, as a failover does
        (57P01, then new connections land read-only)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
            conn.execute("SELECT pg_reload_conf()")
            if on and cut_clients:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DB_NAME,)
                )

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m <mode>`: fast disconnects every client (admin shutdown), as a restart does."""
        if self.server is not None:
            _stop(self.bindir, self.data_dir, self.server, self.run_as, mode)
            self.server = None

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a throwaway server; yield `postgresql+psycopg://postgres@127.0.0.1:PORT/poligraph`."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.create_database()
        yield cluster.url
    finally:
        cluster.remove()


def _stop(
    bindir: Path, data_dir: Path, server: subprocess.Popen[bytes], run_as: dict[str, Any], mode: str
) -> None:
    if server.poll() is None:
        subprocess.run(
            [str(bindir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", mode, "-w"],
            capture_output=True,
            check=False,
            **run_as,
        )
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pg_ctl failed; don't leave a server behind
        server.kill()
        server.wait()


def apply_sql(url: str, path: Path) -> None:
    """Execute a .sql file (may hold several statements) against a SQLAlchemy-style URL."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # bytes + no params => simple query protocol, so multi-statement files work
        conn.execute(Path(path).read_bytes())
