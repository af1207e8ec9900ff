"""Alembic environment: lrpilot's schema, on the URL given by lrpilot or LRPILOT_DATABASE_URL."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from lrpilot.store.tables import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    # lrpilot passes its URL in attributes; the alembic CLI reads the same setting lrpilot does.
    url = config.attributes.get("url") or os.environ.get("LRPILOT_DATABASE_URL")
    return str(url or "sqlite:///lrpilot.db")


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
