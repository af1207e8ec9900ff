"""``lrpilot serve | db upgrade | db backup``: serve the API, migrate the database, copy a
SQLite database while it serves, and the start-up checks that turn a misconfigured deployment
into one line saying what to do."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from pydantic import ValidationError
from rich.console import Console

from lrpilot.cli._common import fail
from lrpilot.settings import Settings, safe_url

db = typer.Typer(
    help="The database: its schema (Alembic migrations) and backups.", no_args_is_help=True
)
console = Console(stderr=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LRPILOT_DATABASE_URL",
        help="SQLAlchemy URL; default sqlite:///lrpilot.db (a file in the working directory).",
        show_default=False,
    ),
]

POSTGRES_EXTRA = "pip install 'lrpilot[postgres]'"
# libpq waits for the OS's TCP timeout (minutes) on a host that drops packets; an operator
# starting the service wants the one-line answer sooner.
CONNECT_TIMEOUT_S = 10


def _settings(database_url: str | None) -> Settings:
    return Settings(database_url=database_url) if database_url else Settings.from_env()


@db.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None, revision: str = "head") -> None:
    """Apply the migrations up to REVISION (default: the latest)."""
    settings = _settings(database_url)
    check_database(settings.database_url)
    _migrate(settings.database_url, revision)
    console.print(
        f"[green]database at {safe_url(settings.database_url)} is at {revision}[/]", soft_wrap=True
    )


@db.command("backup")
def db_backup(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="where to write the copy", show_default=False)
    ],
    database_url: DatabaseUrl = None,
    force: Annotated[bool, typer.Option("--force", help="replace FILE if it exists")] = False,
) -> None:
    """Copy a SQLite database to FILE, consistently, while the service serves it."""
    from lrpilot.store.db import BackupError, backup_sqlite

    settings = _settings(database_url)
    url = _parse(settings.database_url)
    if url.get_backend_name() != "sqlite":
        fail(
            f"{_where(url)} is backed up with PostgreSQL's own tools: pg_dump (or a base "
            "backup with pg_basebackup); see docs/operations.md, Backup"
        )
    source = url.database or ""
    if source in ("", ":memory:") or source.startswith("file:"):
        fail(f"the database URL names no SQLite file ({settings.database_url})")
    if file.is_dir():
        fail(f"{file} is a directory; name the file to write")
    if not file.parent.is_dir():
        fail(f"the directory {file.parent} does not exist")
    if file.exists() and not force:
        fail(f"{file} exists; pass --force to replace it")
    try:
        size = backup_sqlite(source, file, settings.db_timeout_s)
    except BackupError as exc:
        fail(f"backing up {_where(url)} failed: {exc}")
    console.print(
        f"{_where(url)} copied to {file} ({size} bytes)",
        style="green",
        soft_wrap=True,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(db, name="db")


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    database_url: DatabaseUrl = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    no_migrate: Annotated[
        bool,
        typer.Option(
            "--no-migrate",
            help="Do not apply migrations; refuse to start unless the schema is already at the "
            "latest revision (for deployments that run `lrpilot db upgrade` as their own step).",
        ),
    ] = False,
    insecure_no_auth: Annotated[
        bool | None,
        typer.Option(
            "--insecure-no-auth",
            help="Serve a non-loopback --host although the database holds no API token: anyone "
            "who can reach the port may read, write, rewind and import every run "
            "[LRPILOT_INSECURE_NO_AUTH]",
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="one log line per request (request id, caller, run, status, duration) "
            "[LRPILOT_ACCESS_LOG: on]",
            show_default=False,
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            metavar="text|json",
            help="log lines as uvicorn's text, or one JSON object a line "
            "[LRPILOT_LOG_FORMAT: text]",
        ),
    ] = None,
    header_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--header-timeout",
            help="seconds a request's headers may take [LRPILOT_HEADER_TIMEOUT_S: 10]",
        ),
    ] = None,
    body_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--body-timeout",
            help="seconds a request body may go without bringing 64 KiB "
            "[LRPILOT_BODY_TIMEOUT_S: 30]",
        ),
    ] = None,
    keep_alive_timeout_s: Annotated[
        int | None,
        typer.Option(
            "--keep-alive-timeout",
            help="seconds an idle connection stays open between requests "
            "[LRPILOT_KEEP_ALIVE_TIMEOUT_S: 5]",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="open connections at most; more are answered 503 (kept below the file "
            "descriptor limit) [LRPILOT_MAX_CONNECTIONS: 16384]"
        ),
    ] = None,
    shutdown_drain_s: Annotated[
        float | None,
        typer.Option(
            "--shutdown-drain",
            help="on SIGTERM, seconds to serve on with /readyz saying draining "
            "[LRPILOT_SHUTDOWN_DRAIN_S: 1]",
        ),
    ] = None,
    shutdown_timeout_s: Annotated[
        int | None,
        typer.Option(
            "--shutdown-timeout",
            help="then, seconds the requests in flight get to finish "
            "[LRPILOT_SHUTDOWN_TIMEOUT_S: 5]",
        ),
    ] = None,
) -> None:
    """Apply migrations (unless --no-migrate), then serve the HTTP API."""
    from lrpilot import server
    from lrpilot.app import create_app
    from lrpilot.audit.signing import SigningKeyError

    settings = _serve_settings(ctx.params)
    check_database(settings.database_url)
    if no_migrate:
        _check_schema_is_current(settings.database_url)
    else:
        _migrate(settings.database_url)
    if not is_loopback(host) and not settings.insecure_no_auth:
        _require_tokens(settings, host)
    if settings.log_format == "text":  # in json, every line of the log is JSON
        console.print(
            f"lrpilot on http://{host}:{port} , database {safe_url(settings.database_url)}",
            soft_wrap=True,
            markup=False,
        )
    try:
        service = create_app(settings)
    except SigningKeyError as exc:
        which = "LRPILOT_TRUSTED_KEYS" if exc.trusted else "LRPILOT_SIGNING_KEY"
        fail(f"{exc}; {which} must name Ed25519 keys (`lrpilot keygen` writes a pair)")
    server.build(
        service,
        settings,
        host=host,
        port=port,
        log_level=log_level,
        drain=service.state.drain,
    ).run()


def _serve_settings(options: Mapping[str, object]) -> Settings:
    """The settings from the environment, with serve's options given on top of them: each
    option named as a setting (``header_timeout_s`` for --header-timeout) overrides it, so a
    new flag for a setting is one parameter of ``serve``. Not given is None (or an empty
    --database-url): the environment's, else the default, stands."""
    given = {
        name: value
        for name, value in options.items()
        if name in Settings.model_fields and value is not None and value != ""
    }
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        fail(f"{name} (LRPILOT_{name.upper()}): {error['msg']}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost is
    taken as reachable from elsewhere)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require_tokens(settings: Settings, host: str) -> None:
    """A bind reachable from the network serves nobody's runs without tokens (open mode is for
    loopback): refuse to start while the database holds none."""
    from lrpilot.domain.errors import Unavailable
    from lrpilot.store.runs import Store
    from lrpilot.store.tokens import Tokens

    store = Store(settings)
    try:
        exist = Tokens(store).exist()
    except Unavailable as exc:
        fail(f"reading the tokens of {_where(sa.make_url(settings.database_url))} failed: {exc}")
    finally:
        store.close()
    if not exist:
        fail(
            f"--host {host} is reachable from the network and the database holds no API token, "
            "so anyone could read, write and rewind every run: create one first with `lrpilot "
            "token create --project default --role admin --database-url URL` (or serve on "
            "127.0.0.1, or pass --insecure-no-auth to serve without authentication anyway)"
        )


