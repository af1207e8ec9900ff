"""The client in aggregated mode: each rank's Client posts its own metric with its weight, and
every rank gets the one decision taken from their weighted mean (a real server)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lrpilot_client import Client, Decision
from tests.harness import DatabaseLock, LiveServer


def test_ranks_get_one_decision_from_their_weighted_mean(live_server: LiveServer) -> None:
    spec = {"params": {"patience": 0}, "base_lrs": [0.1], "metric": "val_loss"}
    aggregate = {"timeout_s": 30, "on_timeout": "decide"}
    with Client(live_server.url) as admin:
        run = admin.create_run("agg", aggregate=aggregate, **spec)
        assert run.run_id == "agg"
    values = {0: (1.0, 3.0), 1: (2.0, 1.0)}  # rank: (value, weight)
    answers: dict[int, object] = {}

    def rank(r: int) -> None:
        with Client(live_server.url, timeout=60) as client:
            value, weight = values[r]
            answers[r] = client.observe("agg", 100, value, rank=r, world_size=2, weight=weight)

    threads = [threading.Thread(target=rank, args=(r,)) for r in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    d0, d1 = answers[0], answers[1]
    assert d0 == d1, "every rank gets the same decision"
    assert d0.value == (1.0 * 3.0 + 2.0 * 1.0) / 4.0  # type: ignore[attr-defined]
    with Client(live_server.url) as admin:
        assert [d.step for d in admin.iter_decisions("agg")] == [100]  # decided once
        # the same spec again (a restarted job) returns the run; another aggregate is a 409
        assert admin.create_run("agg", aggregate=aggregate, **spec).run_id == "agg"


def test_a_rank_whose_report_meets_a_locked_database_waits_it_out_and_gets_the_decision(
    tmp_path: Path,
) -> None:
    """A provisional answer to one rank of an aggregated run would let it train on other lrs
    than its peers if the service then decides without it: a rank's report rides out a 503
    (Retry-After) with retries, even in "buffer" mode, and the client reads its answer for as
    long as the run's timeout_s (learned from the run's spec) lets the service wait."""
    db = tmp_path / "locked.db"
    server = LiveServer(f"sqlite:///{db}", env={"LRPILOT_DB_TIMEOUT_S": "0.3"}).start()
    try:
        aggregate = {"timeout_s": 30, "on_timeout": "decide"}
        answers: dict[int, Decision] = {}
        # the client's own timeout is shorter than the wait for rank 1: the run's spec says how
        # long to read
        clients = {r: Client(server.url, timeout=2.0) for r in (0, 1)}
        for client in clients.values():
            client.create_run("locked", params={"patience": 0}, base_lrs=[0.1], aggregate=aggregate)

        def rank(r: int) -> None:
            answers[r] = clients[r].observe("locked", 10, 1.0 + r, rank=r, world_size=2)

        first = threading.Thread(target=rank, args=(0,))
        first.start()
        time.sleep(3.0)  # rank 0 waits for rank 1, longer than its client's timeout
        holder = DatabaseLock(db)  # a backup, a migration, another writer
        second = threading.Thread(target=rank, args=(1,))
        second.start()
        time.sleep(1.5)  # rank 1's first tries get 503 with Retry-After
        holder.release()
        first.join(timeout=60)
        second.join(timeout=60)
        d0, d1 = answers[0], answers[1]
        assert not d1.provisional and not d0.provisional
        assert d0 == d1 and d0.counted == (0, 1) and d0.missing_ranks == ()
        assert [r["value"] for r in d0.ranks] == [1.0, 2.0]
        assert clients[1].pending == ()
    finally:
        for client in clients.values():
            client.close()
        server.stop()
