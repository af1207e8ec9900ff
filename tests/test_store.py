"""Store guarantees: O(1) work per decision, and per-run serialisation from the database."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from lrpilot.store.runs import RunSpec, Store

SPEC = RunSpec("plateau", 1, {"patience": 2}, (0.1,), "val_loss", {})


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


def test_a_decision_costs_the_same_queries_whatever_the_run_length(store: Store) -> None:
    store.put_run("long", SPEC)
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    for step in range(1000):
        store.observe("long", step, 1.0 / (1 + step % 7))
    sa.event.listen(store.engine, "before_cursor_execute", record)
    store.observe("long", 1000, 0.5)
    at_1000 = list(statements)
    statements.clear()
    store.put_run("short", SPEC)
    statements.clear()
    store.observe("short", 0, 0.5)
    sa.event.remove(store.engine, "before_cursor_execute", record)
    assert len(at_1000) == len(statements)
    # no statement of a decision reads the log: decisions are only inserted
    assert not any("FROM decisions" in s for s in at_1000), at_1000


@pytest.mark.parametrize("process_lock", [True, False], ids=["process-lock", "database-only"])
def test_concurrent_posts_to_one_run_never_decide_twice_from_one_state(
    store: Store, process_lock: bool
) -> None:
    if not process_lock:
        store._lock = None  # as if every thread were another process: the database alone
    store.put_run("race", SPEC)
    results: dict[int, list[str]] = {step: [] for step in range(30)}
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for step in range(30):
            results[step].append(store.observe("race", step, 1.0 + (step % 4)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(len(set(bodies)) == 1 and len(bodies) == 8 for bodies in results.values())
    page = store.list_decisions("race", after=0, limit=1000)
    assert len(page.items) == 30
    assert store.get_run("race")["last_seq"] == 30
