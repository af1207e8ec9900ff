"""Every rank the same lr, proved (docs/agreement.md): ranks acknowledge the lrs they applied,
the service flags a rank whose lrs differ in every rank's answer and in the run's summary, and
says through which step every rank is proved in agreement.

The ranks are real processes (tests/domain/rank_job.py: torch and LrpilotScheduler) against a
real uvicorn on SQLite and PostgreSQL; the acknowledgement route's checks go through the app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lrpilot.domain.agreement import applied_hash
from lrpilot_client import Applied
from lrpilot_client import applied_hash as client_hash
from tests.conftest import empty_database
from tests.harness import LiveServer
from tests.helpers import run_spec

ROOT = Path(__file__).resolve().parents[2]


def aggregated() -> dict[str, Any]:
    spec = run_spec({"patience": 1})
    spec["aggregate"] = {"timeout_s": 30, "on_timeout": "decide"}
    return spec


def ranks(
    world: int,
    jobs: list[dict[str, Any]],
    job: str = "tests.domain.rank_job",
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run the ranks of `job` (a module) side by side, each its own process (with `env` added
    to the environment); their answers, as printed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", job, str(r), str(world), json.dumps(jobs)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for r in range(world)
    ]
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        lines += [json.loads(line) for line in out.splitlines()]
    return lines


@pytest.fixture
def servers(live_server: LiveServer, tmp_path: Path) -> Iterator[list[LiveServer]]:
    """The real service on SQLite, and on PostgreSQL when the tests have one: one job's rank
    processes (torch takes seconds to import) serve runs on both."""
    try:
        postgres = empty_database("postgres", tmp_path)
    except pytest.skip.Exception:
        yield [live_server]
        return
    with LiveServer(postgres) as other:
        yield [live_server, other]


def test_a_rank_applying_other_lrs_is_flagged_to_every_rank_and_agreement_advances(
    servers: list[LiveServer],
) -> None:
    jobs = []
    for server in servers:
        for run in ("agree", "drift"):
            r = httpx.put(f"{server.url}/v1/runs/{run}", json=aggregated(), timeout=30)
            assert r.status_code == 201, r.text
        # rank 1 of "drift" doubles its lr from step 20 on
        jobs += [{"url": server.url, "run": "agree", "tamper": None},
                 {"url": server.url, "run": "drift", "tamper": [20, 1]}]  # fmt: skip
    answers = ranks(2, jobs)
    for server in servers:
        check_agreement(server.url, [a for a in answers if a["url"] == server.url])


def check_agreement(
    url: str,
    answers: list[dict[str, Any]],
    doubled: Callable[[float], float] = lambda x: 2 * x,
    leader: bool = False,
) -> None:
    """The runs "agree" and "drift" of a two-rank job whose rank 1 of "drift" trained step 20
    with `doubled` lrs (the run's lr doubled as the rank held it), as `answers` and the service
    say. In `leader` mode each rank's post is answered on its own: rank 0's answer to step 30
    has the flag only if rank 1's acknowledgement came first (the ranks race to post)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        agree = http.get("/v1/runs/agree/summary").json()["agreement"]
        drift = http.get("/v1/runs/drift/summary").json()["agreement"]
        lr_answer = http.get("/v1/runs/drift/lr", params={"step": 30}).json()
        log = http.get("/v1/runs/drift/decisions").json()["items"]

    # every rank acknowledged steps 10 and 20 (each with the next report): all agree
    assert agree == {"world_size": 2, "acked_ranks": 2, "agreed_through": 20,
                     "disagreeing": 0, "disagreements": []}  # fmt: skip
    assert all(a["disagreements"] == [] for a in answers if a["run"] == "agree")

    # rank 1 trained step 20 with twice the run's lr: flagged in step 30's answer to both
    # ranks (aggregated mode: they share it); the run is proved in agreement through step 10 only
    assert drift["agreed_through"] == 10 and drift["disagreeing"] == 1, drift
    [flag] = drift["disagreements"]
    assert (flag["rank"], flag["step"]) == (1, 20) and flag["got"] != flag["expected"]
    by_step = {(a["rank"], a["step"]): a["disagreements"] for a in answers if a["run"] == "drift"}
    assert by_step[(0, 20)] == by_step[(1, 20)] == []
    assert by_step[(1, 30)] == [flag]
    if leader:
        assert by_step[(0, 30)] in ([], [flag])
    else:
        assert by_step[(0, 30)] == [flag]
    assert lr_answer["disagreements"] == [flag]  # the readers see it too
    # the hash expected is the hash of the lrs the run decided for step 20, and rank 1's
    # the hash of twice them
    decided = next(d for d in log if d["step"] == 20)
    assert flag["expected"] == applied_hash(20, decided["seq"], decided["lrs"])
    assert flag["got"] == applied_hash(20, decided["seq"], [doubled(x) for x in decided["lrs"]])


def test_the_acknowledgement_route_checks_and_keeps_a_rank_each(api: TestClient) -> None:
    assert api.put("/v1/runs/lead", json=run_spec({"patience": 1})).status_code == 201
    for step in (10, 20):
        assert api.post("/v1/runs/lead/observations", json={"step": step, "value": 1.0}).is_success
    lr = api.get("/v1/runs/lead/lr", params={"step": 15}).json()
    good = Applied.of(15, lr["seq"], lr["lrs"]).to_json()
    assert (
        good["lrs_hash"]
        == applied_hash(15, lr["seq"], lr["lrs"])
        == client_hash(15, lr["seq"], lr["lrs"])
    )

    def ack(rank: int, body: dict[str, Any], world: int = 3) -> httpx.Response:
        return api.post("/v1/runs/lead/applied", json={"rank": rank, "world_size": world, **body})

    for rank in range(3):
        r = ack(rank, good)
        assert r.status_code == 200 and r.json()["agreed"] is True, r.text
    summary = api.get("/v1/runs/lead/summary").json()["agreement"]
    assert (summary["agreed_through"], summary["acked_ranks"]) == (15, 3)

    stale = Applied.of(15, 0, [0.1]).to_json()  # the base lr: rank 2 missed the decision
    r = ack(2, stale)
    assert r.status_code == 200 and r.json()["agreed"] is False
    flag = {"rank": 2, "step": 15, "seq": 0, "expected": good["lrs_hash"], "got": stale["lrs_hash"]}
    assert r.json()["disagreements"] == [flag]
    assert "disagreements" in api.get("/v1/runs/lead/lr").json()
    ack(
        0,
        Applied.of(20, 2, api.get("/v1/runs/lead/lr", params={"step": 20}).json()["lrs"]).to_json(),
    )
    summary = api.get("/v1/runs/lead/summary").json()["agreement"]
    assert summary["agreed_through"] == 15 and summary["disagreeing"] == 1  # rank 2 holds it

    # not decided yet, out of the world, not a hash, a missing run: clear 4xx
    r = ack(0, Applied.of(25, 2, [0.05]).to_json())
    assert r.status_code == 409 and "not decided yet" in r.json()["detail"]
    assert ack(3, good).status_code == 422
    assert ack(0, {**good, "lrs_hash": "x" * 64}).status_code == 422
    assert (
        api.post("/v1/runs/nope/applied", json={"rank": 0, "world_size": 1, **good}).status_code
        == 404
    )
    # an observation with `applied` but no rank is refused; without `applied`, as before
    r = api.post("/v1/runs/lead/observations", json={"step": 30, "value": 1.0, "applied": good})
    assert r.status_code == 422 and "rank" in r.text
    # with rank and world_size it is taken (the fast path and the route alike), and the answer
    # lists the run's disagreements; a key given twice inside `applied` is refused as anywhere
    body = {"step": 30, "value": 1.0, "rank": 1, "world_size": 3, "applied": good}
    r = api.post("/v1/runs/lead/observations", json=body)
    assert r.status_code == 200 and r.json()["disagreements"] == [flag], r.text
    twice = (
        b'{"step": 40, "value": 1.0, "rank": 1, "world_size": 3, "applied": {"step": 15, '
        b'"step": 15, "seq": 2, "lrs_hash": "' + good["lrs_hash"].encode() + b'"}}'
    )
    r = api.post(
        "/v1/runs/lead/observations", content=twice, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "step" in r.text
