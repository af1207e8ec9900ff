"""Elastic jobs and aggregated mode as an adversary found them: each test is a defect that
was found (and fixed) or a failure it tried to cause, against real servers and databases. The
docstrings say what broke and where, so that it stays fixed."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from lrpilot_client import Client
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer

WORLD8 = {"rule": "linear", "by": "world_size", "base": 8}
WORLD2 = {"rule": "linear", "by": "world_size", "base": 2}


def spec(
    policy: str, params: dict[str, Any], base_lrs: list[float], **extra: Any
) -> dict[str, Any]:
    return {"policy": {"name": policy, "version": 1, "params": params}, "base_lrs": base_lrs,
            **extra}  # fmt: skip


def lrs_block(api: TestClient, run_id: str, first: int, count: int) -> dict[str, Any]:
    r = api.get(f"/v1/runs/{run_id}/lrs", params={"from": first, "count": count})
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


# -- the service: what it promises to be certain ---------------------------------------------


def test_rates_served_as_certain_are_not_changed_by_a_later_resize(api: TestClient) -> None:
    """Found: GET lrs called every step of an elastic cosine run certain (and LrsCursor keeps
    certain rows for good), then an evaluation with another world_size rescaled them. Now a
    run with a scaling rule is certain only below its last decided step and its last resize's
    step, and what was certain never changes."""
    assert api.put("/v1/runs/cos", json=spec("cosine", {"T_max": 200}, [0.1],
                                             scaling=WORLD8)).status_code == 201  # fmt: skip
    assert lrs_block(api, "cos", 0, 100)["certain_through"] is None  # a resize may come at 0
    blocks = []
    for step, world in ((30, 8), (50, 16), (70, 4)):
        r = api.post("/v1/runs/cos/observations", json={"step": step, "value": 1.0,
                                                        "world_size": world})  # fmt: skip
        assert r.status_code == 200, r.text
        blocks.append(lrs_block(api, "cos", 0, 100))
    assert [b["certain_through"] for b in blocks] == [29, 49, 69]
    final = blocks[-1]["lrs"]
    for block in blocks:
        through = block["certain_through"]
        assert block["lrs"][: through + 1] == final[: through + 1]


def test_the_lr_of_a_decided_step_is_not_changed_by_a_resize(api: TestClient) -> None:
    """Found (same cause, plateau control): GET lr?step=50 said certain once step 50 was
    decided, and a resize at step 50 (allowed: a job resumed from the checkpoint of that
    evaluation) changed it. Now step 50 is not certain until the run moves on; step 49 is,
    and stays what it was."""
    assert (
        api.put("/v1/runs/pl", json=spec("plateau", {}, [0.1], scaling=WORLD8)).status_code == 201
    )
    assert api.post("/v1/runs/pl/observations", json={"step": 50, "value": 1.0}).status_code == 200
    at_50 = api.get("/v1/runs/pl/lr", params={"step": 50}).json()
    at_49 = api.get("/v1/runs/pl/lr", params={"step": 49}).json()
    assert not at_50["certain"] and at_49["certain"]
    r = api.post("/v1/runs/pl/resize", json={"step": 50, "world_size": 16})
    assert r.status_code == 200 and r.json()["resized"], r.text
    assert api.get("/v1/runs/pl/lr", params={"step": 50}).json()["lrs"] == [0.2]
    assert api.get("/v1/runs/pl/lr", params={"step": 49}).json() == at_49
    # a leader-mode reader waiting for step 50 is answered as soon as it is decided
    waited = api.get("/v1/runs/pl/lr", params={"step": 50, "wait": 5}).json()
    assert waited["lrs"] == [0.2]


def test_the_world_size_of_a_retried_step_is_not_silently_dropped(api: TestClient) -> None:
    """Found: README: "when the job reports another size, a scale entry joins the log"; the
    size comes from the observations' world_size ("a job restarted by an elastic launcher ...
    reports it with its first evaluation"). A job resumed on 16 ranks from the checkpoint of
    its evaluation at step 100 posts that evaluation again (a retry: same value) with
    world_size 16: the answer is the old decision, no scale entry is written, no error is
    given, and the run goes on serving the lrs of 8 ranks. (domain.py _decide_in and
    _aggregate_in answer a step at or below the last one before looking at world_size.)"""
    assert (
        api.put("/v1/runs/rt", json=spec("plateau", {}, [0.1], scaling=WORLD8)).status_code == 201
    )
    body = {"step": 100, "value": 1.0, "world_size": 8}
    assert api.post("/v1/runs/rt/observations", json=body).status_code == 200
    r = api.post("/v1/runs/rt/observations", json={**body, "world_size": 16})
    run = api.get("/v1/runs/rt").json()
    assert r.status_code == 409 or run["scale"]["size"] == 16, (
        f"{r.status_code}: world_size 16 ignored, the run still scales for {run['scale']}, "
        f"lr at step 150 {api.get('/v1/runs/rt/lr', params={'step': 150}).json()['lrs']}"
    )


def test_a_resize_that_takes_a_schedule_past_the_largest_float_is_refused(api: TestClient) -> None:
    """Found (minor, hostile sizes): Commit 30fedb3: "a resize that would scale an lr past
    the largest float is refused with 409". The guard (domain.py scale_entry) looks only at
    the lrs in force when the resize comes; a schedule that grows afterwards (linear warmup,
    one_cycle, cyclic) is accepted and then serves "Infinity" as an lr from GET lrs and in
    its decisions."""
    params = {"start_factor": 0.001, "end_factor": 1.0, "total_iters": 10}
    # (1e305 x 65,536, the largest world size: in force at step 0, past the largest float at 10)
    run = spec("linear", params, [1e305], scaling={"rule": "linear", "by": "world_size", "base": 1})
    assert api.put("/v1/runs/big", json=run).status_code == 201
    r = api.post("/v1/runs/big/resize", json={"step": 0, "world_size": 65_536})
    if r.status_code == 409:
        return
    assert r.status_code == 200, r.text
    served = lrs_block(api, "big", 0, 20)["lrs"]
    infinite = [k for k, lrs in enumerate(served) if not all(isinstance(x, float) for x in lrs)]
    assert not infinite, f"the resize was accepted and steps {infinite} serve {served[infinite[0]]}"


# -- aggregated mode: the wait path survives a crash -------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_waiting_ranks_reports_survive_a_kill_and_the_step_counts_every_rank(
    backend: str, tmp_path: Path
) -> None:
    """Passes (a guard). Reports of ranks that are waiting for their peers are stored when
    they arrive: a kill -9 of the server mid-step loses none of them, and after a restart the
    last rank's report decides the step from every rank (a scale entry first, the ranks' new
    world_size), and the waiting ranks' retries get the same bytes."""
    server = LiveServer(empty_database(backend, tmp_path)).start()
    try:
        run = spec("plateau", {}, [0.1], aggregate={"timeout_s": 30, "on_timeout": "refuse"},
                   scaling=WORLD2)  # fmt: skip
        assert httpx.put(f"{server.url}/v1/runs/k", json=run, timeout=30).status_code == 201

        def report(r: int) -> dict[str, Any]:
            return {"step": 10, "value": 1.0 + r, "rank": r, "world_size": 3}

        async def waiting_then_killed() -> list[BaseException | httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                posts = [
                    asyncio.ensure_future(http.post("/v1/runs/k/observations", json=report(r)))
                    for r in (0, 1)
                ]
                await asyncio.sleep(0.7)  # both stored and waiting for rank 2
                await asyncio.to_thread(server.kill)
                return await asyncio.gather(*posts, return_exceptions=True)

        lost = asyncio.run(waiting_then_killed())
        assert all(isinstance(x, httpx.TransportError) for x in lost), lost
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            last = http.post("/v1/runs/k/observations", json=report(2))  # decides at once
            assert last.status_code == 200, last.text
            retries = [http.post("/v1/runs/k/observations", json=report(r)) for r in (0, 1)]
            assert [r.text for r in retries] == [last.text, last.text]
            decided = last.json()
            assert [x["rank"] for x in decided["ranks"]] == [0, 1, 2]
            assert "missing_ranks" not in decided and decided["scale"] == 1.5
            log = http.get("/v1/runs/k/decisions").json()["items"]
            assert [d["action"] for d in log] == ["scale", decided["action"]]
            assert http.post("/v1/runs/k/verify").json()["ok"]
    finally:
        server.stop()


# -- the client: a rank's report ---------------------------------------------------------------


def test_a_ranks_report_after_an_outage_reads_as_long_as_the_run_waits(
    live_server: LiveServer,
) -> None:
    """Found: README: a rank's HTTP timeout must exceed `timeout_s`, "the Python client reads
    that long once it has seen the run's spec ... rather than answer provisionally, which could
    leave the rank on other lrs than its peers". Once the client has found the service away
    (one failed read is enough), its next report is sent as a probe with the client's own
    read timeout (client.py/async_client.py `_send` use `_probe_timeout`, which drops the
    call's read_timeout; `Resilience.attempts` returns a probe before it looks at
    `aggregated(obs)`). The report reaches the service and is counted, the rank's read times
    out while the service waits for its peer, and the rank trains on a provisional "hold" at
    lr 0.1 while the one decision, listing it, says reduce to 0.01."""
    url = live_server.url
    aggregate = {"timeout_s": 20, "on_timeout": "decide"}
    with Client(url, timeout=1.0, retries=0, backoff=0.01, max_backoff=0.02) as rank0:
        rank0.create_run("agg", params={"patience": 0}, base_lrs=[0.1], aggregate=aggregate)
        both = [{"step": 10, "value": 1.0, "rank": r, "world_size": 2} for r in (0, 1)]

        async def post_both() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await asyncio.gather(
                    *(http.post("/v1/runs/agg/observations", json=b) for b in both)
                )

        assert [r.status_code for r in asyncio.run(post_both())] == [200, 200]  # best: 1.0

        live_server.stop()  # a restart of the service: one read fails meanwhile
        assert rank0.lrs_in_force("agg", 15).provisional and rank0.offline
        live_server.start()
        time.sleep(0.2)  # the client's next try is due

        def rank1() -> None:
            time.sleep(3.0)  # the slower rank reports 3 s later
            httpx.post(f"{url}/v1/runs/agg/observations", timeout=30,
                       json={"step": 20, "value": 2.0, "rank": 1, "world_size": 2})  # fmt: skip

        peer = threading.Thread(target=rank1)
        peer.start()
        mine = rank0.observe("agg", 20, 2.0, rank=0, world_size=2)
        peer.join(timeout=30)
        decided = [d for d in httpx.get(f"{url}/v1/runs/agg/decisions").json()["items"]
                   if d["step"] == 20]  # fmt: skip
        assert decided and [x["rank"] for x in decided[0]["ranks"]] == [0, 1]
        assert not mine.provisional, (
            f"rank 0 trains on {list(mine.lrs)} ({mine.reason[:120]}...) while the service "
            f"counted it and decided {decided[0]['action']} {decided[0]['lrs']}"
        )


def test_two_ranks_buffered_reports_of_the_same_value_are_both_kept(
    live_server: LiveServer,
) -> None:
    """Found (minor: one Client posting for several ranks): The outbox dedupes by (run, step,
    value) (_outbox.py Outbox.add / PendingObservation.key), but the service dedupes an
    aggregated report by (step, rank): a second rank's report with the same value is taken
    for a retry and dropped, so the step waits for that rank until timeout_s and is decided
    without it (or refused)."""
    with Client(live_server.url, retries=0, backoff=0.01, max_backoff=0.02,
                close_timeout=0) as client:  # fmt: skip
        client.create_run("dup", base_lrs=[0.1], aggregate={"timeout_s": 5, "on_timeout": "refuse"})
        live_server.stop()
        for rank in (0, 1):
            assert client.observe("dup", 10, 0.5, rank=rank, world_size=2).provisional
        assert sorted(p.rank for p in client.pending if p.rank is not None) == [0, 1]


# -- LrpilotScheduler with a scaling rule ------------------------------------------------------


@pytest.fixture
def lrpilot(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, retries=0, backoff=0.01, max_backoff=0.02, close_timeout=0) as c:
        yield c


def _optimizer(*lrs: float) -> tuple[list[torch.nn.Linear], torch.optim.SGD]:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(2, 2) for _ in lrs]
    groups = [
        {"params": layer.parameters(), "lr": lr} for layer, lr in zip(layers, lrs, strict=True)
    ]
    return layers, torch.optim.SGD(groups, lr=0.0)


