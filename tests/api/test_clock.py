"""A run clocked in samples or tokens (issue 17), over HTTP on SQLite and PostgreSQL.

The clock is what a run's steps count. The policy never knows: a tokens run's lr at position p is
the steps run's lr at step p with the same params. What the clock changes is the scale of the
steps: positions reach 10**12, so a read over a range of them takes a stride (GET /lrs?every=),
and a read answers as many points as it is asked, never one a token.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lrpilot.api.models import MAX_LRS_COUNT
from lrpilot.policies.base import MAX_STEP
from tests.api.audit_calls import import_
from tests.conftest import app_client
from tests.helpers import run_spec

TOKENS = 10**12  # a long pre-training run's horizon, in tokens


def cosine(clock: str | None = None, **more: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "policy": {"name": "cosine", "version": 1, "params": {"T_max": TOKENS}},
        "base_lrs": [0.1, 0.01],
        **more,
    }
    if clock is not None:
        spec["clock"] = clock
    return spec


def put(api: TestClient, run_id: str, spec: dict[str, Any], status: int = 201) -> dict[str, Any]:
    r = api.put(f"/v1/runs/{run_id}", json=spec)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def lr(api: TestClient, run_id: str, step: int) -> list[float]:
    r = api.get(f"/v1/runs/{run_id}/lr", params={"step": step})
    assert r.status_code == 200, r.text
    return r.json()["lrs"]  # type: ignore[no-any-return]


def header(api: TestClient, run_id: str) -> dict[str, Any]:
    return json.loads(api.get(f"/v1/runs/{run_id}/export").text.splitlines()[0])["run"]  # type: ignore[no-any-return]


def test_a_run_without_a_clock_keeps_its_spec_bytes(api: TestClient) -> None:
    run = put(api, "plain", cosine())
    assert run["clock"] == "steps"  # the public shape says it
    assert "clock" not in header(api, "plain")  # the spec's documents do not: same hashes
    again = put(api, "plain", cosine("steps"), status=200)  # the default, given: the same spec
    assert (again["config_hash"], again["head_hash"]) == (run["config_hash"], run["head_hash"])
    r = api.put("/v1/runs/plain", json=cosine("tokens"))
    assert r.status_code == 409 and "clock steps" in r.json()["detail"], r.text
    assert api.get("/v1/runs/plain/summary").json()["clock"] == "steps"


def test_a_tokens_run_decides_and_reads_at_token_positions(api: TestClient, tmp_path: Path) -> None:
    run = put(api, "llm", cosine("tokens", metric="val_loss"))
    put(api, "same-in-steps", cosine())
    assert run["clock"] == "tokens" and header(api, "llm")["clock"] == "tokens"
    assert run["config_hash"] == api.get("/v1/runs/same-in-steps").json()["config_hash"]
    assert run["head_hash"] != api.get("/v1/runs/same-in-steps").json()["head_hash"]  # pinned
    positions = [0, 4096, 3 * 10**11, TOKENS // 2, TOKENS - 1, TOKENS, 2 * TOKENS]
    for step in positions[1:]:
        r = api.post("/v1/runs/llm/observations", json={"step": step, "value": 2.0})
        assert r.status_code == 200 and r.json()["step"] == step, r.text
    # the policy is the same function of the position as of the step
    assert [lr(api, "llm", p) for p in positions] == [
        lr(api, "same-in-steps", p) for p in positions
    ]
    assert lr(api, "llm", TOKENS // 2) == [pytest.approx(0.05), pytest.approx(0.005)]
    # the plot buckets the positions: as many buckets as asked, never one a token
    plot = api.get("/v1/runs/llm/plot", params={"points": 100}).json()
    buckets = [(b["step_lo"], b["step_hi"], b["count"]) for b in plot["buckets"]]
    assert buckets[3] == (TOKENS - 1, TOKENS, 2) and buckets[-1] == (2 * TOKENS, 2 * TOKENS, 1)
    assert sum(count for _, _, count in buckets) == 6
    assert plot["bucket_steps"] >= 2 * TOKENS // 100
    summary = api.get("/v1/runs/llm/summary").json()
    assert summary["clock"] == "tokens" and summary["last_step"] == 2 * TOKENS
    assert api.post("/v1/runs/llm/verify", json={}).json()["ok"] is True
    # exported and imported elsewhere, it is the same run: its clock, its lrs
    bundle = api.get("/v1/runs/llm/export").text
    with app_client(f"sqlite:///{tmp_path / 'elsewhere.db'}") as elsewhere:
        assert import_(elsewhere, bundle).status_code == 201
        assert elsewhere.get("/v1/runs/llm").json()["clock"] == "tokens"
        assert lr(elsewhere, "llm", TOKENS // 2) == lr(api, "llm", TOKENS // 2)
        assert elsewhere.post("/v1/runs/llm/verify", json={}).json()["ok"] is True
    r = api.put("/v1/runs/bad", json=cosine("epochs"))
    assert r.status_code == 422 and "'steps', 'samples' or 'tokens'" in r.text, r.text


def test_lrs_over_a_token_range_takes_a_stride(api: TestClient) -> None:
    put(api, "strided", cosine("tokens"))
    every = TOKENS // 1000
    page = api.get("/v1/runs/strided/lrs", params={"from": 0, "count": 1001, "every": every})
    assert page.status_code == 200, page.text
    body = page.json()
    assert (body["from"], body["count"], body["every"], len(body["lrs"])) == (0, 1001, every, 1001)
    assert body["lrs"][::250] == [lr(api, "strided", k * every) for k in range(0, 1001, 250)]
    assert body["certain_through"] == TOKENS  # a pure schedule: all of it
    # the whole token range in the largest answer: MAX_LRS_COUNT points, not 10**12
    r = api.get("/v1/runs/strided/lrs", params={"from": 0, "count": MAX_LRS_COUNT, "every": 10**8})
    assert r.status_code == 200 and len(r.json()["lrs"]) == MAX_LRS_COUNT
    # a stride past the largest step: as many points as fit below it
    r = api.get("/v1/runs/strided/lrs", params={"from": MAX_STEP - 10, "count": 50, "every": 4})
    assert r.status_code == 200 and r.json()["count"] == 3, r.text
    for bad in (0, -1, MAX_STEP + 1):
        r = api.get("/v1/runs/strided/lrs", params={"from": 0, "every": bad})
        assert r.status_code == 422 and "every" in r.text, r.text
    # without `every`: consecutive steps, as before
    plain = api.get("/v1/runs/strided/lrs", params={"from": 5, "count": 3}).json()
    assert plain["every"] == 1 and plain["lrs"] == [lr(api, "strided", s) for s in (5, 6, 7)]


def test_a_strided_read_of_a_plateau_run_follows_every_decision(api: TestClient) -> None:
    """Many decisions between two points read: each point gets the one in force there (the
    store loads one entry a point, not the range's), across a rewind's superseded branch."""
    spec = run_spec({"patience": 0, "factor": 0.9, "threshold": 0.0}) | {"clock": "samples"}
    put(api, "plateau-samples", spec)
    for k in range(1, 121):
        value = 1.0 / k if k % 3 else 5.0  # every third a plateau: a reduction
        body = {"step": 1000 * k, "value": value}
        assert api.post("/v1/runs/plateau-samples/observations", json=body).status_code == 200
    r = api.post("/v1/runs/plateau-samples/rewind", json={"to_step": 90_000})
    assert r.status_code == 200, r.text
    for k in range(91, 101):  # another branch after the rewind: no plateau in it
        body = {"step": 1000 * k + 500, "value": 1.0 / (1000 + k)}
        assert api.post("/v1/runs/plateau-samples/observations", json=body).status_code == 200
    for first, every in ((0, 7919), (2999, 1000), (45_000, 3001)):
        page = api.get(
            "/v1/runs/plateau-samples/lrs", params={"from": first, "count": 40, "every": every}
        ).json()
        want = [lr(api, "plateau-samples", first + i * every) for i in range(40)]
        assert page["lrs"] == want, (first, every)
        assert len(set(map(tuple, want))) > 5  # the points cross many decisions
        assert page["certain_through"] == min(first + 39 * every, 100_500)


def test_aggregated_and_elastic_runs_count_tokens(api: TestClient) -> None:
    # aggregated: every rank reports the same position, one decision there
    spec = run_spec() | {"clock": "tokens", "aggregate": {"timeout_s": 30, "on_timeout": "decide"}}
    put(api, "agg-tokens", spec)
    answers: list[int] = []

    def report(rank: int) -> None:  # each rank's post waits for the other's
        body = {"step": 2**40, "value": 0.5, "rank": rank, "world_size": 2}
        answers.append(api.post("/v1/runs/agg-tokens/observations", json=body).json()["step"])

    threads = [threading.Thread(target=report, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [2**40, 2**40]
    decisions = api.get("/v1/runs/agg-tokens/decisions").json()["items"]
    assert [d["step"] for d in decisions] == [2**40]
    # elastic: the global batch doubles at a position; the schedule in tokens does not bend
    scaling = {"rule": "linear", "by": "batch_size", "base": 8}
    put(api, "elastic-tokens", cosine("tokens", scaling=scaling))
    put(api, "elastic-steps", cosine())
    r = api.post("/v1/runs/elastic-tokens/resize", json={"step": 20_480, "batch_size": 16})
    assert r.status_code == 200 and r.json()["resized"] is True, r.text
    for p in (0, 20_479):
        assert lr(api, "elastic-tokens", p) == lr(api, "elastic-steps", p)
    for p in (20_480, 10**9, TOKENS // 3):
        assert lr(api, "elastic-tokens", p) == [2 * x for x in lr(api, "elastic-steps", p)]
