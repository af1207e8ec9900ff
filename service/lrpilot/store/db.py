"""Engines and migrations: how lrpilot connects to SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lrpilot.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config


def is_sqlite(url: str) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


# -- bounded calls ---------------------------------------------------------------------------
#
# A database that does not answer at all (a frozen or partitioned PostgreSQL: the kernel still
# accepts the connection and acknowledges every byte, so neither statement_timeout, keepalives
# nor tcp_user_timeout ever fire) or a lock held outside the service must cost a request a
# bounded wait, never the whole freeze. So every call of the store runs inside ``bounded``: a
# deadline for this thread that each wait for the database obeys, whatever it waits on:
#
# * PostgreSQL: libpq runs non-blocking and ``_wait_for_postgres`` (psycopg2's wait callback)
#   does each wait, connect included, with a select() that ends at the deadline; past it, the
#   socket is shut down (libpq marks the connection broken, the pool discards it, and the
#   server rolls back what it had begun when it wakes up, unless a COMMIT had reached it: a
#   503 on a write means "not known", as with any database, and retrying it is safe) and the
#   call fails;
# * SQLite: the busy timeout of each transaction is what is left of the deadline, and the
#   progress handler interrupts a statement that runs past it;
# * the store's own waits (its in-process write lock) take what is left of it too.

_call = threading.local()


class DatabaseTimeout(Exception):
    """The database did not answer before the call's deadline (PostgreSQL: see
    ``_wait_for_postgres``, which raises it as a psycopg2 OperationalError)."""


@contextlib.contextmanager
def bounded(timeout_s: float) -> Iterator[None]:
    """Every wait for the database in this thread, inside the block, ends ``timeout_s`` from
    now at the latest (or at an enclosing block's deadline, if that comes first)."""
    outer = getattr(_call, "deadline", None)
    outer_timeout = getattr(_call, "timeout_s", None)
    deadline = time.monotonic() + timeout_s
    _call.deadline = deadline if outer is None else min(outer, deadline)
    _call.timeout_s = timeout_s
    try:
        yield
    finally:
        _call.deadline = outer
        _call.timeout_s = outer_timeout


def renew() -> None:
    """The database answered and the call makes progress (a long import that writes batch
    after batch): its deadline starts again from now. Outside a call, nothing."""
    timeout_s = getattr(_call, "timeout_s", None)
    if timeout_s is not None:
        _call.deadline = time.monotonic() + timeout_s


def remaining() -> float | None:
    """Seconds left before this thread's call deadline (0 when passed); None outside a call."""
    deadline: float | None = getattr(_call, "deadline", None)
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _wait_for_postgres(conn: Any, _cursor: Any = None) -> None:
    """psycopg2's wait callback: libpq's waits (connect, send, receive), each ending at the
    calling thread's deadline. Outside a bounded call, it waits as long as libpq would."""
    extensions = _psycopg2.extensions
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        deadline: float | None = getattr(_call, "deadline", None)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            _abandon(conn)
            raise _PostgresTimeout(
                f"the database did not answer within {getattr(_call, 'timeout_s', 0):g} s"
            )
        if state not in (extensions.POLL_READ, extensions.POLL_WRITE):  # pragma: no cover
            raise _psycopg2.OperationalError(f"unexpected poll state {state}")
        _ready(conn.fileno(), state == extensions.POLL_WRITE, left)


def _ready(fd: int, write: bool, timeout_s: float | None) -> None:
    """Wait until ``fd`` can be read (written), or ``timeout_s`` passed (None: no limit).
    poll(), not select(): a busy replica's sockets may be numbered beyond select's 1024."""
    if not hasattr(select, "poll"):  # Windows
        select.select([] if write else [fd], [fd] if write else [], [], timeout_s)
        return
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    poller.poll(None if timeout_s is None else max(0, math.ceil(timeout_s * 1000)))


def _abandon(conn: Any) -> None:
    """Shut the connection's socket down: libpq sees it closed and marks the connection broken
    (psycopg2's ``closed`` 2, which SQLAlchemy takes for a disconnect: the pool discards it,
    never hands it out again), and the server, once it runs again, rolls back."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(_psycopg2.Error):
        conn.poll()  # reads the end of the stream: the connection is marked broken now


_psycopg2: Any = None  # the driver, imported with the first PostgreSQL engine
_PostgresTimeout: Any = None


def _bound_postgres_waits() -> None:
    """Install the wait callback (once a process: psycopg2 has one for all connections)."""
    global _psycopg2, _PostgresTimeout
    if _psycopg2 is None:
        _psycopg2 = importlib.import_module("psycopg2")
        importlib.import_module("psycopg2.extensions")
        # an OperationalError, so that SQLAlchemy wraps it as every other driver error
        _PostgresTimeout = type(
            "DatabaseTimeout", (_psycopg2.OperationalError, DatabaseTimeout), {}
        )
    _psycopg2.extensions.set_wait_callback(_wait_for_postgres)


def make_engine(settings: Settings) -> Engine:
    """An engine whose write transactions serialise per run, and whose waits are bounded.

    PostgreSQL: the run's row lock (SELECT ... FOR UPDATE) serialises; statement_timeout and
    lock_timeout bound every statement on the server, and ``bounded`` every wait of the client
    (a server that does not answer at all). SQLite has one writer per file, so a write
    transaction starts with BEGIN IMMEDIATE (see ``writer``): it takes the write lock before it
    reads the run's state, and no two decisions can ever be made from the same state;
    busy_timeout bounds the wait for that lock and a progress handler bounds every statement
    (to the call's deadline inside ``bounded``, to ``db_timeout_s`` a statement outside).
    """
    url = settings.database_url
    timeout_ms = int(settings.db_timeout_s * 1000)
    if not is_sqlite(url):
        _bound_postgres_waits()
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.db_timeout_s,
            connect_args={
                "connect_timeout": max(1, round(settings.db_timeout_s)),
                "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
                # a peer that is gone for good (a host down) is noticed on idle pooled
                # connections too, not only by the next call that waits on one
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
                "tcp_user_timeout": timeout_ms,
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

        def expired() -> bool:
            # SQLite has no statement timeout: interrupt a statement that runs past the call's
            # deadline (outside a call: the statement's own, armed by _arm)
            call: float | None = getattr(_call, "deadline", None)
            return time.monotonic() > (deadline[0] if call is None else call)

        dbapi_conn.set_progress_handler(expired, 10_000)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _arm(conn: sa.Connection, *_: Any) -> None:
        conn.info["deadline"][0] = time.monotonic() + settings.db_timeout_s

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # a lock held elsewhere is waited for until the call's deadline (outside a call: for
        # db_timeout_s, as a new connection does)
        left = remaining()
        busy_ms = timeout_ms if left is None else int(left * 1000)
        info = conn.connection.info
        if info.get("busy_ms", timeout_ms) != busy_ms:
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute(f"PRAGMA busy_timeout={busy_ms}")
            info["busy_ms"] = busy_ms
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


class BackupError(Exception):
    """A backup that could not be made; the message says why, for an operator."""


def backup_sqlite(path: str, dest: Path, timeout_s: float) -> int:
    """Copy the SQLite database at ``path`` to ``dest`` while the service goes on writing it;
    returns the copy's size in bytes.

    SQLite's online backup, in one step: it reads one snapshot of the database, so the copy is
    consistent, and in WAL mode the service's writers go on meanwhile. (A backup in several
    steps restarts whenever another connection writes, and on a busy service might never
    finish.) The copy is written beside ``dest``, checked (``PRAGMA integrity_check``), synced
    and only then renamed onto ``dest``: ``dest`` is never half a copy, even after a crash."""
    source_file = file_id(path)
    if source_file is None:
        raise BackupError(f"there is no database file at {path}")
    if file_id(str(dest)) == source_file:
        raise BackupError(f"{dest} is the database itself")
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        partial.unlink(missing_ok=True)  # left by a killed backup of this pid
        source = _read_write_opener(path, timeout_s)()
        try:
            copy = sqlite3.connect(partial, timeout=timeout_s)
            try:
                source.backup(copy)  # pages=-1: every page in one step, one snapshot
                (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
                if verdict != "ok":
                    raise BackupError(f"the copy fails PRAGMA integrity_check: {verdict}")
            finally:
                copy.close()
        finally:
            source.close()
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
        return dest.stat().st_size
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite: {exc}") from exc
    except OSError as exc:
        raise BackupError(f"{exc.strerror or exc}: {exc.filename or dest}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    # Alembic is imported here, not with the module: it is 0.4 s of every CLI command's start
    # (lrpilot --version included), and only migrations need it.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # the migrations import their shared helpers (migrations/_common.py) from their folder
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("prepend_sys_path", str(migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
