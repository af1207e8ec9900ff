"""Engines and migrations: how lrpilot connects to SQLite or PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine


def is_sqlite(url: str) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str) -> Engine:
    """An engine whose write transactions serialise per run.

    PostgreSQL: the run's row lock (SELECT ... FOR UPDATE) does it. SQLite has one writer per
    file, so a write transaction starts with BEGIN IMMEDIATE: it takes the write lock before it
    reads the run's state, and no two decisions can ever be made from the same state.
    """
    if not is_sqlite(url):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)

    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30.0})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts; a power cut may drop the last commits, which a
        # client's retry re-decides identically (the policy is deterministic).
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def writer(engine: Engine) -> Engine:
    """The engine to use for a transaction that reads state and then writes it."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="IMMEDIATE")
    return engine


# SQLite admits one writer at a time; queueing writers in-process avoids its busy-wait
# (sleeps of up to 100 ms) under concurrency. Correctness does not rest on it: BEGIN IMMEDIATE
# still serialises writers across processes.
_sqlite_write_locks: dict[str, threading.Lock] = {}


def write_lock(engine: Engine) -> threading.Lock | None:
    if engine.dialect.name != "sqlite":
        return None
    return _sqlite_write_locks.setdefault(str(engine.url), threading.Lock())


def migrations_dir() -> Path:
    """Alembic's scripts: inside the installed package, or migrations/ in a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("lrpilot's Alembic migrations are missing from this installation")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed)."""
    command.upgrade(alembic_config(url), revision)
