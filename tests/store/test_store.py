"""The decision path on the store: O(1) work per decision, per-run serialisation from the
database, group commit, and a lost create race handled as "another writer won"."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lrpilot.app import group_commit
from lrpilot.domain.aggregated import Posted
from lrpilot.domain.decisions import Decisions, decide_batch
from lrpilot.domain.errors import Conflict, RunBusy
from lrpilot.entries import GENESIS, UNPINNED, verify_chain
from lrpilot.policies.common import to_f32
from lrpilot.settings import Settings
from lrpilot.spec import RunSpec
from lrpilot.store.db import upgrade
from lrpilot.store.records import RunKey
from lrpilot.store.runs import Store
from tests.helpers import strict_json


def key(run_id: str) -> RunKey:
    """A run of open mode's project, where the routes put the runs of a service without tokens."""
    return RunKey("default", run_id)


def _decisions(settings: Settings) -> Decisions:
    store = Store(settings)
    return Decisions(store, settings, group_commit(store))


SPEC = RunSpec.model_validate(
    {
        "policy": {"name": "plateau", "version": 1, "params": {"patience": 2}},
        "base_lrs": [0.1],
        "metric": "val_loss",
    }
)


@pytest.fixture
def decisions(database_url: str) -> Iterator[Decisions]:
    settings = Settings(database_url=database_url)
    d = _decisions(settings)
    yield d
    d.close()
    d.store.close()


def decide(decisions: Decisions, run_id: str, step: int, value: float) -> str:
    """One observation through decide_batch, tried again while its run is locked by another
    transaction, as the group commit's writer does."""
    while True:
        (result,) = decide_batch(decisions.store, [Posted(key(run_id), step, value)])
        if not isinstance(result, RunBusy):
            break
        time.sleep(0.001)
    if isinstance(result, Exception):
        raise result
    return result


def log_of(decisions: Decisions, run_id: str) -> list[dict[str, object]]:
    page = decisions.store.list_decisions(key(run_id), after=0, limit=1000)
    return [strict_json(body) for body in page.items]