# ---------------------------------------------------------------------------------------------
# start-up checks: a misconfigured deployment gets one line that says what to do, not a traceback


def _where(url: sa.URL) -> str:
    """Where a URL points, for an operator: host and port, never the password."""
    if url.get_backend_name() == "sqlite":
        return f"the SQLite file {url.database or ':memory:'}"
    port = url.port or 5432
    host = url.host or "the local Unix socket"
    user = f" as user {url.username}" if url.username else ""
    return f"PostgreSQL at {host}:{port} (database {url.database}{user})"


def _reason(exc: BaseException, url: sa.URL) -> str:
    """The driver's own words, on one line, with the password taken out should it appear."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line for line in str(orig).splitlines() if line.strip()]
    text = lines[0] if lines else type(orig).__name__
    # libpq: 'connection to server at "h", port 5432 failed: <the reason>': host and port are
    # already in our message.
    text = text.rsplit(" failed: ", 1)[-1]
    text = re.sub(r"\s+", " ", text).strip()
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _parse(raw: str) -> sa.URL:
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        fail(
            "the database URL is not a SQLAlchemy URL; use sqlite:///PATH or "
            "postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        fail(f"lrpilot stores its data in SQLite or PostgreSQL, not {backend}")
    return url


def _check_driver(url: sa.URL) -> None:
    driver = url.get_driver_name()
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except sa.exc.NoSuchModuleError:
        fail(f"unknown database driver {url.drivername!r}; use postgresql+psycopg2://")
    except ImportError:
        if driver == "psycopg2":
            fail(f"the PostgreSQL driver psycopg2 is not installed: {POSTGRES_EXTRA}")
        if url.drivername == "postgresql":
            # SQLAlchemy picks the driver of a bare postgresql:// URL (psycopg since 2.1), which
            # need not be the one lrpilot's extra installs.
            fail(
                f"the URL names no driver (postgresql://) and SQLAlchemy's default, {driver}, "
                f"is not installed: write postgresql+psycopg2:// and {POSTGRES_EXTRA}"
            )
        fail(
            f"the database driver {driver} named by the URL ({url.drivername}://) is not "
            f"installed: install it, or use postgresql+psycopg2:// with {POSTGRES_EXTRA}"
        )


def check_database(raw_url: str) -> None:
    """Exit with one line unless the URL names a database whose driver is here and that answers.

    Checked once before migrating or serving, so that each way a deployment can be wrong (no
    driver, wrong host, server down, bad password) is said plainly, with what to check.
    """
    url = _parse(raw_url)
    _check_driver(url)
    psycopg2 = url.get_driver_name() == "psycopg2"
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if psycopg2 else {}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        if url.get_backend_name() == "sqlite":
            fail(
                f"cannot open {_where(url)}: {_reason(exc, url)}; check that its directory "
                "exists and that this user may write there"
            )
        fail(
            f"cannot connect to {_where(url)}: {_reason(exc, url)}; check that PostgreSQL runs "
            "and accepts TCP connections there, and the host, port, user and password in "
            "--database-url or LRPILOT_DATABASE_URL"
        )
    finally:
        engine.dispose()


@contextlib.contextmanager
def _database_errors(raw_url: str, doing: str) -> Iterator[None]:
    """A database error after the check (the server went away, a lock timed out): one line."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        url = sa.make_url(raw_url)
        fail(f"{doing} {_where(url)} failed: {_reason(exc, url)}")


def _migrate(raw_url: str, revision: str = "head") -> None:
    from lrpilot.store.db import upgrade

    with _database_errors(raw_url, "migrating"):
        upgrade(raw_url, revision)


def _check_schema_is_current(raw_url: str) -> None:
    """--no-migrate: refuse to serve a schema that this version's migrations did not produce."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from lrpilot.store.db import alembic_config

    heads = set(ScriptDirectory.from_config(alembic_config(raw_url)).get_heads())
    engine = sa.create_engine(raw_url, poolclass=sa.pool.NullPool)
    try:
        with _database_errors(raw_url, "reading the schema revision of"), engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    if current != heads:
        at = f"is at revision {', '.join(sorted(current))}" if current else "has no lrpilot schema"
        fail(
            f"{_where(sa.make_url(raw_url))} {at}, this lrpilot needs revision "
            f"{', '.join(sorted(heads))}: run `lrpilot db upgrade` first (or serve without "
            "--no-migrate)"
        )
