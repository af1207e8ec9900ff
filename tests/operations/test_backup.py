"""`lrpilot db backup FILE`: a consistent copy of a SQLite database while the real service
writes it, and the refusals (PostgreSQL, an existing FILE, a missing directory) in one line;
and the PostgreSQL backup that docs/operations.md gives (pg_dump, pg_restore), run."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from lrpilot.store.db import upgrade
from tests.harness import LiveServer
from tests.helpers import lrpilot_cli, one_line, run_spec
from tests.operations.test_kill import decision_log

RUNS = ("a", "b", "c")
BACKUPS = 3  # each taken while observations are being decided


def _observe(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """A training job's loop over every run, step after step, until told to stop."""
    with httpx.Client(base_url=url, timeout=30) as http:
        step = 0
        while not stop.is_set():
            step += 1
            for run_id in RUNS:
                body = {"step": step, "value": 1.0 / (1 + step // 5)}
                r = http.post(f"/v1/runs/{run_id}/observations", json=body)
                assert r.status_code == 200, r.text
                counts[run_id] = step


def test_backup_while_serving_is_consistent_and_serves(tmp_path: Path) -> None:
    database = tmp_path / "live.db"
    copies = [tmp_path / f"copy-{i}.db" for i in range(BACKUPS)]
    stop = threading.Event()
    counts: dict[str, int] = {}
    errors: list[BaseException] = []

    def observe() -> None:
        try:
            _observe(server.url, stop, counts)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    with LiveServer(f"sqlite:///{database}") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for run_id in RUNS:
                spec = run_spec({"patience": 2})
                assert http.put(f"/v1/runs/{run_id}", json=spec).status_code in (200, 201)
        writer = threading.Thread(target=observe)
        writer.start()
        try:
            for copy in copies:
                before = sum(counts.values())
                while sum(counts.values()) < before + 10 and not errors:  # mid-stream
                    stop.wait(0.01)
                acknowledged = dict(counts)
                done = lrpilot_cli("db", "backup", str(copy), "--database-url",
                                   f"sqlite:///{database}")  # fmt: skip
                assert done.exit_code == 0, done.output
                assert str(copy) in one_line(done.output)
        finally:
            stop.set()
            writer.join(timeout=60)
        assert not errors, errors
        live_logs = {run_id: decision_log(server, run_id)[0] for run_id in RUNS}

    for copy in copies:
        with sqlite3.connect(copy) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The last copy, served: every run verifies, and holds a beginning of what the live service
    # decided (the copy is one moment of it, not a mix of two).
    with LiveServer(f"sqlite:///{copies[-1]}", migrate=False) as restored:
        with httpx.Client(base_url=restored.url, timeout=30) as http:
            listed = http.get("/v1/runs", params={"limit": 100}).json()["items"]
            assert sorted(run["run_id"] for run in listed) == sorted(RUNS)
            for run_id in RUNS:
                verified = http.post(f"/v1/runs/{run_id}/verify", json={}).json()
                assert verified["ok"] is True, verified
        for run_id in RUNS:
            restored_log = decision_log(restored, run_id)[0]
            # all that was acknowledged before the backup began is in it (WAL included)
            assert len(restored_log) >= acknowledged[run_id] > 0, run_id
            assert restored_log == live_logs[run_id][: len(restored_log)], run_id
        sizes = {len(decision_log(restored, run_id)[0]) for run_id in RUNS}
    # observations go to the runs in turn, so one snapshot shows them at most one step apart
    assert max(sizes) - min(sizes) <= 1, sizes


def test_backup_refuses_postgres_an_existing_file_and_a_missing_directory(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    target = tmp_path / "copy.db"

    def backup(*args: str) -> tuple[int, str]:
        done = lrpilot_cli("db", "backup", *args)
        return done.exit_code, one_line(done.output)

    code, out = backup(str(target), "--database-url", "postgresql+psycopg2://u:secret@db/x")
    assert code == 1 and "pg_dump" in out and "secret" not in out, out
    assert not target.exists()

    assert backup(str(target), "--database-url", url)[0] == 0
    target_bytes = target.read_bytes()
    code, out = backup(str(target), "--database-url", url)
    assert code == 1 and "exists" in out and "--force" in out, out
    assert backup(str(target), "--database-url", url, "--force")[0] == 0
    assert target.read_bytes()[:16] == target_bytes[:16] == b"SQLite format 3\x00"

    code, out = backup(str(tmp_path / "missing" / "copy.db"), "--database-url", url)
    assert code == 1 and "does not exist" in out, out
    code, out = backup(str(tmp_path), "--database-url", url, "--force")
    assert code == 1 and "directory" in out, out
    code, out = backup(str(tmp_path / "y.db"), "--database-url", f"sqlite:///{tmp_path / 'no.db'}")
    assert code == 1 and "no database file" in out, out
    code, out = backup(str(tmp_path / "x.db"), "--database-url", url, "--force")
    assert code == 1 and "the database itself" in out, out
    assert "Traceback" not in out
    assert not list(tmp_path.glob(".*.partial")), "a backup left its partial copy behind"


@pytest.mark.postgres
def test_the_documented_pg_dump_and_pg_restore_round_trip(
    postgres_url: str, tmp_path: Path
) -> None:
    """docs/operations.md, "Backup": pg_dump -Fc while the service serves, pg_restore --clean
    --if-exists --single-transaction onto the database, and the service serves it again."""
    for tool in ("pg_dump", "pg_restore"):
        assert shutil.which(tool), f"{tool} is not installed (postgresql-client)"
    libpq_url = sa.make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    dump = tmp_path / "lrpilot.dump"
    with LiveServer(postgres_url) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.put("/v1/runs/r1", json=run_spec()).status_code in (200, 201)
            for step in range(1, 6):
                body = {"step": step, "value": 1.0 / step}
                assert http.post("/v1/runs/r1/observations", json=body).status_code == 200
            subprocess.run(["pg_dump", "-Fc", "-d", libpq_url, "-f", str(dump)],
                           check=True, timeout=120)  # fmt: skip
            body = {"step": 6, "value": 0.1}  # after the dump: gone once restored
            assert http.post("/v1/runs/r1/observations", json=body).status_code == 200
        before = decision_log(server, "r1")[0]
    restore = ["pg_restore", "-d", libpq_url, "--clean", "--if-exists", "--single-transaction"]
    subprocess.run([*restore, str(dump)], check=True, timeout=120, capture_output=True)
    with LiveServer(postgres_url, migrate=False) as restored:
        with httpx.Client(base_url=restored.url, timeout=30) as http:
            assert http.post("/v1/runs/r1/verify", json={}).json()["ok"] is True
        assert decision_log(restored, "r1")[0] == before[:5]
