"""Shared fixtures, one place for each thing a test needs from outside itself:

* databases: ``database_url`` (a migrated, empty database on SQLite and, when
  LRPILOT_TEST_POSTGRES_URL is set, PostgreSQL), ``postgres_url`` (an empty PostgreSQL database);
  under pytest-xdist each worker has a PostgreSQL database of its own (``POSTGRES_URL``);
* the app in-process: ``api`` (a TestClient on ``database_url``), and ``app_client`` for a test
  that needs another app (a second database, a module-scoped app, other options);
* the real service under uvicorn on 127.0.0.1: ``live_server`` (SQLite), ``backend_server``
  (each backend), ``module_server`` (one for a module), ``postgres_replicas`` (two replicas on
  one PostgreSQL database).

The CLI in this process (typer's CliRunner) is ``tests.helpers.lrpilot_cli``; the server
harness is ``tests.harness.LiveServer``. Helpers a test calls outside a fixture (a backend
inside a parametrized test, a module-scoped app) are plain functions here: ``empty_database``,
``reset_postgres``, ``app_client``."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from lrpilot.app import create_app
from lrpilot.settings import Settings
from lrpilot.store.db import upgrade
from tests.harness import LiveServer


def worker_database(url: str | None, worker: str | None) -> str | None:
    """The PostgreSQL URL a test process uses: ``url`` itself, or under pytest-xdist (worker
    ``gwN``) the database ``<name>_gwN`` on the same server, since every test empties the public
    schema of the database it uses and two workers on one would empty each other's."""
    if not url or not worker:
        return url
    parsed = sa.make_url(url)
    return parsed.set(database=f"{parsed.database}_{worker}").render_as_string(False)


# The one place the tests read LRPILOT_TEST_POSTGRES_URL. Written back, so that a subprocess a
# test starts (a script given the variable) uses this worker's database too.
GIVEN_POSTGRES_URL = os.environ.get("LRPILOT_TEST_POSTGRES_URL")
POSTGRES_URL = worker_database(GIVEN_POSTGRES_URL, os.environ.get("PYTEST_XDIST_WORKER"))
if POSTGRES_URL:
    os.environ["LRPILOT_TEST_POSTGRES_URL"] = POSTGRES_URL
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@functools.cache
def postgres_test_url() -> str:
    """``POSTGRES_URL``, its database created first when missing (a worker's, the first time:
    the role needs CREATEDB, as .ci/run's has); the test is skipped when there is none."""
    if not POSTGRES_URL or not GIVEN_POSTGRES_URL:
        pytest.skip("LRPILOT_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    if POSTGRES_URL != GIVEN_POSTGRES_URL:
        name = sa.make_url(POSTGRES_URL).database
        # from the database the variable names, which exists
        engine = sa.create_engine(GIVEN_POSTGRES_URL, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                query = "SELECT 1 FROM pg_database WHERE datname = %(name)s"
                if conn.exec_driver_sql(query, {"name": name}).first() is None:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except sa.exc.ProgrammingError as exc:
            pytest.fail(f"cannot create the test database {name} (create it for the test role, "
                        f"or grant that role CREATEDB): {exc.orig}", pytrace=False)  # fmt: skip
        finally:
            engine.dispose()
    return POSTGRES_URL


def reset_postgres(url: str) -> None:
    """An empty public schema, so that every test starts from nothing and migrates it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


def empty_database(backend: str, tmp_path: Path) -> str:
    """The URL of an empty, unmigrated database: a new SQLite file in ``tmp_path``, or the test
    PostgreSQL database emptied (the test is skipped when there is none)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'lrpilot.db'}"
    url = postgres_test_url()
    reset_postgres(url)
    return url


@contextmanager
def app_client(
    database_url: str,
    *,
    migrate: bool = True,
    raise_server_exceptions: bool = True,
    fast_path: bool = True,
    peer: str = "testclient",
    **settings: Any,
) -> Iterator[TestClient]:
    """The app in-process on ``database_url`` (migrated first unless ``migrate=False``), its
    lifespan run as when it serves. ``raise_server_exceptions=False`` turns a 500 into a
    response, for tests that count them instead of stopping at the first; ``settings`` are
    Settings fields other than the database's (e.g. ``max_world_size=8``); ``peer`` is the
    address requests come from (an IP of another machine, for the rules about those; from a
    loopback address, requests are addressed to http://localhost, as open mode requires)."""
    if migrate:
        upgrade(database_url)
    app = create_app(Settings(database_url=database_url, **settings), fast_path=fast_path)
    base_url = "http://localhost" if peer in ("127.0.0.1", "::1") else "http://testserver"
    with TestClient(
        app,
        base_url=base_url,
        raise_server_exceptions=raise_server_exceptions,
        client=(peer, 50000),
    ) as client:
        yield client


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    url = empty_database(request.param, tmp_path)
    upgrade(url)
    return url


@pytest.fixture
def postgres_url(tmp_path: Path) -> str:
    """The test PostgreSQL database, empty and unmigrated (skipped when there is none): for the
    tests about PostgreSQL alone (replicas, its locks), which carry ``@pytest.mark.postgres``."""
    return empty_database("postgres", tmp_path)


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    """The app in-process (real database, real routing), for contract tests."""
    with app_client(database_url, migrate=False) as client:
        yield client


@pytest.fixture(scope="module")
def module_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in-process on one fresh SQLite file for a whole module, whose tests only read
    what needs no run (the pages it serves: /docs, /ui/)."""
    with app_client(f"sqlite:///{tmp_path_factory.mktemp('module') / 'api.db'}") as client:
        yield client


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real service under uvicorn on SQLite (a fresh file), stopped after the test."""
    with LiveServer(f"sqlite:///{tmp_path / 'live.db'}") as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """The real service on an empty database of each backend, stopped after the test."""
    with LiveServer(empty_database(request.param, tmp_path)) as server:
        yield server


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real service on SQLite for a whole module, whose tests each use their own run ids:
    for slow tests (frameworks training) that need not pay for a server each."""
    with LiveServer(f"sqlite:///{tmp_path_factory.mktemp('module') / 'live.db'}") as server:
        yield server


@pytest.fixture
def postgres_replicas(postgres_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two replicas of the real service on one PostgreSQL database; the first migrates it."""
    with LiveServer(postgres_url) as first, LiveServer(postgres_url, migrate=False) as second:
        yield first, second
