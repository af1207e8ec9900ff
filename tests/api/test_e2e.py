"""The real service under uvicorn on 127.0.0.1, talked to over HTTP."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import httpx
import torch

from lrpilot.canonical import float_token
from tests.harness import LiveServer
from tests.helpers import run_spec, strict_json

PARAMS = {"mode": "min", "factor": 0.5, "patience": 3, "threshold": 1e-3, "cooldown": 2,
          "min_lr": [1e-4, 1e-5]}  # fmt: skip
BASE_LRS = [0.1, 0.01]


def stream(n: int, seed: int = 7) -> list[float]:
    """A validation loss that improves, stalls, ties, spikes and sometimes is NaN."""
    rng = random.Random(seed)
    values, level = [], 2.0
    for i in range(n):
        if i % 17 == 5:
            values.append(float("nan"))
        elif rng.random() < 0.3:
            level *= rng.uniform(0.9, 0.999)
            values.append(level)
        elif rng.random() < 0.5:
            values.append(level)  # an exact tie with the best
        else:
            values.append(level * rng.uniform(1.0, 1.05))
    return values


def torch_lrs(values: list[float]) -> list[list[float]]:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASE_LRS]
    opt = torch.optim.SGD(
        [{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS, strict=True)]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **PARAMS)  # type: ignore[arg-type]
    out = []
    for v in values:
        sched.step(v)
        out.append([g["lr"] for g in opt.param_groups])
    return out


def observe(http: httpx.Client, run_id: str, step: int, value: float) -> dict[str, Any]:
    r = http.post(
        f"/v1/runs/{run_id}/observations", json={"step": step, "value": float_token(value)}
    )
    assert r.status_code == 200, r.text
    decision: dict[str, Any] = strict_json(r.text)
    return decision


def test_100_observations_match_torch_reduce_lr_on_plateau(live_server: LiveServer) -> None:
    values = stream(100)
    with httpx.Client(base_url=live_server.url) as http:
        assert http.put("/v1/runs/vs-torch", json=run_spec(PARAMS, BASE_LRS)).status_code == 201
        served = [observe(http, "vs-torch", 10 * i, v)["lrs"] for i, v in enumerate(values)]
    expected = torch_lrs(values)
    assert served == expected  # the same floats, not close ones
    assert len({tuple(x) for x in expected}) > 3  # the stream really reduces several times


def test_restart_mid_run_continues_as_if_uninterrupted(live_server: LiveServer) -> None:
    values = stream(60, seed=11)
    spec = run_spec(PARAMS, BASE_LRS)
    with httpx.Client(base_url=live_server.url) as http:
        http.put("/v1/runs/straight", json=spec)
        http.put("/v1/runs/restarted", json=spec)
        straight = [observe(http, "straight", i, v) for i, v in enumerate(values)]
        first = [observe(http, "restarted", i, v) for i, v in enumerate(values[:30])]

    live_server.stop()
    live_server.start()  # same database file, new process

    with httpx.Client(base_url=live_server.url) as http:
        # the job retries its last observation after the restart: the same decision comes back
        assert observe(http, "restarted", 29, values[29]) == first[-1]
        rest = [observe(http, "restarted", i, v) for i, v in enumerate(values) if i >= 30]
        run = http.get("/v1/runs/restarted").json()
    restarted = first + rest

    def essence(d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["seq"], d["step"], d["value"], d["lrs"], d["action"], d["reason"], d["state"])

    assert [essence(d) for d in restarted] == [essence(d) for d in straight]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(restarted))
    assert run["counts"]["decisions"] == 60


def test_concurrent_ranks_posting_the_same_steps_leave_one_decision_per_step(
    live_server: LiveServer,
) -> None:
    values = stream(40, seed=3)
    with httpx.Client(base_url=live_server.url) as http:
        http.put("/v1/runs/ranks", json=run_spec({"patience": 2}, [0.1]))
    answers: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(values))}
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def rank(r: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            barrier.wait()
            for step, value in enumerate(values):
                body = {"step": step, "value": float_token(value), "rank": r, "world_size": 8}
                resp = http.post("/v1/runs/ranks/observations", json=body)
                if resp.status_code != 200:
                    errors.append(f"rank {r} step {step}: {resp.status_code} {resp.text}")
                else:
                    answers[step].append(strict_json(resp.text))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]
    for step, got in answers.items():
        assert len(got) == 8 and all(d == got[0] for d in got), f"ranks disagree at step {step}"
    with httpx.Client(base_url=live_server.url) as http:
        log = http.get("/v1/runs/ranks/decisions?limit=1000").json()["items"]
    assert [d["step"] for d in log] == list(range(len(values)))  # exactly one per step
    assert [d["seq"] for d in log] == list(range(1, len(values) + 1))
