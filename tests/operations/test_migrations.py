"""Alembic is the only way the schema changes: the migrations must build exactly the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from lrpilot.store.db import alembic_config, upgrade
from lrpilot.store.tables import SQLModel
from tests.conftest import BACKENDS, empty_database
from tests.harness import REPO_DIR


def alembic_by_hand(*args: str, database_url: str) -> None:
    """The alembic CLI in the checkout's root (pyproject's [tool.alembic]), as an operator runs it,
    with LRPILOT_DATABASE_URL set as for ``lrpilot serve``."""
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_DIR, capture_output=True, text=True, timeout=300,
        env={**os.environ, "LRPILOT_DATABASE_URL": database_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def heads() -> set[str]:
    """The revision these migrations end at."""
    return set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def revision(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_alembic_by_hand_migrates_the_database_the_settings_name(
    backend: str, tmp_path: Path
) -> None:
    url = empty_database(backend, tmp_path)
    alembic_by_hand("upgrade", "head", database_url=url)
    assert revision(url) == heads()


def test_an_explicit_url_wins_over_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_settings = tmp_path / "from-settings.db"
    monkeypatch.setenv("LRPILOT_DATABASE_URL", f"sqlite:///{from_settings}")
    upgrade(f"sqlite:///{tmp_path / 'passed.db'}")  # lrpilot db upgrade --database-url, serve
    alembic_by_hand(
        "-x", f"url=sqlite:///{tmp_path / 'x-argument.db'}", "upgrade", "head",
        database_url=f"sqlite:///{from_settings}",
    )  # fmt: skip
    assert revision(f"sqlite:///{tmp_path / 'passed.db'}") == heads()
    assert revision(f"sqlite:///{tmp_path / 'x-argument.db'}") == heads()
    assert not from_settings.exists()