def _used(opt: torch.optim.Optimizer) -> list[list[float]]:
    """The lrs of every group at each optimizer.step()."""
    used: list[list[float]] = []
    opt.register_step_pre_hook(lambda o, *_: used.append([float(g["lr"]) for g in o.param_groups]))
    return used


def test_a_param_group_added_to_an_elastic_run_keeps_the_scale(lrpilot: Client) -> None:
    """Found: LrpilotScheduler: a param group added mid-run continues on a derived run and
    "the existing groups keep their rates exactly". For a run with a scaling rule the derived
    run is created without it (integrations/_common.py continue_with_groups passes no
    `scaling`, and replays no scale entry): on 4 ranks where the lrs were tuned for 2, the
    existing group drops from 0.2 to 0.1 the moment a group is added (and a warning blames
    the policy's params)."""
    _, opt = _optimizer(0.1)
    sched = LrpilotScheduler(opt, lrpilot, "grow", "plateau", params={"patience": 5},
                             scaling=WORLD2, world_size=4)  # fmt: skip
    used = _used(opt)
    head = torch.nn.Linear(2, 2)
    for k in range(12):
        if k == 10:
            opt.add_param_group({"params": head.parameters(), "lr": 0.05})
        opt.step()
        sched.step()
        if sched.last_epoch % 5 == 0:
            sched.observe(1.0)
    assert sched.run_id == "grow.g2"
    assert used[9] == [0.2]
    assert used[10][0] == 0.2, f"the existing group went from 0.2 to {used[10][0]}"
    assert lrpilot.get_run("grow.g2").scaling == WORLD2


