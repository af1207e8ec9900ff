"""Aggregated mode (project issue 8): every rank posts its local metric with rank and world_size
(and a weight); the step is decided once, from the weighted mean, when every rank has reported
(or at the run's timeout: decide from the ranks present, or refuse), and every rank gets the
same decision. A waiting rank holds no worker thread and no connection; ranks may be spread
over several replicas on one PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lrpilot.entries import weighted_mean
from tests.conftest import app_client
from tests.harness import LiveServer
from tests.helpers import run_spec

# Generous bounds, far above what an answer takes, far below the 30 s a rank waits by default:
# only a rank (or a read) left waiting for a whole timeout fails them, never a loaded machine.
HANG_S = 15.0


def aggregated(timeout_s: float = 30, on_timeout: str = "decide", **kw: Any) -> dict[str, Any]:
    spec = run_spec(**kw)
    spec["aggregate"] = {"timeout_s": timeout_s, "on_timeout": on_timeout}
    return spec


async def post_all(
    url: str, run_id: str, reports: list[dict[str, Any]], delay_s: float = 0.0
) -> list[httpx.Response]:
    # one connection a rank, as ranks are (httpx's pool holds 100 by default)
    limits = httpx.Limits(max_connections=len(reports))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one(i: int, body: dict[str, Any]) -> httpx.Response:
            await asyncio.sleep(delay_s * i)
            return await http.post(f"/v1/runs/{run_id}/observations", json=body)

        return await asyncio.gather(*(one(i, b) for i, b in enumerate(reports)))


def test_ranks_get_one_decision_from_their_weighted_mean(
    backend_server: LiveServer, tmp_path: Path
) -> None:
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        r = http.put("/v1/runs/agg", json=aggregated(params={"patience": 0}))
        assert r.status_code == 201, r.text
        assert r.json()["aggregate"] == {"timeout_s": 30.0, "on_timeout": "decide"}
        assert http.put("/v1/runs/agg", json=aggregated(params={"patience": 0})).status_code == 200
        other = aggregated(timeout_s=10, params={"patience": 0})
        assert http.put("/v1/runs/agg", json=other).status_code == 409
        assert http.put("/v1/runs/agg", json=run_spec({"patience": 0})).status_code == 409
        # a leader-mode run's document keeps its shape
        http.put("/v1/runs/lead", json=run_spec())
        assert "aggregate" not in http.get("/v1/runs/lead").json()

    values = [0.9, 0.7, 0.8, 0.6]
    weights = [100.0, 50.0, 25.0, 1.0]
    for step, scale in ((10, 1.0), (20, 1.1), (30, 0.5)):
        reports = [
            {"step": step, "value": v * scale, "rank": i, "world_size": 4, "weight": w}
            for i, (v, w) in enumerate(zip(values, weights, strict=True))
        ]
        answers = asyncio.run(post_all(backend_server.url, "agg", reports))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert len({a.content for a in answers}) == 1  # every rank the same bytes
        decision = answers[0].json()
        expected = weighted_mean((v * scale, w) for v, w in zip(values, weights, strict=True))
        assert decision["value"] == expected
        assert decision["ranks"] == [
            {"rank": i, "value": v * scale, "weight": w}
            for i, (v, w) in enumerate(zip(values, weights, strict=True))
        ]
        assert "missing_ranks" not in decision
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        log = http.get("/v1/runs/agg/decisions").json()["items"]
        assert [d["step"] for d in log] == [10, 20, 30]  # one decision a step
        assert log[1]["action"] == "reduce"  # the policy saw the means: 20's is no improvement
        # a retry of a decided step: the same decision; another value from the rank: 409
        again = http.post(
            "/v1/runs/agg/observations",
            json={"step": 20, "value": 0.7 * 1.1, "rank": 1, "world_size": 4, "weight": 50.0},
        )
        assert again.status_code == 200 and again.json() == log[1]
        changed = http.post(
            "/v1/runs/agg/observations",
            json={"step": 20, "value": 0.1, "rank": 1, "world_size": 4, "weight": 50.0},
        )
        assert changed.status_code == 409 and "rank 1" in changed.json()["detail"]
        # rank and world_size are required in aggregated mode
        bare = http.post("/v1/runs/agg/observations", json={"step": 40, "value": 0.5})
        assert bare.status_code == 422, bare.text
        assert bare.json()["detail"][0]["loc"] == ["body", "rank"]
        no_world = http.post("/v1/runs/agg/observations", json={"step": 40, "value": 1, "rank": 0})
        assert no_world.status_code == 422
        assert no_world.json()["detail"][0]["loc"] == ["body", "world_size"]
        bad_weight = {"step": 40, "value": 1, "rank": 0, "world_size": 2, "weight": 0}
        assert http.post("/v1/runs/agg/observations", json=bad_weight).status_code == 422

        verified = http.post("/v1/runs/agg/verify", json={}).json()
        assert verified["ok"] is True and verified["count"] == 3, verified
        bundle = http.get("/v1/runs/agg/export").text
    # export, then import into a fresh database: it verifies, and the run is aggregated there
    with app_client(f"sqlite:///{tmp_path / 'imported.db'}") as api:
        r = api.post(
            "/v1/runs/import",
            content=bundle.encode(),
            headers={"content-type": "application/x-ndjson"},
        )
        assert r.status_code in (200, 201), r.text
        run = api.get("/v1/runs/agg").json()
        assert run["aggregate"] == {"timeout_s": 30.0, "on_timeout": "decide"}
        assert api.post("/v1/runs/agg/verify", json={}).json()["ok"] is True
        assert api.get("/v1/runs/agg/export").text == bundle


def test_a_rank_counts_once_and_may_not_change_its_report(backend_server: LiveServer) -> None:
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        assert http.put("/v1/runs/twice", json=aggregated()).status_code == 201

    def report(rank: int, value: float, world: int = 3) -> dict[str, Any]:
        return {"step": 5, "value": value, "rank": rank, "world_size": world}

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=backend_server.url, timeout=60) as http:
            path = "/v1/runs/twice/observations"
            first = [asyncio.create_task(http.post(path, json=report(0, 0.5))) for _ in range(2)]
            await asyncio.sleep(0.5)  # rank 0's report is stored, twice asked
            changed = await http.post(path, json=report(0, 0.25))
            assert changed.status_code == 409, changed.text
            assert "rank 0" in changed.json()["detail"]
            other_world = await http.post(path, json=report(1, 0.5, world=4))
            assert other_world.status_code == 409, other_world.text
            assert "world_size" in other_world.json()["detail"]
            rest = [http.post(path, json=report(r, 0.8)) for r in (1, 2)]
            return [*await asyncio.gather(*first, *rest)]

    answers = asyncio.run(scenario())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    decision = answers[0].json()
    assert [r["rank"] for r in decision["ranks"]] == [0, 1, 2]
    assert decision["value"] == weighted_mean([(0.5, 1.0), (0.8, 1.0), (0.8, 1.0)])
    with httpx.Client(base_url=backend_server.url) as http:
        assert len(http.get("/v1/runs/twice/decisions").json()["items"]) == 1


def test_missing_ranks_at_the_timeout_decide_from_the_ranks_present(
    backend_server: LiveServer,
) -> None:
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        assert http.put("/v1/runs/late", json=aggregated(timeout_s=1)).status_code == 201
    reports = [{"step": 7, "value": v, "rank": r, "world_size": 4} for r, v in ((0, 1.0), (2, 3.0))]
    started = time.monotonic()
    answers = asyncio.run(post_all(backend_server.url, "late", reports))
    took = time.monotonic() - started
    assert 1.0 <= took < HANG_S, took
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    decision = answers[0].json()
    assert decision["value"] == 2.0
    assert decision["missing_ranks"] == [1, 3]
    assert "ranks 0, 2 of 4 counted; 1, 3 did not report within 1 s" in decision["reason"]
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        # a rank that reports too late gets the decision it was not counted in
        late = http.post(
            "/v1/runs/late/observations", json={"step": 7, "value": 9.0, "rank": 1, "world_size": 4}
        )
        assert late.status_code == 200 and late.content == answers[0].content
        assert http.post("/v1/runs/late/verify", json={}).json()["ok"] is True


def test_missing_ranks_at_the_timeout_are_refused_when_the_run_says_so(
    backend_server: LiveServer,
) -> None:
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        spec = aggregated(timeout_s=1, on_timeout="refuse")
        assert http.put("/v1/runs/strict", json=spec).status_code == 201
        started = time.monotonic()
        path = "/v1/runs/strict/observations"
        r = http.post(path, json={"step": 3, "value": 1.0, "rank": 0, "world_size": 2})
        assert 1.0 <= time.monotonic() - started < HANG_S
        assert r.status_code == 409, r.text
        assert "ranks 1 of 2 did not report within 1 s" in r.json()["detail"]
        assert http.get("/v1/runs/strict/decisions").json()["items"] == []
        # once every rank has reported, the step is decided, and every rank gets it
        done = http.post(path, json={"step": 3, "value": 3.0, "rank": 1, "world_size": 2})
        assert done.status_code == 200, done.text
        assert done.json()["value"] == 2.0 and "missing_ranks" not in done.json()
        again = http.post(path, json={"step": 3, "value": 1.0, "rank": 0, "world_size": 2})
        assert again.content == done.content


def test_waiting_ranks_hold_no_worker_thread(backend_server: LiveServer) -> None:
    ranks = 61  # 60 wait: more than uvicorn's thread pool would let wait on threads (40)
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        assert http.put("/v1/runs/many", json=aggregated()).status_code == 201

    async def scenario() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=backend_server.url, timeout=60) as http:
            path = "/v1/runs/many/observations"

            def report(rank: int) -> dict[str, Any]:
                return {"step": 1, "value": float(rank), "rank": rank, "world_size": ranks}

            waiting = [asyncio.create_task(http.post(path, json=report(r))) for r in range(60)]
            await asyncio.sleep(1.5)
            started = time.monotonic()
            assert (await http.get("/v1/runs/many")).status_code == 200  # a plain (sync) read
            assert (await http.get("/v1/runs/many/lrs", params={"from": 0})).status_code == 200
            probe = time.monotonic() - started
            last = await http.post(path, json=report(60))
            return [*await asyncio.gather(*waiting), last], probe

    answers, probe = asyncio.run(scenario())
    assert probe < HANG_S, f"plain reads took {probe:.2f} s while 60 ranks waited"
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:3]
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["value"] == weighted_mean((float(r), 1.0) for r in range(ranks))


def test_a_large_decision_is_sent_gzipped_to_the_ranks_that_accept_it(
    backend_server: LiveServer,
) -> None:
    """400 ranks: a 20 kB decision. Each rank (httpx asks for gzip by default) gets it
    gzipped, and the same decision whole; a client that does not accept gzip gets it plain,
    byte for byte what the log holds. A small answer is never compressed."""
    ranks = 400
    with httpx.Client(base_url=backend_server.url, timeout=30) as http:
        assert http.put("/v1/runs/wide", json=aggregated()).status_code == 201
        reports = [
            {"step": 1, "value": 1.0 + r / ranks, "rank": r, "world_size": ranks}
            for r in range(ranks)
        ]
        answers = asyncio.run(post_all(backend_server.url, "wide", reports))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:3]
        assert {a.headers.get("content-encoding") for a in answers} == {"gzip"}
        assert {a.headers.get("vary") for a in answers} == {"Accept-Encoding"}
        assert len({a.content for a in answers}) == 1
        logged = http.get("/v1/runs/wide/decisions").json()["items"][0]
        assert json.loads(answers[0].content) == logged and len(answers[0].content) > 16 << 10
        plain = http.post(
            "/v1/runs/wide/observations",
            json=reports[7],
            headers={"accept-encoding": "identity"},
        )  # a retry: the same decision, not compressed
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        assert plain.content == answers[0].content
        refused = http.post(
            "/v1/runs/wide/observations", json=reports[8], headers={"accept-encoding": "gzip;q=0"}
        )
        assert "content-encoding" not in refused.headers and refused.content == plain.content
        assert http.put("/v1/runs/narrow", json=aggregated()).status_code == 201
        small = {"step": 1, "value": 1.0, "rank": 0, "world_size": 1}
        one = http.post("/v1/runs/narrow/observations", json=small)
        assert one.status_code == 200 and "content-encoding" not in one.headers


@pytest.mark.postgres
def test_ranks_on_two_replicas_get_the_same_decision(
    postgres_replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = postgres_replicas
    assert httpx.put(f"{a.url}/v1/runs/spread", json=aggregated(), timeout=30).status_code == 201

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:

            async def one(rank: int) -> httpx.Response:
                await asyncio.sleep(0.2 * rank)
                base = a.url if rank % 2 == 0 else b.url
                body = {"step": 4, "value": 0.1 * (rank + 1), "rank": rank, "world_size": 6}
                return await http.post(f"{base}/v1/runs/spread/observations", json=body)

            return await asyncio.gather(*(one(r) for r in range(6)))

    started = time.monotonic()
    answers = asyncio.run(scenario())
    assert time.monotonic() - started < HANG_S
    assert all(x.status_code == 200 for x in answers), [x.text for x in answers]
    assert len({x.content for x in answers}) == 1
    assert [r["rank"] for r in json.loads(answers[0].content)["ranks"]] == list(range(6))


def test_a_rewind_forgets_the_reports_of_the_later_steps(api: TestClient) -> None:
    spec = aggregated(timeout_s=0.3, on_timeout="refuse")
    assert api.put("/v1/runs/back", json=spec).status_code == 201
    path = "/v1/runs/back/observations"
    report = {"step": 5, "value": 1.0, "rank": 0, "world_size": 2}
    assert api.post(path, json=report).status_code == 409  # rank 1 never came: refused
    # the job resumes from step 0: step 5 comes again, on one rank now
    assert api.post("/v1/runs/back/rewind", json={"to_step": 0}).status_code == 200
    r = api.post(path, json={"step": 5, "value": 2.0, "rank": 0, "world_size": 1})
    assert r.status_code == 200, r.text
    assert r.json()["value"] == 2.0 and r.json()["ranks"] == [
        {"rank": 0, "value": 2.0, "weight": 1.0}
    ]


def test_a_non_finite_report_makes_the_mean_non_finite(api: TestClient) -> None:
    assert api.put("/v1/runs/nan", json=aggregated()).status_code == 201
    r = api.post(
        "/v1/runs/nan/observations",
        json={"step": 1, "value": "NaN", "rank": 0, "world_size": 1, "weight": 2.5},
    )
    assert r.status_code == 200, r.text
    assert r.json()["value"] == "NaN" and r.json()["ranks"][0]["value"] == "NaN"
    assert api.post("/v1/runs/nan/verify", json={}).json()["ok"] is True
