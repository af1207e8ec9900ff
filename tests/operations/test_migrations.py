"""Alembic is the only way the schema changes: the migrations must build exactly the models."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from lrpilot.store.db import alembic_config, upgrade
from lrpilot.store.tables import SQLModel
from tests.conftest import BACKENDS, empty_database


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_and_models_agree(backend: str, tmp_path: Path) -> None:
    url = empty_database(backend, tmp_path)
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_downgrade_to_base_and_up_again(backend: str, tmp_path: Path) -> None:
    url = empty_database(backend, tmp_path)
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = sa.create_engine(url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    engine = sa.create_engine(url)
    assert {"runs", "decisions", "run_labels"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()
