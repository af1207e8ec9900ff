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


@pytest.mark.parametrize("backend", BACKENDS)
def test_0008_keys_existing_rows_by_the_project_of_their_run(backend: str, tmp_path: Path) -> None:
    """Runs made before 0008 keep everything through it: their decisions, labels and a rank's
    pending report go to their run's project, and the same run id becomes free for another
    project. Down to 0007 and up again too. On SQLite (the only database where an import
    writes a log before its run row), what an import killed before 0008 left goes to
    "default", where its journal, a bare run id, has the startup look for it."""
    from lrpilot.domain.deciding import now
    from tests.conftest import app_client
    from tests.helpers import bearer, make_token, run_spec

    url = empty_database(backend, tmp_path)
    upgrade(url)
    mine, theirs = bearer(make_token(url, "p1", "admin")), bearer(make_token(url, "p2", "admin"))
    aggregated = {**run_spec(), "aggregate": {"timeout_s": 600, "on_timeout": "decide"}}
    with app_client(url, migrate=False) as client:
        put = client.put("/v1/runs/a", json=run_spec(labels={"team": "x"}), headers=mine)
        assert put.status_code == 201, put.text
        for step in (1, 2, 3):
            obs = {"step": step, "value": 1.0}
            assert client.post("/v1/runs/a/observations", json=obs, headers=mine).status_code == 200
        assert client.put("/v1/runs/agg", json=aggregated, headers=mine).status_code == 201
        head = client.get("/v1/runs/a", headers=mine).json()["head_hash"]
    command.downgrade(alembic_config(url), "0007")  # one project per run id: it comes down
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as 0007 stored them: rows named by run_id alone
        conn.execute(
            sa.text(
                "INSERT INTO reports (run_id, step, rank, world_size, value, weight, created_at) "
                "VALUES ('agg', 1, 0, 2, '0.5', 1.0, :at)"
            ),
            {"at": now()},
        )
        if backend == "sqlite":
            conn.execute(
                sa.text(
                    "INSERT INTO decisions (run_id, seq, step, action, superseded, hash, body) "
                    "VALUES ('ghost', 1, 1, 'hold', :no, 'h', '{}')"
                ),
                {"no": False},
            )
    upgrade(url)
    with engine.connect() as conn:
        keyed = {
            table: set(conn.execute(sa.text(f"SELECT DISTINCT project, run_id FROM {table}")))
            for table in ("decisions", "run_labels", "reports")
        }
    ghost = {("default", "ghost")} if backend == "sqlite" else set()
    assert keyed == {
        "decisions": {("p1", "a"), *ghost},
        "run_labels": {("p1", "a")},
        "reports": {("p1", "agg")},
    }
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "import-4194303-0.run").write_text("ghost")  # a dead process's, before 0008
    with app_client(url, migrate=False, spool_dir=str(spool)) as client:
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM decisions WHERE run_id = 'ghost'"))
            assert left.scalar() == 0
        engine.dispose()
        verified = client.post("/v1/runs/a/verify", headers=mine).json()
        assert verified["ok"] and verified["head_hash"] == head, verified
        assert client.get("/v1/runs/a", headers=theirs).status_code == 404
        assert client.put("/v1/runs/a", json=run_spec(), headers=theirs).status_code == 201
        assert client.get("/v1/runs?label=team:x", headers=mine).json()["items"][0]["run_id"] == "a"
        obs = {"step": 1, "value": 1.5, "rank": 1, "world_size": 2}
        decided = client.post("/v1/runs/agg/observations", json=obs, headers=mine)
        # the report kept through 0008 counted, in the tally 0009 made of the reports it found
        assert decided.status_code == 200, decided.text
        assert [r["rank"] for r in decided.json()["ranks"]] == [0, 1]
        assert decided.json()["value"] == 1.0  # the mean of 0.5 and 1.5
