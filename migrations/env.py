"""Alembic environment: lrpilot's schema, on the database lrpilot's settings name.

The URL is the one given explicitly (``lrpilot.store.db.upgrade(url)``, which ``lrpilot db
upgrade`` and ``lrpilot serve`` call, or ``alembic -x url=...``), else the settings object's
``database_url`` (``LRPILOT_DATABASE_URL``): ``alembic upgrade head`` run by hand migrates the
database that ``lrpilot serve`` would use, read by the same code.

Several ``lrpilot serve`` (replicas, or a restart racing a deploy) may migrate one database at
the same moment. Each migration is therefore one transaction that first takes a database-wide
lock and only then lets Alembic read the current revision: the first starter migrates, the others
wait for its commit, then find the schema at head and do nothing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context

from lrpilot.settings import Settings
from lrpilot.store.tables import SQLModel

config = context.config
target_metadata = SQLModel.metadata

# pg_advisory_xact_lock's key for "migrating lrpilot's schema": any fixed 64-bit number that no
# other user of the database takes; this one is the ASCII of "lrpilot" (0x6c7270696c6f74).
MIGRATION_LOCK_KEY = 0x6C7270696C6F74

# How long a starter waits for another one's migration before giving up ("database is
# locked" on SQLite, a lock timeout on PostgreSQL). Migrating an empty database takes
# milliseconds; a slow disk or a big future migration must not make the second replica fail,
# so this is generous.
SQLITE_BUSY_TIMEOUT_S = 120.0


def _url() -> str:
    # An explicit URL wins: lrpilot has already resolved its settings (a --database-url flag
    # included) when it passes one in attributes, and -x url= is the alembic CLI's own flag.
    explicit = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return str(explicit) if explicit else Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_engine(url: str) -> sa.Engine:
    """An engine whose transactions start with BEGIN IMMEDIATE (SQLite's write lock).

    pysqlite on its own opens a transaction only before INSERT/UPDATE/DELETE and runs DDL in
    autocommit, so two starters could both see an empty file and both create the tables. With the
    driver's own transaction handling off, the BEGIN below covers every statement, Alembic's
    read of alembic_version included.
    """
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def run_migrations_online() -> None:
    url = _url()
    sqlite = sa.make_url(url).get_backend_name() == "sqlite"
    engine = _sqlite_engine(url) if sqlite else sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                # Held until this transaction ends: released by the commit, or by the server
                # if this process dies mid-migration. A starter that hangs mid-migration with
                # its connection open must not hold the others forever: they give up after
                # the same generous wait as on SQLite.
                connection.exec_driver_sql(
                    f"SET LOCAL lock_timeout = '{int(SQLITE_BUSY_TIMEOUT_S * 1000)}ms'"
                )
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            # Configured inside the transaction, Alembic runs in it rather than opening its own.
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
