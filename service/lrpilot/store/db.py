"""Engines and migrations: how lrpilot connects to SQLite or PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from lrpilot.settings import Settings


def is_sqlite(url: str) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def make_engine(settings: Settings) -> Engine:
    """An engine whose write transactions serialise per run, and whose waits are bounded.

    PostgreSQL: the run's row lock (SELECT ... FOR UPDATE) serialises; statement_timeout and
    lock_timeout bound every statement. SQLite has one writer per file, so a write transaction
    starts with BEGIN IMMEDIATE (see ``writer``): it takes the write lock before it reads the
    run's state, and no two decisions can ever be made from the same state; busy_timeout bounds
    the wait for that lock and a progress handler bounds every statement.
    """
    url = settings.database_url
    timeout_ms = int(settings.db_timeout_s * 1000)
    if not is_sqlite(url):
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.db_timeout_s,
            connect_args={
                "connect_timeout": max(1, round(settings.db_timeout_s)),
                "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            },
        )

    path = sa.make_url(url).database or ""
    on_disk = path not in ("", ":memory:") and not path.startswith("file:")
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": settings.db_timeout_s},
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.db_timeout_s,
        # Open the file read-write, never create it: only a migration creates the database.
        # A file moved away or deleted while serving must not come back as an empty one.
        **({"creator": _read_write_opener(path, settings.db_timeout_s)} if on_disk else {}),
    )

    if on_disk:

        @sa.event.listens_for(engine, "checkout")
        def _same_file(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            # A connection to a file that is no longer at the path (moved, deleted, replaced
            # by a restore) would read and write an orphan: reconnect, to whatever is there.
            if not same_file(path, record.info.get("file_id")):
                raise sa.exc.DisconnectionError(f"{path} is no longer the file this connection has")

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        if on_disk:
            record.info["file_id"] = file_id(path)
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it is acknowledged, power cut included. NORMAL
        # would lose the last commits to a power cut, and a client that got its 200 never
        # retries: its next step would be decided from an older state.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cur.close()
        deadline = [float("inf")]
        record.info["deadline"] = deadline
        record.info["timeout_s"] = settings.db_timeout_s
        # SQLite has no statement timeout: interrupt a statement that runs past its deadline.
        dbapi_conn.set_progress_handler(lambda: time.monotonic() > deadline[0], 10_000)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _arm(conn: sa.Connection, *_: Any) -> None:
        conn.info["deadline"][0] = time.monotonic() + settings.db_timeout_s

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _read_write_opener(path: str, timeout_s: float) -> Any:
    uri = f"file:{quote(os.path.abspath(path))}?mode=rw"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=timeout_s)

    return connect


def file_id(path: str) -> tuple[int, int] | None:
    """Which file is at ``path`` (device and inode), None if none is."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_file(path: str, known: tuple[int, int] | None) -> bool:
    return known is not None and file_id(path) == known


def sqlite_path(engine: Engine) -> str | None:
    """The database file of an SQLite engine on disk (None for memory or other databases)."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database or ""
    return None if path in ("", ":memory:") or path.startswith("file:") else path


def writer(engine: Engine) -> Engine:
    """The engine to use for a transaction that reads state and then writes it."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="IMMEDIATE")
    return engine


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
