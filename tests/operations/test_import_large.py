"""Large imports (issue 14): SQLite imports a bundle of many decisions while other requests keep
their bounded waits (the import never holds the write lock for long in one piece), and an import
killed halfway (SIGKILL) leaves nothing behind once the service is started again: no rows, no
spooled files.

The real service (uvicorn on 127.0.0.1), real databases, httpx. The bundle is built by the
service's own decide path (every line what the service would have stored): 100,000 decisions by
default, LRPILOT_TEST_IMPORT_DECISIONS for more (the issue's figure is 1,000,000).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from lrpilot.audit.bundle import header_line, trailer_line
from lrpilot.domain.deciding import decide, new_run, now
from lrpilot.domain.logs import spool_dir
from lrpilot.entries import run_genesis
from lrpilot.settings import Settings
from lrpilot.spec import RunSpec
from lrpilot.store.records import RunHead, Stored
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import run_spec

DECISIONS = int(os.environ.get("LRPILOT_TEST_IMPORT_DECISIONS", "100000"))
NDJSON = {"content-type": "application/x-ndjson"}
GIVE_UP_S = 600.0  # only a hang takes this long


def build_bundle(path: Path, run_id: str, count: int) -> str:
    """A bundle of ``count`` decisions of a plateau run, decided by the service's code; its
    head hash."""
    spec = RunSpec.model_validate(run_spec({"patience": 5}))
    run = new_run(run_id, spec, now())
    head = RunHead(
        run.spec,
        Stored(run.state),
        Stored(run.lrs),
        0,
        None,
        run_genesis(run.spec.header_doc()),
        None,
        run.project,
    )
    header = header_line(run.spec)
    with path.open("w") as out:
        out.write(header + "\n")
        for k in range(1, count + 1):
            value = (1.0 / (1.0 + 0.001 * k)) * (1.0 + 0.03 * ((k * 2654435761) % 1000) / 1000)
            decision = decide(head, 10 * k, value)
            out.write(decision.body + "\n")
            head = head.after(decision)
        out.write(trailer_line(header, count, head.head_hash) + "\n")
    return head.head_hash


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("large") / "large.ndjson"
    return path, build_bundle(path, "large", DECISIONS)


def post_bundle(url: str, path: Path) -> httpx.Response:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    with httpx.Client(base_url=url, timeout=GIVE_UP_S) as c:
        return c.post("/v1/runs/import", content=chunks(), headers=NDJSON)


def test_sqlite_imports_a_large_bundle_while_other_requests_keep_their_waits(
    tmp_path: Path, large_bundle: tuple[Path, str]
) -> None:
    path, head = large_bundle
    # a short timeout: before, the one transaction of the import outlasted it and was cut off
    env = {"LRPILOT_DB_TIMEOUT_S": "0.5"}
    with LiveServer(f"sqlite:///{tmp_path / 'live.db'}", env=env) as server:
        with httpx.Client(base_url=server.url, timeout=GIVE_UP_S) as c:
            assert c.put("/v1/runs/other", json=run_spec()).status_code == 201
        done = threading.Event()
        statuses: list[int] = []

        def observer() -> None:
            step = 0
            with httpx.Client(base_url=server.url, timeout=GIVE_UP_S) as c:
                while not done.is_set():
                    step += 1
                    r = c.post("/v1/runs/other/observations", json={"step": step, "value": 1.0})
                    statuses.append(r.status_code)

        thread = threading.Thread(target=observer)
        thread.start()
        try:
            r = post_bundle(server.url, path)
        finally:
            done.set()
            thread.join(timeout=GIVE_UP_S)
        assert r.status_code == 201, r.text
        assert r.json()["counts"]["decisions"] == DECISIONS
        assert r.json()["head_hash"] == head
        assert statuses, "no observation was answered during the import"
        refused = [s for s in statuses if s != 200]
        assert not refused, f"{len(refused)} of {len(statuses)} observations refused: {refused[:5]}"
        with httpx.Client(base_url=server.url, timeout=GIVE_UP_S) as c:
            report = c.post("/v1/runs/large/verify").json()
        assert report["ok"] is True and report["count"] == DECISIONS, report


def _rows(url: str, run_id: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM decisions WHERE run_id = :r"), {"r": run_id}
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_import_killed_halfway_leaves_nothing_after_a_restart(
    backend: str, tmp_path: Path, large_bundle: tuple[Path, str]
) -> None:
    path, head = large_bundle
    url = empty_database(backend, tmp_path)
    with LiveServer(url) as server:
        database_file = str(tmp_path / "lrpilot.db") if backend == "sqlite" else None
        spool = spool_dir(Settings(database_url=url), database_file)
        thread = threading.Thread(target=lambda: _ignore_errors(server.url, path))
        thread.start()
        deadline = time.monotonic() + GIVE_UP_S
        # the check passed and the log is being written: its journal is there (and on SQLite,
        # slices of the log are committed already)
        while not list(spool.glob("import-*.run")) or (
            backend == "sqlite" and _rows(url, "large") == 0
        ):
            assert time.monotonic() < deadline, "the import never began writing"
            time.sleep(0.01)
        server.kill()
        thread.join(timeout=GIVE_UP_S)
        assert list(spool.glob("import-*")), "the killed import left no spooled file"
        if backend == "sqlite":
            assert _rows(url, "large") > 0  # what the restart must remove
        server.restart()
        assert _rows(url, "large") == 0
        assert not list(spool.glob("import-*")), list(spool.iterdir())
        with httpx.Client(base_url=server.url, timeout=GIVE_UP_S) as c:
            assert c.get("/v1/runs/large").status_code == 404
        r = post_bundle(server.url, path)  # and the same bundle imports whole
        assert r.status_code == 201, r.text
        assert r.json()["head_hash"] == head


def _ignore_errors(url: str, path: Path) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server was killed under it
        post_bundle(url, path)
