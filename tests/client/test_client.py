"""The Python client (lrpilot_client) against the real service, started with uvicorn.

No mocks: every test talks HTTP to `python -m lrpilot.cli serve` on 127.0.0.1 (the shared
`live_server` fixture, a fresh SQLite file per test), so these tests check the client and the
HTTP contract of DESIGN.md together (shapes, status codes, strict JSON with non-finite numbers
as strings, idempotent observations, pagination).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrpilot_client import (
    AsyncClient,
    Client,
    ConflictError,
    Decision,
    NotFoundError,
    ServiceUnavailableError,
    ValidationError,
)
from tests.harness import LiveServer, free_port


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, retries=2, backoff=0.05, rng=random.Random(0)) as c:
        yield c


@pytest.fixture
def run_id() -> str:
    return f"client-test-{uuid.uuid4().hex[:12]}"


PLATEAU = {"patience": 1, "factor": 0.5}


def observe_all(
    client: Client, run_id: str, values: list[float], start: int = 100
) -> list[Decision]:
    """Observe `values` at steps start, 2*start, ...; return the decisions."""
    return [client.observe(run_id, step=start * (i + 1), value=v) for i, v in enumerate(values)]


# --- runs ----------------------------------------------------------------------------------


def test_create_and_get_run(client: Client, run_id: str) -> None:
    run = client.create_run(
        run_id, policy="plateau", version=1, params=PLATEAU, base_lrs=[0.1, 0.01],
        metric="val_loss", labels={"team": "vision"},
    )  # fmt: skip
    assert run.run_id == run_id
    assert run.policy.name == "plateau"
    assert run.policy.version == 1
    assert run.policy.ref == "plateau@1"
    # The service resolves the params: ours are kept, the defaults filled in.
    assert run.policy.params["patience"] == 1
    assert run.policy.params["factor"] == 0.5
    assert len(run.policy.params) > 2
    assert run.base_lrs == (0.1, 0.01)
    assert run.lrs == (0.1, 0.01)
    assert run.metric == "val_loss"
    assert run.labels == {"team": "vision"}
    assert run.last_step is None
    assert run.last_seq == 0
    assert (run.counts.decisions, run.counts.reductions) == (0, 0)
    assert run.config_hash

    assert client.get_run(run_id) == run


def test_same_spec_twice_returns_the_run(client: Client, run_id: str) -> None:
    first = client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    again = client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    assert again == first


def test_different_spec_is_a_conflict(client: Client, run_id: str) -> None:
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    with pytest.raises(ConflictError) as info:
        client.create_run(run_id, params={"patience": 2, "factor": 0.5}, base_lrs=[0.1])
    assert info.value.status_code == 409
    assert isinstance(info.value.detail, str) and info.value.detail
    with pytest.raises(ConflictError):
        client.create_run(run_id, params=PLATEAU, base_lrs=[0.2])
    # The run is unchanged.
    assert client.get_run(run_id).base_lrs == (0.1,)


def test_unknown_run_is_not_found(client: Client) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    for call in (
        lambda: client.get_run(missing),
        lambda: client.observe(missing, step=1, value=1.0),
        lambda: client.lrs(missing),
        lambda: client.decisions(missing),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.status_code == 404
        assert info.value.detail


def test_invalid_spec_is_a_validation_error(client: Client, run_id: str) -> None:
    with pytest.raises(ValidationError) as info:
        client.create_run(run_id, params={"patience": -1}, base_lrs=[0.1])
    assert info.value.status_code == 422
    assert info.value.detail
    with pytest.raises(ValidationError):
        client.create_run("not a valid id!", params=PLATEAU, base_lrs=[0.1])


# --- observations and decisions ------------------------------------------------------------


def test_plateau_reduces_like_torch(client: Client, run_id: str) -> None:
    # torch's ReduceLROnPlateau(patience=1, factor=0.5): the first 1.0 sets best, the second is
    # one bad epoch (not > patience), the third is the second bad epoch: reduce.
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1, 0.01])
    d1, d2, d3 = observe_all(client, run_id, [1.0, 1.0, 1.0])

    assert [d.seq for d in (d1, d2, d3)] == [1, 2, 3]
    assert [d.step for d in (d1, d2, d3)] == [100, 200, 300]
    assert d1.lrs == d2.lrs == (0.1, 0.01)
    assert d3.previous_lrs == (0.1, 0.01)
    assert d3.lrs == (0.05, 0.005)
    assert d3.lr == 0.05
    assert d3.action == "reduce"
    assert d1.action != "reduce" and d2.action != "reduce"
    assert all(d.policy == "plateau@1" and d.run_id == run_id and d.reason for d in (d1, d2, d3))
    # The log is a hash chain.
    assert d2.prev_hash == d1.hash and d3.prev_hash == d2.hash

    run = client.get_run(run_id)
    assert run.lrs == (0.05, 0.005)
    assert run.last_step == 300 and run.last_seq == 3
    assert (run.counts.decisions, run.counts.reductions) == (3, 1)


def test_torch_cross_check(client: Client, run_id: str) -> None:
    torch = pytest.importorskip("torch")
    values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85]
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    got = [d.lrs[0] for d in observe_all(client, run_id, values)]

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    expected = []
    for v in values:
        sched.step(v)
        expected.append(opt.param_groups[0]["lr"])
    assert got == expected


def test_retried_observation_returns_the_same_decision(client: Client, run_id: str) -> None:
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    first = client.observe(run_id, step=10, value=0.5)
    client.observe(run_id, step=20, value=0.4)
    # A retry of an older step (its answer was lost) gets the decision already made.
    again = client.observe(run_id, step=10, value=0.5)
    assert again == first
    assert (again.seq, again.hash) == (first.seq, first.hash)
    assert client.get_run(run_id).counts.decisions == 2
    # The same step with another value is not a retry.
    with pytest.raises(ConflictError):
        client.observe(run_id, step=10, value=0.6)


def test_non_finite_values_round_trip(client: Client, run_id: str) -> None:
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    d_nan = client.observe(run_id, step=1, value=math.nan)
    assert math.isnan(d_nan.value)
    d_inf = client.observe(run_id, step=2, value=math.inf)
    assert d_inf.value == math.inf
    d_ninf = client.observe(run_id, step=3, value=-math.inf)
    assert d_ninf.value == -math.inf

    # Retrying a NaN observation is still a retry (NaN != NaN must not make it a conflict).
    again = client.observe(run_id, step=1, value=math.nan)
    assert (again.seq, again.hash) == (d_nan.seq, d_nan.hash)

    logged = list(client.iter_decisions(run_id))
    assert math.isnan(logged[0].value)
    assert [d.value for d in logged[1:]] == [math.inf, -math.inf]
    assert all(math.isfinite(lr) for d in logged for lr in d.lrs)


def test_lrs_at_a_step(client: Client, run_id: str) -> None:
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1, 0.01])
    # Before any decision, the base rates are in force.
    assert client.lrs(run_id) == [0.1, 0.01]
    assert client.lrs(run_id, step=0) == [0.1, 0.01]
    assert client.lrs_in_force(run_id).seq is None

    observe_all(client, run_id, [1.0, 1.0, 1.0])  # reduces at step 300
    assert client.lrs(run_id, step=150) == [0.1, 0.01]
    assert client.lrs(run_id, step=299) == [0.1, 0.01]
    assert client.lrs(run_id, step=300) == [0.05, 0.005]
    assert client.lrs(run_id, step=10_000) == [0.05, 0.005]
    assert client.lrs(run_id) == [0.05, 0.005]
    assert client.lr(run_id, step=150) == 0.1
    assert client.lr(run_id) == 0.05

    at = client.lrs_in_force(run_id, step=250)
    assert (at.step, at.seq, at.decided_at_step) == (250, 2, 200)


def test_pagination(client: Client, run_id: str) -> None:
    client.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
    decisions = observe_all(client, run_id, [1.0] * 8, start=10)

    page = client.decisions(run_id, limit=3)
    assert [d.seq for d in page.items] == [1, 2, 3]
    assert page.next is not None
    page2 = client.decisions(run_id, after=page.next, limit=3)
    assert [d.seq for d in page2.items] == [4, 5, 6]

    assert list(client.iter_decisions(run_id, limit=3)) == decisions
    reductions = list(client.iter_decisions(run_id, action="reduce", limit=1))
    assert reductions == [d for d in decisions if d.action == "reduce"]
    assert len(reductions) >= 2

    last = client.decisions(run_id, after=decisions[-1].seq)
    assert last.items == () and last.next is None


def test_async_client(live_server: LiveServer, run_id: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(live_server.url, retries=2, backoff=0.05) as ac:
            run = await ac.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
            assert run == await ac.get_run(run_id)
            decisions = [await ac.observe(run_id, step=s, value=1.0) for s in (1, 2, 3)]
            assert decisions[-1].lrs == (0.05,)
            assert await ac.observe(run_id, step=3, value=1.0) == decisions[-1]
            assert await ac.lrs(run_id, step=2) == [0.1]
            assert await ac.lr(run_id) == 0.05
            assert [d async for d in ac.iter_decisions(run_id, limit=2)] == decisions
            with pytest.raises(NotFoundError):
                await ac.get_run(f"missing-{uuid.uuid4().hex[:8]}")
            with pytest.raises(ConflictError):
                await ac.create_run(run_id, params=PLATEAU, base_lrs=[0.3])

    asyncio.run(scenario())


# --- the service away ----------------------------------------------------------------------


def test_nothing_listening_raises_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=3, backoff=0.01, max_backoff=0.02) as c:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as info:
            c.get_run("anything")
        assert time.monotonic() - started < 5
    assert info.value.attempts == 4
    assert info.value.status_code is None
    assert "ConnectError" in str(info.value)


def test_nothing_listening_async_raises_after_retries() -> None:
    async def scenario() -> None:
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as ac:
            with pytest.raises(ServiceUnavailableError) as info:
                await ac.observe("anything", step=1, value=1.0)
            assert info.value.attempts == 3

    asyncio.run(scenario())


def test_client_waits_for_a_server_that_comes_up(tmp_path: Path, run_id: str) -> None:
    server = LiveServer(f"sqlite:///{tmp_path / 'late.db'}", port=free_port())
    failures: list[BaseException] = []

    def start_later() -> None:
        time.sleep(1.0)
        try:
            server.start()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        # Seeded jitter: the 40 waits sum to well over a minute, far more than a start needs,
        # while each stays <= 2 s so the client notices the server soon after it is up.
        with Client(
            server.url, retries=40, backoff=0.1, max_backoff=2.0, rng=random.Random(7)
        ) as c:
            started = time.monotonic()
            run = c.create_run(run_id, params=PLATEAU, base_lrs=[0.1])
            assert time.monotonic() - started >= 0.9
            assert run.run_id == run_id
            assert c.observe(run_id, step=1, value=1.0).seq == 1
    finally:
        starter.join()
        server.stop()
    assert not failures
