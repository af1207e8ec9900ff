"""Shared fixtures: databases (SQLite always, PostgreSQL when LRPILOT_TEST_POSTGRES_URL is set),
the app in-process, and the real service under uvicorn on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from lrpilot.app import create_app
from lrpilot.settings import Settings
from lrpilot.store.db import upgrade

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``lrpilot serve`` in a subprocess on 127.0.0.1: the service as users run it."""

    def __init__(self, database_url: str, port: int | None = None) -> None:
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkdtemp(prefix="lrpilot-serve-")) / "serve.log"

    def start(self, timeout: float = 30.0) -> LiveServer:
        cmd = [sys.executable, "-m", "lrpilot.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--database-url", self.database_url,
               "--log-level", "warning"]  # fmt: skip
        with self.log.open("ab") as log:  # a file, not a pipe: a chatty server never blocks
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")
                raise RuntimeError(f"lrpilot serve exited with {self.proc.returncode}: {err}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"lrpilot serve did not become ready within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real service under uvicorn on SQLite (a fresh file), stopped after the test."""
    server = LiveServer(f"sqlite:///{tmp_path / 'live.db'}").start()
    yield server
    server.stop()
