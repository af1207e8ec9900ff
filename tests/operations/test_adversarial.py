"""Adversarial tests: the decision path as a hostile user and an operator would treat it.

Real servers (``lrpilot serve`` under uvicorn), real databases, no mocks. The last tests
reproduce bugs that attacking the service found (a locked run stalling a PostgreSQL replica,
a moved SQLite file swallowing acknowledged decisions): they failed until those were fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from lrpilot.entries import verify_chain
from tests.conftest import BACKENDS, empty_database
from tests.harness import DatabaseLock, LiveServer
from tests.helpers import run_spec, strict_json
from tests.operations.test_races import (
    RANKS,
    STEPS,
    VALUES,
    ProcessFleet,
    _post_steps,
    logs,
    servers,
)

DB_TIMEOUT_S = 1.0
# A request held up by stalled connections would wait as long as they stall (the whole test):
# a generous bound fails on that, never on a loaded machine (speed is measured in bench/).
HANG_S = 10.0


def decisions_of(url: str, run_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/v1/runs/{run_id}/decisions", params={"limit": 1000}, timeout=30)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = strict_json(r.text)["items"]
    return items


# ---------------------------------------------------------------------------------------------
# guards: attacks that held up, kept so that they keep holding


def test_two_serves_on_one_sqlite_file_give_every_rank_the_one_decision_of_a_step(
    tmp_path: Path,
) -> None:
    """Two replicas on one SQLite file (an operator's mistake that must still be safe): ranks
    spread across both post the same steps; one decision a step, the same bytes for all."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with servers(url, 2) as fleet:
        created = httpx.put(f"{fleet[0].url}/v1/runs/shared", json=run_spec({"patience": 2}))
        assert created.status_code == 201, created.text
        args = [(fleet[rank % 2].url, "shared", VALUES) for rank in range(RANKS)]
        answers = ProcessFleet(_post_steps, args).start().results()
        for step in range(1, STEPS + 1):
            got = [answers[rank][step - 1] for rank in range(RANKS)]
            assert {status for status, _ in got} == {200}, f"step {step}: {got}\n{logs(fleet)}"
            assert len({text for _, text in got}) == 1, f"step {step}: ranks got different bytes"
        items = decisions_of(fleet[1].url, "shared")
        assert [d["step"] for d in items] == list(range(1, STEPS + 1))
        assert verify_chain(items).ok


# (step, the value's JSON text, expected status): retries that must be answered with the same
# decision, and look-alike values that must be refused as another value for the same step
HOSTILE_NUMBERS = [
    (1, "1e400", 200),
    (1, '"Infinity"', 200),
    (1, "Infinity", 200),
    (2, "-0.0", 200),
    (2, "0.0", 409),  # -0.0 and 0.0 are different floats
    (2, "-0", 409),  # a JSON integer: 0, not -0.0
    (2, "-0.0", 200),
    (3, "NaN", 200),
    (3, '"NaN"', 200),
    (4, "5e-324", 200),
    (4, "4.9e-324", 200),  # parses to the same denormal
    (5, "1e-400", 200),  # underflows to 0.0
    (5, "0", 200),
    (5, "-1e-400", 409),  # underflows to -0.0
    (6, "1.7976931348623157e308", 200),
    (7, "0.1", 200),
    (7, "0.10000000000000001", 200),  # the same double
    (7, "0.1000000000000001", 409),
    (1, "1e400", 200),  # an old step retried after newer ones
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_of_hostile_numbers_are_answered_with_the_one_decision(
    backend: str, tmp_path: Path
) -> None:
    url = empty_database(backend, tmp_path)
    with LiveServer(url) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.put("/v1/runs/n", json=run_spec({"patience": 1})).status_code == 201
        first: dict[int, bytes] = {}
        for step, value, expected in HOSTILE_NUMBERS:
            body = f'{{"step": {step}, "value": {value}}}'
            r = http.post(
                "/v1/runs/n/observations",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == expected, f"{body}: {r.status_code} {r.text}"
            strict_json(r.text)
            if r.status_code == 200:
                assert first.setdefault(step, r.content) == r.content, f"{body}: another answer"
        items = decisions_of(server.url, "n")
        assert [d["step"] for d in items] == sorted(first)
        assert verify_chain(items).ok
        assert all(json.loads(first[d["step"]]) == d for d in items)
        run = strict_json(http.get("/v1/runs/n").text)
        assert run["counts"]["decisions"] == len(first), "a retry counted twice"


def test_writers_waiting_on_a_held_sqlite_lock_answer_in_bound_and_agree_after(
    tmp_path: Path,
) -> None:
    """240 observations (40 runs x 3 steps, each posted twice) arrive while an sqlite3 shell
    holds the write lock for a while, then lets go: each is answered within the bound, 200 or
    503 with Retry-After, and whatever was answered 200 is what the log holds afterwards."""
    path = tmp_path / "held.db"
    server = LiveServer(f"sqlite:///{path}", env={"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)})
    runs = [f"r{k}" for k in range(40)]

    async def attack() -> list[tuple[str, int, int, float, bytes, str | None]]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
            for run_id in runs:
                r = await http.put(f"/v1/runs/{run_id}", json=run_spec({"patience": 1}))
                assert r.status_code == 201
            lock = DatabaseLock(path)
            answers: list[tuple[str, int, int, float, bytes, str | None]] = []

            async def post(run_id: str, step: int) -> int:
                started = time.monotonic()
                body = {"step": step, "value": 1.0 / step}
                r = await http.post(f"/v1/runs/{run_id}/observations", json=body)
                waited = time.monotonic() - started
                answers.append(
                    (run_id, step, r.status_code, waited, r.content, r.headers.get("retry-after"))
                )
                return r.status_code

            async def release() -> None:
                await asyncio.sleep(DB_TIMEOUT_S * 0.6)
                lock.release()

            async def rank(run_id: str) -> None:
                # a rank posts its steps in order; the ranks and the runs race each other (all
                # at once, steps could overtake each other in flight: a later step decided
                # first makes an earlier one a 409, rightly, and that is not what this tests)
                for step in (1, 2, 3):
                    if await post(run_id, step) != 200:  # a client retries a 503 first
                        return

            ranks = [rank(run_id) for _ in range(2) for run_id in runs]
            await asyncio.gather(release(), *ranks)
            return answers

    server.start()
    try:
        answers = asyncio.run(attack())
        statuses = Counter(status for _, _, status, _, _, _ in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] > 0, "nothing was decided once the lock was released"
        for run_id, step, status, waited, _, retry_after in answers:
            assert waited < DB_TIMEOUT_S * 8, f"{run_id} step {step} waited {waited:.2f} s"
            if status == 503:
                assert retry_after, "a 503 without Retry-After"
        with httpx.Client(base_url=server.url, timeout=30) as http:  # clients retry the 503s
            for run_id in runs:
                for step in (1, 2, 3):
                    r = http.post(
                        f"/v1/runs/{run_id}/observations", json={"step": step, "value": 1.0 / step}
                    )
                    assert r.status_code == 200, r.text
        for run_id in runs:
            items = decisions_of(server.url, run_id)
            assert [d["step"] for d in items] == [1, 2, 3], run_id
            assert verify_chain(items).ok, run_id
            by_step = {d["step"]: d for d in items}
            for rid, step, status, _, body, _ in answers:
                if rid == run_id and status == 200:
                    assert strict_json(body) == by_step[step], f"{run_id} step {step} changed"
    finally:
        server.stop()


def test_stalled_clients_hold_up_no_decision(live_server: LiveServer) -> None:
    """200 connections that send half a request and stall (slowloris, declared and chunked
    bodies): decisions and probes are answered meanwhile, not held up by them."""
    stalled: list[socket.socket] = []
    head = (
        b"POST /v1/runs/slow/observations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    )
    try:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            assert http.put("/v1/runs/slow", json=run_spec()).status_code == 201
            for i in range(200):
                s = socket.create_connection(("127.0.0.1", live_server.port))
                if i % 2:
                    s.sendall(head + b'Content-Length: 40\r\n\r\n{"step": ')
                else:
                    s.sendall(head + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"ste\r\n')
                stalled.append(s)
            time.sleep(0.3)
            for step in (1, 2, 3):
                started = time.monotonic()
                r = http.post("/v1/runs/slow/observations", json={"step": step, "value": 0.5})
                assert r.status_code == 200, r.text
                assert time.monotonic() - started < HANG_S
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
            assert time.monotonic() - started < HANG_S
    finally:
        for s in stalled:
            s.close()


# ---------------------------------------------------------------------------------------------
# bugs found by attacking the service, fixed since


@pytest.mark.postgres
def test_a_locked_run_on_postgres_does_not_stall_the_other_runs(postgres_url: str) -> None:
    server = LiveServer(postgres_url, env={"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)}).start()
    holder = sa.create_engine(postgres_url)
    others = [f"y{i}" for i in range(4)]

    async def load() -> Counter[tuple[str, int]]:
        seen: Counter[tuple[str, int]] = Counter()
        stop = time.monotonic() + 3 * DB_TIMEOUT_S
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

            async def rank(run_id: str) -> None:
                step = 1
                while time.monotonic() < stop:
                    r = await http.post(
                        f"/v1/runs/{run_id}/observations", json={"step": step, "value": 0.5}
                    )
                    seen[(run_id[0], r.status_code)] += 1
                    if r.status_code == 200:
                        step += 1
                    else:
                        await asyncio.sleep(0.02)  # a client's retry

            await asyncio.gather(*(rank("x") for _ in range(4)), *(rank(y) for y in others))
        return seen

    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for run_id in ["x", *others]:
                assert http.put(f"/v1/runs/{run_id}", json=run_spec()).status_code == 201
        with holder.connect() as conn, conn.begin():
            # an operator's psql session, or a replica frozen inside its transaction
            conn.exec_driver_sql("SELECT run_id FROM runs WHERE run_id = 'x' FOR UPDATE").all()
            seen = asyncio.run(load())
        others_ok = seen[("y", 200)] > 0 and seen[("y", 503)] == 0
        assert others_ok, f"runs nobody locked were refused (first letter, status): {dict(seen)}"
    finally:
        holder.dispose()
        server.stop()


def test_a_sqlite_file_moved_away_while_serving_loses_no_acknowledged_decision(
    tmp_path: Path,
) -> None:
    path = tmp_path / "moved.db"
    server = LiveServer(f"sqlite:///{path}", env={"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)})
    server.start()
    acknowledged: dict[int, bytes] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.put("/v1/runs/m", json=run_spec()).status_code == 201
            for step in (1, 2, 3):
                r = http.post("/v1/runs/m/observations", json={"step": step, "value": 0.5})
                assert r.status_code == 200, r.text
            # an operator moves the database aside (or deletes it) while the server runs
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{path}{suffix}", f"{path}.aside{suffix}")
            for step in (4, 5, 6):
                r = http.post("/v1/runs/m/observations", json={"step": step, "value": 0.5})
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    acknowledged[step] = r.content
        server.kill()
        # whatever the path holds now is what the service serves from when it comes back
        server.start()
        r = httpx.get(f"{server.url}/v1/runs/m/decisions", timeout=30)
        served = {d["step"]: d for d in strict_json(r.text)["items"]} if r.is_success else {}
        lost = [s for s, body in acknowledged.items() if served.get(s) != strict_json(body)]
        assert not lost, (
            f"steps {lost}, acknowledged after the file was moved, are not served after a "
            f"restart ({r.status_code} {r.text[:200]})"
        )
    finally:
        server.stop()
