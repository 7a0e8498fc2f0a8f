"""Runtime configuration, read from the environment (and an optional `.env` file).

Every setting has an embedded default so a fresh checkout runs without any configuration.
Secrets (DATABASE_URL may hold a password) are never logged: use `describe()` for display.
"""

from __future__ import annotations

import shlex
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = PACKAGE_ROOT / "deployments" / "catalog.yaml"
# The command that runs a real Poligraph script inside POLIGRAPH_APP_DIR.
APP_SCRIPT_COMMAND = "npx tsx scripts/{script}.ts"
# The bundled stand-in used when no Poligraph checkout is configured.
DEMO_SCRIPT_COMMAND = "{python} -m flows.demo.script {script}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POLIGRAPH_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "POLIGRAPH_DATABASE_URL"),
        description=(
            "The app's PostgreSQL, where SyncJob lives (a Prisma URL works: `?schema=` is dropped). "
            "Unset: `$POLIGRAPH_HOME/syncjob.sqlite`."
        ),
    )
    home: Path = Field(
        default=Path.home() / ".poligraph-jobs",
        description=(
            "Local state: run files, the alert spool, the embedded SQLite SyncJob table, and the local "
            "stack's PREFECT_HOME."
        ),
    )
    app_dir: Path | None = Field(
        default=None,
        description="A Poligraph checkout; its scripts run there with npx tsx. Unset: the demo scripts.",
    )
    script_command: str | None = Field(
        default=None,
        description=(
            "Command template, split into argv (never a shell); `{script}` and `{python}` are "
            "substituted per argument. Unset: `npx tsx scripts/{script}.ts` with POLIGRAPH_APP_DIR, "
            "else the demo script."
        ),
    )
    catalog: Path = Field(default=DEFAULT_CATALOG, description="The catalog file.")
    kill_grace_seconds: float = Field(
        default=10.0, ge=0, description="Seconds between SIGTERM and SIGKILL on timeout or cancel."
    )
    retry_delays: Annotated[list[float], NoDecode] = Field(
        default=[30.0, 120.0],
        description="Backoff between a step's attempts, seconds (comma separated).",
    )
    retry_jitter_factor: float = Field(
        default=0.2, ge=0, description="Random jitter on those delays, as a fraction of each (Prefect's)."
    )
    progress_interval_seconds: float = Field(
        default=1.0, ge=0, description="Least time between two SyncJob progress writes."
    )
    tail_lines: int = Field(default=30, ge=1, description="Output lines kept for error messages.")
    output_line_limit_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description=(
            "A script's output line longer than this (bytes) is cut, with a marker saying how many bytes "
            "were dropped (`… [12,345,678 bytes cut]`); reading a stream never holds much more than this."
        ),
    )
    log_lines_per_second: float = Field(
        default=200,
        gt=0,
        description=(
            "Run-log budget of one step: lines per second of its script's output sent to the Prefect run "
            "log, with a burst of 10 s worth. Past it, lines are counted, and the run log gets `… N lines "
            "not sent to the run log; the last 30 are below` with those last lines (POLIGRAPH_TAIL_LINES) "
            "when the budget allows again or the step ends. Progress lines are always read."
        ),
    )
    log_bytes_per_second: int = Field(
        default=256 * 1024,
        gt=0,
        description="Run-log budget of one step: bytes per second of output lines, as the line budget.",
    )
    log_max_lines: int = Field(
        default=20_000,
        ge=0,
        description="Run-log budget of one step in total: output lines; the rest are counted and summarised.",
    )
    log_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        description="Run-log budget of one step in total: bytes of output lines, as the line budget.",
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None, description="Where failures of critical scripts are POSTed (JSON). Unset: no alert."
    )
    alert_retry_delays: Annotated[list[float], NoDecode] = Field(
        default=[1.0, 5.0, 30.0], description="Seconds between webhook attempts."
    )
    admin_base_url: str = Field(
        default="https://poligraph.fr",
        validation_alias=AliasChoices("NEXT_PUBLIC_BASE_URL", "POLIGRAPH_ADMIN_BASE_URL"),
        description="Base of the admin link (`<base>/admin/syncs`) in failure alerts.",
    )
    reconcile_interval_seconds: float = Field(
        default=2.0, gt=0, description="Reconciler period: cancels, dead runs, ended runs."
    )
    stuck_run_seconds: float = Field(
        default=60,
        ge=30,
        le=240,  # below Prefect's 300 s lease on a Pending run's slot: ended while the lease holds
        description=(
            "A run left Pending or Cancelling (or Running before its flow body began) this long "
            "with no process on this machine is ended by the reconciler (Crashed or Cancelled)."
        ),
    )
    slot_wait_warning_seconds: float = Field(
        default=3600, gt=0, description="Log runs waiting longer than this for a concurrency slot."
    )
    catch_up_window_seconds: float = Field(
        default=3600, ge=0, description="A missed cron firing older than this is not run at all."
    )
    worker_deploy: bool = Field(
        default=False,
        description=(
            "The worker creates the work pool, the per-script concurrency limits and every catalog "
            "deployment in its pool when it starts (the local stack; production runs `scripts.setup "
            "--deploy` once instead)."
        ),
    )
    result_storage: str | None = Field(
        default=None,
        description=(
            "Where durable steps keep their results when several workers share runs: a directory "
            "every worker mounts at the same path (/mnt/x or file:///mnt/x) or an existing storage "
            "block (block:<type slug>/<name>, e.g. block:s3-bucket/results). `scripts.setup` makes it "
            "the Prefect server's default result storage. Unset: each machine's own disk."
        ),
    )
    syncjob_retry_seconds: float = Field(
        default=120,
        ge=0,
        description="How long a run keeps retrying a SyncJob state write while the database is away.",
    )

    @field_validator("retry_delays", "alert_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        return [value] if isinstance(value, int | float) else comma_separated(value)

    @property
    def sqlite_path(self) -> Path:
        return self.home / "syncjob.sqlite"

    def script_argv(self, script: str) -> list[str]:
        """The argv prefix that runs `script` (flags are appended by the caller)."""
        if self.script_command:
            template = self.script_command
        elif self.app_dir:
            template = APP_SCRIPT_COMMAND
        else:
            template = DEMO_SCRIPT_COMMAND
        # shlex only splits the operator's template; it never reaches a shell.
        return [part.format(script=script, python=sys.executable) for part in shlex.split(template)]

    def script_cwd(self) -> Path | None:
        return self.app_dir


def comma_separated(value: object) -> object:
    """ "a, b,c" -> ["a", "b", "c"] for list settings given as one environment string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()