def test_a_decision_costs_the_same_queries_whatever_the_run_length(tmp_path: Path) -> None:
    # The hot path speaks to the driver, past SQLAlchemy's events: SQLite's own trace of the
    # statements it runs is what counts them (the SQL is the same on PostgreSQL).
    url = f"sqlite:///{tmp_path / 'count.db'}"
    upgrade(url)
    settings = Settings(database_url=url)
    decisions = _decisions(settings)
    statements: list[str] = []
    tracing = False

    @sa.event.listens_for(decisions.store.engine, "connect")
    def _trace(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.set_trace_callback(lambda s: statements.append(s) if tracing else None)

    try:
        decisions.create_run("long", SPEC)
        decisions.create_run("short", SPEC)
        for step in range(1000):
            decide(decisions, "long", step, 1.0 / (1 + step % 7))
        tracing = True
        decide(decisions, "long", 1000, 0.5)
        at_1000 = list(statements)
        statements.clear()
        decide(decisions, "short", 0, 0.5)
        tracing = False
    finally:
        decisions.close()
        decisions.store.close()
    assert at_1000, "no statement was traced"
    assert len(at_1000) == len(statements), (at_1000, statements)
    # no statement of a new decision reads the log: decisions are only inserted
    assert not any("FROM decisions" in s for s in at_1000), at_1000
    assert sum(s.startswith("INSERT INTO decisions") for s in at_1000) == 1, at_1000


@pytest.mark.parametrize("process_lock", [True, False], ids=["process-lock", "database-only"])
def test_concurrent_posts_to_one_run_never_decide_twice_from_one_state(
    decisions: Decisions, process_lock: bool
) -> None:
    if not process_lock:
        decisions.store._lock = None  # as if every thread were another process: the database
    decisions.create_run("race", SPEC)
    results: dict[int, list[str]] = {step: [] for step in range(30)}
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for step in range(30):
            results[step].append(decide(decisions, "race", step, 1.0 + (step % 4)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(len(set(bodies)) == 1 and len(bodies) == 8 for bodies in results.values())
    log = log_of(decisions, "race")
    assert len(log) == 30
    assert verify_chain(log).ok
    assert decisions.store.get_run(key("race"))["last_seq"] == 30


def test_one_batch_decides_many_runs_and_ranks_and_refuses_only_the_bad_items(
    decisions: Decisions,
) -> None:
    for run_id in ("a", "b"):
        decisions.create_run(run_id, SPEC)
    items = [
        Posted(key("a"), 1, 0.5),
        Posted(key("b"), 1, 0.7),
        Posted(key("a"), 1, 0.5),  # another rank, same step and value: the same decision
        Posted(key("a"), 1, 0.6),  # same step, another value: refused
        Posted(key("missing"), 1, 0.5),
        Posted(key("a"), 2, 0.4),
        Posted(key("b"), 0, 0.7),  # below b's last step, never decided: refused
    ]
    results = decide_batch(decisions.store, items)
    assert isinstance(results[0], str) and results[2] == results[0]
    assert isinstance(results[1], str) and isinstance(results[5], str)
    assert isinstance(results[3], Conflict) and "already decided" in str(results[3])
    assert type(results[4]).__name__ == "RunNotFound"
    assert isinstance(results[6], Conflict) and "never decided" in str(results[6])
    assert [d["step"] for d in log_of(decisions, "a")] == [1, 2]
    assert [d["step"] for d in log_of(decisions, "b")] == [1]
    assert decisions.store.get_run(key("a"))["last_seq"] == 2


def test_concurrent_observations_are_group_committed_and_all_acknowledged(
    decisions: Decisions,
) -> None:
    runs = [f"g{i}" for i in range(8)]
    for run_id in runs:
        decisions.create_run(run_id, SPEC)
    # every transaction of the decision path starts in one of these two store methods
    store = decisions.store
    transactions = 0

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            nonlocal transactions
            transactions += 1
            return method(*args)

        return call

    store.transact = counted(store.transact)  # type: ignore[method-assign]
    store.begin_now = counted(store.begin_now)  # type: ignore[method-assign]

    async def post_all() -> list[str]:
        return await asyncio.gather(
            *(
                decisions.observe(Posted(key(r), step, 1.0 / (1 + step)))
                for step in range(20)
                for r in runs
            )
        )

    bodies = asyncio.run(post_all())
    assert len(set(bodies)) == len(runs) * 20
    for run_id in runs:
        log = log_of(decisions, run_id)
        assert [d["step"] for d in log] == list(range(20))
        assert verify_chain(log).ok
    assert 0 < transactions < len(runs) * 20, "concurrent observations must share transactions"


def test_racing_creates_of_one_run_all_get_it_and_one_created_it(decisions: Decisions) -> None:
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        try:
            outcomes.append(decisions.create_run("born-once", SPEC)[1])
        except BaseException as exc:
            errors.append(exc)

    decisions.store._lock = None  # the database alone decides who won
    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(outcomes) == [False] * 7 + [True]


@pytest.mark.parametrize("flavor", ["torch", "keras"])
def test_each_decision_starts_from_the_lrs_the_one_before_left(
    decisions: Decisions, flavor: str
) -> None:
    spec = RunSpec.model_validate(
        {
            "policy": {
                "name": "plateau",
                "version": 1,
                "params": {"flavor": flavor, "patience": 1},
            },
            "base_lrs": [0.1, 0.3],
            "metric": "val",
        }
    )
    decisions.create_run("lrs", spec)
    for step in range(12):
        decide(decisions, "lrs", step, 1.0)  # a plateau: a reduction every other evaluation
    log = log_of(decisions, "lrs")
    initial = [0.1, 0.3] if flavor == "torch" else [to_f32(0.1), to_f32(0.3)]
    assert log[0]["previous_lrs"] == initial
    for before, after in itertools.pairwise(log):
        assert after["previous_lrs"] == before["lrs"]
    assert sum(d["action"] == "reduce" for d in log) >= 3


def test_a_row_stored_beyond_todays_rules_is_still_read_and_decided(tmp_path: Path) -> None:
    """The store parses its own rows without validating them again: a run an older version
    stored with a created_at longer than a new run may have (SQLite kept it; PostgreSQL's
    VARCHAR(40) never could) is still served, decided on and verified, not a 500 on every read."""
    from fastapi.testclient import TestClient

    from lrpilot.app import create_app

    database_url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(database_url)
    old = "2026-11-26T10:00:00.000000+00:00 (import)"  # 41 characters: refused today
    with TestClient(create_app(Settings(database_url=database_url))) as api:
        assert api.put("/v1/runs/old", json=_spec_doc()).status_code == 201
        engine = sa.create_engine(database_url)
        with engine.begin() as conn:
            # as an older version wrote it: its log began from GENESIS, not from the run
            conn.execute(
                sa.text("UPDATE runs SET created_at = :c, head_hash = :g"), {"c": old, "g": GENESIS}
            )
        engine.dispose()
        fresh = TestClient(create_app(Settings(database_url=database_url)))
        with fresh:  # a new process: nothing of the run cached
            assert fresh.get("/v1/runs/old").json()["created_at"] == old
            r = fresh.post("/v1/runs/old/observations", json={"step": 1, "value": 0.5})
            assert r.status_code == 200, r.text
            verified = fresh.post("/v1/runs/old/verify").json()
            assert verified["ok"] and verified["notes"] == [UNPINNED], verified


def _spec_doc() -> dict[str, Any]:
    return {"policy": {"name": "plateau", "version": 1}, "base_lrs": [0.1], "metric": "val_loss"}
