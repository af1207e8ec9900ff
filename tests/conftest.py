"""Shared fixtures: databases (SQLite always, PostgreSQL when LRPILOT_TEST_POSTGRES_URL is set),
the app in-process, and the real service under uvicorn on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from lrpilot.app import create_app
from lrpilot.settings import Settings
from lrpilot.store.db import upgrade
from tests.harness import LiveServer, free_port

__all__ = ["LiveServer", "free_port"]  # tests import them from here too

POSTGRES_URL = os.environ.get("LRPILOT_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def reset_postgres(url: str) -> None:
    """An empty public schema, so that every test starts from nothing and migrates it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


def empty_database(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'lrpilot.db'}"
    if not POSTGRES_URL:
        pytest.skip("LRPILOT_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    url = empty_database(request.param, tmp_path)
    upgrade(url)
    return url


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    """The app in-process (real database, real routing), for contract tests."""
    with TestClient(create_app(Settings(database_url=database_url))) as client:
        yield client


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real service under uvicorn on SQLite (a fresh file), stopped after the test."""
    server = LiveServer(f"sqlite:///{tmp_path / 'live.db'}").start()
    yield server
    server.stop()
