"""Shim configuration (environment, pydantic-settings). Event keys are secrets: never logged."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from deployments.settings import comma_separated


class ShimSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="POLIGRAPH_SHIM_", env_file=".env", extra="ignore", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Address the Event API binds to.")
    port: int = Field(default=8288, description="Port of the Event API (Inngest's).")
    event_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default=[],
        validation_alias=AliasChoices("POLIGRAPH_EVENT_KEYS", "POLIGRAPH_SHIM_EVENT_KEYS"),
        description="Accepted event keys, comma separated. Unset: dev mode (any key).",
    )
    dev: bool | None = Field(
        default=None, description="Accept any key. Default: on when no key is configured."
    )
    allow_dev_off_loopback: bool = Field(
        default=False, description="Allow dev mode on a non-loopback address (explicit opt-in)."
    )
    database_url: str | None = Field(
        default=None,
        description="Where the shim keeps events. Default: DATABASE_URL (own schema), else SQLite.",
    )
    schema_name: str = Field(
        default="poligraph_jobs",
        pattern=r"^[a-z_][a-z0-9_]*$",
        validation_alias=AliasChoices("POLIGRAPH_SHIM_SCHEMA", "schema_name"),
        description="The PostgreSQL schema of the shim's tables (never `public`, which Prisma owns).",
    )
    dedupe_hours: float = Field(
        default=24, gt=0, description="Hours in which a repeated event id is recorded but starts no run."
    )
    # Where the dispatcher creates runs (the shim speaks Prefect's REST API itself: shim/prefect_api.py).
    prefect_api_url: str = Field(
        default="http://127.0.0.1:4200/api",
        validation_alias=AliasChoices("PREFECT_API_URL", "prefect_api_url"),
        description="Prefect's API (PREFECT_API_URL, as for every Prefect client).",
    )
    prefect_api_auth_string: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_API_AUTH_STRING", "prefect_api_auth_string"),
        description="user:password for a server with PREFECT_SERVER_API_AUTH_STRING.",
    )
    prefect_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_API_KEY", "prefect_api_key"),
        description="Bearer key, for a server behind one.",
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="Dispatcher idle poll interval.")
    max_backoff_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Longest wait between two attempts: a postponed event, Prefect busy or down.",
    )
    probe_seconds: float = Field(
        default=2.0, gt=0, description="Longest wait between two health probes while Prefect is down."
    )
    batch_size: int = Field(default=200, ge=1, description="Events claimed per dispatcher pass.")
    dispatch_concurrency: int = Field(
        default=4, ge=1, description="Prefect requests in flight at once (each creates up to 100 runs)."
    )
    prefect_timeout_seconds: float = Field(default=10.0, gt=0, description="Per Prefect API call.")
    prefect_events: bool = Field(
        default=True, description="Emit each event's fate as a Prefect event (Event Feed, Automations)."
    )
    # Limits on what one client can make the Event API hold (docs/event-api-protocol.md, "Limits
    # and bad input").
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Largest request body; larger ones get 413 before the rest is read.",
    )
    read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A request's body must arrive within this; 408 and closed otherwise.",
    )
    head_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "A request's headers must arrive within this (at most the read timeout), from the "
            "connection's start or its previous reply; the connection is closed otherwise."
        ),
    )
    max_connections: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Open connections at once, idle ones included (each costs a few kB); a request on one "
            "more gets 503. Lowered at start to what the process's file-descriptor limit allows."
        ),
    )
    max_requests: int = Field(
        default=256,
        ge=1,
        description=(
            "Requests in progress at once (head received, body being read, parsed or stored); "
            "one more gets 503 with Retry-After."
        ),
    )
    max_bytes_in_flight: int = Field(
        default=128 * 1024 * 1024,
        ge=1,
        description=(
            "Request bodies held at once, all requests together; a body that would pass it gets "
            "503 with Retry-After."
        ),
    )
    intake_threads: int = Field(
        default=2, ge=1, description="Requests parsed and stored at once (each holds its events)."
    )

    # Retention (shim/retention.py): what is done leaves the outbox, a pending event never does.
    retention_days: float = Field(
        default=7,
        gt=0,
        description="Days a finished event (run created, duplicate, refused) stays in the outbox.",
    )
    purge_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often the shim looks for finished events and expired keys."
    )
    purge_batch_size: int = Field(
        default=1000, ge=1, description="Rows deleted per purge transaction (small: intake never waits)."
    )

    @property
    def head_deadline_seconds(self) -> float:
        """The head's deadline in effect: never longer than the body's."""
        return min(self.head_timeout_seconds, self.read_timeout_seconds)

    @field_validator("event_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return comma_separated(value)

    @property
    def dev_mode(self) -> bool:
        return self.dev if self.dev is not None else not self.event_keys

    def check(self) -> None:
        """Refuse a configuration that would open the Event API to anyone."""
        if self.dev_mode and not self.allow_dev_off_loopback and not is_loopback(self.host):
            raise ValueError(
                f"dev mode accepts any event key and is only allowed on a loopback address, not "
                f"{self.host!r}: set POLIGRAPH_EVENT_KEYS, or POLIGRAPH_SHIM_ALLOW_DEV_OFF_LOOPBACK=true"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_shim_settings() -> ShimSettings:
    return ShimSettings()
