"""The one settings object: every knob of the service, from flags or the environment (LRPILOT_*)."""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///lrpilot.db"  # a file in the working directory


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRPILOT_", frozen=True, extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # Per replica: 3 replicas x (5 + 5) stay far below PostgreSQL's default max_connections 100.
    pool_size: int = Field(default=5, ge=1, le=1000)
    max_overflow: int = Field(default=5, ge=0, le=1000)
    # The longest a request waits for the database (a lock, a slow query) before it gets a 503
    # with Retry-After; also PostgreSQL's statement_timeout and lock_timeout.
    db_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)
    # /readyz answers within this, whatever the database does.
    ready_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)
    # Serialization failures, deadlocks and lost lock races are retried this often, then 503.
    db_retries: int = Field(default=3, ge=0, le=100)
    # A request body larger than this is refused with a 413 before it is read whole.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # POST /v1/runs/import takes a whole exported run: its own, larger limit.
    max_import_bytes: int = Field(default=1 << 30, ge=1024)
    # A bundle line (an entry, the header, the trailer) longer than this is refused by import,
    # naming its line, with no more than this much of it read (`lrpilot verify` too).
    max_bundle_line_bytes: int = Field(default=16 << 20, ge=1024)
    # Where imports spool the bundles they check (default: beside an SQLite database file, or
    # in the temporary directory); what a killed import left there is removed at startup.
    spool_dir: str | None = None
    # The largest world_size (and so rank + 1) an observation or a resize may declare: an
    # aggregated step stores a report a rank and waits for all of them.
    max_world_size: int = Field(default=65_536, ge=1, le=2**31 - 1)
    # An Ed25519 private key (a PEM file, or the PEM text) that signs every export's head;
    # `lrpilot keygen` writes one. Without it exports are unsigned.
    signing_key: str | None = None
    # Ed25519 public keys (PEM files separated by commas, or PEM text): when set, an import
    # must be signed by one of them, every entry of it; an unsigned bundle is refused.
    trusted_keys: str | None = None

    # Connections (``lrpilot serve``; see lrpilot.server). A request's headers must arrive
    # within this of its first byte (of the connection, for the first request): trickled
    # headers hold a connection no longer.
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    # A request body must bring 64 KiB (or its end) within each such interval.
    body_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    # An idle connection between two requests is closed after this (uvicorn counts seconds).
    keep_alive_timeout_s: int = Field(default=5, ge=1, le=3600)
    # Open connections per replica; beyond it a new one is answered 503 and closed. Lowered at
    # start to fit the process's file descriptor limit (raised to its hard limit first).
    max_connections: int = Field(default=16384, ge=1, le=1_000_000)
    # On SIGTERM: /readyz answers 503 and waiting requests are answered at once; the service
    # serves on this long (a load balancer sees it leave), then stops taking connections...
    shutdown_drain_s: float = Field(default=1.0, ge=0.0, le=600.0)
    # ... and gives the requests in flight this long to finish before cancelling them.
    shutdown_timeout_s: int = Field(default=5, ge=1, le=600)
    # Open mode (no token in the database) serves requests from this machine only, however the
    # server was started (`lrpilot serve`, `uvicorn --factory`, gunicorn); this serves everyone.
    insecure_no_auth: bool = False

    # Observability (docs/operations.md, "Metrics and logs"). The log's format: uvicorn's text
    # lines, or one JSON object a line.
    log_format: Literal["text", "json"] = "text"
    # One line per request (request id, caller, run, status, duration); off: none.
    access_log: bool = True
    # Who may scrape GET /metrics: requests from this machine (loopback), or any token of role
    # reader or above (reader).
    metrics_access: Literal["loopback", "reader"] = "loopback"

    @classmethod
    def from_env(cls) -> Settings:
        return cls()


def safe_url(url: str) -> str:
    """A database URL without its password, for logs and messages."""
    return sa.make_url(url).render_as_string(hide_password=True)