def test_an_elastic_restart_without_a_checkpoint_trains_step_0_at_the_logged_lr(
    lrpilot: Client,
) -> None:
    """Found: The torch tests' rule: the lrs used at step k are what the service answers for
    step k. A job started on 4 ranks (lrs tuned for 2), restarted on 1 rank before its first
    checkpoint: the scheduler defers the size report to its first step() when the run has
    history (torch.py __init__ `_size_due`), so optimizer.step() at step 0 runs at the old
    factor (0.2), while step() then logs the resize at step 0 (`at = max(last_epoch, ...)` =
    0) and the service says step 0's lr is 0.05."""

    def job(world_size: int, steps: int) -> list[list[float]]:
        _, opt = _optimizer(0.1)
        sched = LrpilotScheduler(opt, lrpilot, "restart", "cosine", params={"T_max": 100},
                                 scaling=WORLD2, world_size=world_size)  # fmt: skip
        used = _used(opt)
        for _ in range(steps):
            opt.step()
            sched.step()
        return used

    assert job(4, 3)[0] == [0.2]
    used = job(1, 3)
    served = [lrpilot.lrs("restart", k) for k in range(3)]
    assert used == served, f"used {used}, the service's log says {served}"


def test_an_elastic_restart_does_not_die_with_the_service_away(
    live_server: LiveServer, lrpilot: Client
) -> None:
    """Found: DESIGN: "A training loop must never die because the service is away"; a
    scheduler's step() holds the last rates while it is (checked below). After an elastic
    restart without a checkpoint, the first step() reports the size (torch.py step():
    client.get_run, then client.resize, neither of which has a stand-in) and raises
    ServiceUnavailableError if the service is away at that moment. (And `_report_size` clears
    `_size_due` before the request, so a failed resize is never tried again.)"""

    def scheduler(world_size: int) -> tuple[torch.optim.SGD, LrpilotScheduler]:
        _, opt = _optimizer(0.1)
        return opt, LrpilotScheduler(opt, lrpilot, "away", "cosine", params={"T_max": 100},
                                     scaling=WORLD2, world_size=world_size)  # fmt: skip

    opt, first = scheduler(4)
    for _ in range(3):
        opt.step()
        first.step()
    live_server.stop()
    opt.step()
    first.step()  # the service away: the last rates, no exception
    assert opt.param_groups[0]["lr"] > 0
    live_server.start()

    opt, restarted = scheduler(1)  # an elastic restart on 1 rank, before any checkpoint
    live_server.stop()
    opt.step()
    restarted.step()
    assert math.isfinite(opt.param_groups[0]["lr"])
