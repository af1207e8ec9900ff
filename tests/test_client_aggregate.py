"""The client in aggregated mode: each rank's Client posts its own metric with its weight, and
every rank gets the one decision taken from their weighted mean (a real server)."""

from __future__ import annotations

import threading

from lrpilot_client import Client
from tests.harness import LiveServer


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
