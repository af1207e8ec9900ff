"""Leader mode: one rank posts, the others read GET lr?step=N&wait=T, which answers once the run
is decided through step N (or when the wait runs out, saying so), holding no worker thread
while it waits; across replicas on one PostgreSQL too."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.harness import LiveServer
from tests.helpers import run_spec

READERS = 60  # more than uvicorn's thread pool would let wait on threads (40)
WAIT_S = 30  # how long the readers may wait: a reader never woken waits this long
# Generous, far above what an answer takes, far below WAIT_S: only a reader (or a probe) left
# waiting for the whole wait fails it, never a loaded machine (speed is measured in bench/).
HANG_S = WAIT_S / 2


async def leader_and_readers(
    post_to: str, read_from: str, run_id: str, step: int, delay_s: float
) -> tuple[list[dict], float]:
    async with httpx.AsyncClient(timeout=2 * WAIT_S) as http:

        async def read() -> dict:
            r = await http.get(
                f"{read_from}/v1/runs/{run_id}/lr", params={"step": step, "wait": WAIT_S}
            )
            assert r.status_code == 200, r.text
            return r.json()

        async def lead() -> float:
            await asyncio.sleep(delay_s)
            posted = time.monotonic()
            r = await http.post(
                f"{post_to}/v1/runs/{run_id}/observations", json={"step": step, "value": 0.5}
            )
            assert r.status_code == 200, r.text
            return posted

        async def probe() -> float:
            await asyncio.sleep(delay_s / 2)  # while every reader waits
            started = time.monotonic()
            assert (await http.get(f"{read_from}/healthz")).status_code == 200
            r = await http.get(f"{read_from}/v1/runs/{run_id}/lr")  # a plain read
            assert r.status_code == 200
            return time.monotonic() - started

        *answers, posted, probe_s = await asyncio.gather(
            *(read() for _ in range(READERS)), lead(), probe()
        )
        assert probe_s < HANG_S, f"a plain read took {probe_s:.2f} s while readers waited"
        return answers, time.monotonic() - posted


def test_readers_get_the_leaders_decision_once_it_is_made(live_server: LiveServer) -> None:
    url = live_server.url
    with httpx.Client(base_url=url) as http:
        assert http.put("/v1/runs/lead", json=run_spec({"patience": 0})).status_code == 201
        http.post("/v1/runs/lead/observations", json={"step": 100, "value": 1.0})
    started = time.monotonic()
    answers, _ = asyncio.run(leader_and_readers(url, url, "lead", 200, delay_s=1.0))
    took = time.monotonic() - started
    assert 1.0 <= took < HANG_S, f"the readers answered after {took:.2f} s"
    assert all(a["certain"] and a["decided_at_step"] == 200 for a in answers)
    assert len({tuple(a["lrs"]) for a in answers}) == 1  # every rank the same lrs
    with httpx.Client(base_url=url) as http:
        decided = http.get("/v1/runs/lead/lr", params={"step": 200}).json()
    assert answers[0]["lrs"] == decided["lrs"]


def test_a_wait_that_runs_out_says_the_lrs_are_not_certain(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=2 * WAIT_S) as http:
        assert http.put("/v1/runs/idle", json=run_spec()).status_code == 201
        started = time.monotonic()
        r = http.get("/v1/runs/idle/lr", params={"step": 10, "wait": 0.5})
        waited = time.monotonic() - started
        assert r.status_code == 200 and r.json()["certain"] is False
        assert 0.5 <= waited < HANG_S
        # steps already decided answer at once, certain
        http.post("/v1/runs/idle/observations", json={"step": 10, "value": 1.0})
        started = time.monotonic()
        r = http.get("/v1/runs/idle/lr", params={"step": 5, "wait": WAIT_S})
        assert r.json()["certain"] is True and time.monotonic() - started < HANG_S
        assert http.get("/v1/runs/idle/lr", params={"step": 5, "wait": 61}).status_code == 422
        assert http.get("/v1/runs/nope/lr", params={"step": 5, "wait": 1}).status_code == 404
        # a wait that runs out before the first read ends still answers that read's 404
        for wait in (1e-9, 1e-6, 1e-3):
            r = http.get("/v1/runs/nope/lr", params={"step": 5, "wait": wait})
            assert r.status_code == 404, (wait, r.text)


@pytest.mark.postgres
def test_a_reader_on_another_replica_sees_the_decision(
    postgres_replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = postgres_replicas
    with httpx.Client(base_url=a.url) as http:
        assert http.put("/v1/runs/rep", json=run_spec()).status_code == 201
    answers, after_post = asyncio.run(leader_and_readers(a.url, b.url, "rep", 50, delay_s=0.5))
    assert all(x["certain"] and x["decided_at_step"] == 50 for x in answers)
    assert after_post < HANG_S
