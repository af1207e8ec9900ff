"""The HTTP contract of DESIGN.md, on SQLite and PostgreSQL."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from fastapi.testclient import TestClient

import lrpilot
from lrpilot.canonical import canonical_json, sha256_hex
from lrpilot.entries import run_genesis
from lrpilot.policies import POLICIES
from tests.helpers import run_spec, strict_json


def post(api: TestClient, run_id: str, step: int, value: object, **extra: object) -> object:
    return api.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value, **extra})


def test_put_run_creates_then_returns_same_spec_and_refuses_another(api: TestClient) -> None:
    r = api.put("/v1/runs/exp-1", json=run_spec({"patience": 3}, labels={"team": "vision"}))
    assert r.status_code == 201, r.text
    run = strict_json(r.text)
    assert run["policy"]["params"]["patience"] == 3
    assert run["policy"]["params"]["factor"] == 0.1  # defaults are filled in
    assert run["lrs"] == [0.1] and run["last_step"] is None and run["counts"]["decisions"] == 0
    assert len(run["config_hash"]) == 64

    again = api.put("/v1/runs/exp-1", json=run_spec({"patience": 3}, labels={"team": "vision"}))
    assert again.status_code == 200 and again.json() == run
    # the same params spelled out in full are the same spec
    full = api.put(
        "/v1/runs/exp-1",
        json=run_spec({**run["policy"]["params"]}, labels={"team": "vision"}),
    )
    assert full.status_code == 200

    other = api.put("/v1/runs/exp-1", json=run_spec({"patience": 4}, labels={"team": "vision"}))
    assert other.status_code == 409
    assert "exp-1" in other.json()["detail"] and "another spec" in other.json()["detail"]
    assert api.get("/v1/runs/exp-1").json()["policy"]["params"]["patience"] == 3


@pytest.mark.parametrize("policy_id", sorted(POLICIES))
def test_every_policys_example_run_created_again_is_the_same_run(
    api: TestClient, policy_id: str
) -> None:
    """Creating a run again with its spec answers the stored run (200), for every released
    policy: resolved params hold tuples and nested specs where the stored ones are JSON."""
    policy = POLICIES[policy_id]
    params = policy.params_schema()["examples"][0]
    spec = {
        "policy": {"name": policy.name, "version": policy.version, "params": params},
        "base_lrs": params.get("base_lrs", [0.1]),  # a composite's example may carry its own
    }
    first = api.put(f"/v1/runs/again-{policy.name}", json=spec)
    assert first.status_code == 201, first.text
    again = api.put(f"/v1/runs/again-{policy.name}", json=spec)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


def test_unknown_run_is_404_everywhere(api: TestClient) -> None:
    for r in (
        api.get("/v1/runs/nope"),
        post(api, "nope", 1, 0.5),
        api.get("/v1/runs/nope/lr"),
        api.get("/v1/runs/nope/decisions"),
    ):
        assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_invalid_run_id_and_spec_are_422(api: TestClient) -> None:
    assert api.put("/v1/runs/bad%20id", json=run_spec()).status_code == 422
    assert api.put("/v1/runs/" + "x" * 129, json=run_spec()).status_code == 422
    for spec in (
        {**run_spec(), "base_lrs": []},
        {**run_spec(), "base_lrs": [-0.1]},
        {**run_spec(), "base_lrs": ["NaN"]},
        {**run_spec(), "unexpected": 1},
        {"policy": {"name": "plateau", "version": "1"}, "base_lrs": [0.1]},
    ):
        r = api.put("/v1/runs/r", json=spec)
        assert r.status_code == 422, (spec, r.text)
        strict_json(r.text)
    r = api.put("/v1/runs/r", json={**run_spec(), "policy": {"name": "nosuch", "version": 7}})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "policy", "name"] and "plateau@1" in err["msg"]
    r = api.put("/v1/runs/r", json={**run_spec(), "policy": {"name": "plateau", "version": 9}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "policy", "version"]
    assert api.get("/v1/runs/r").status_code == 404  # nothing was stored


def test_invalid_params_name_the_param_and_the_rule(api: TestClient) -> None:
    cases = {
        "factor": ({"factor": 1.0}, "less than 1"),
        "patience": ({"patience": -1}, "greater than or equal to 0"),
        "cooldown": ({"cooldown": -2}, "greater than or equal to 0"),
        "min_lr": ({"min_lr": [0.0, 0.0]}, "one per param group"),
        "mode": ({"mode": "minimise"}, "'min' or 'max'"),
        "threshold_mode": ({"threshold_mode": "relative"}, "'rel' or 'abs'"),
        "flavor": ({"flavor": "jax"}, "'torch' or 'keras'"),
        "extra": ({"gamma": 0.5}, "Extra inputs are not permitted"),
    }
    for field, (params, rule) in cases.items():
        r = api.put(f"/v1/runs/p-{field}", json=run_spec(params, base_lrs=[0.1]))
        assert r.status_code == 422, (field, r.text)
        detail = r.json()["detail"]
        assert any(rule in d["msg"] for d in detail), (field, detail)
        assert all(d["loc"][:3] == ["body", "policy", "params"] for d in detail), detail
    r = api.put("/v1/runs/k", json=run_spec({"flavor": "keras", "min_delta": -1}))
    assert r.status_code == 422 and "min_delta" in r.text
    assert api.get("/v1/runs").json()["items"] == []


def test_observations_decide_and_retries_never_double_count(api: TestClient) -> None:
    api.put("/v1/runs/r", json=run_spec({"patience": 1, "factor": 0.5}))
    d1 = post(api, "r", 100, 1.0).json()
    d2 = post(api, "r", 200, 1.0).json()
    d3 = post(api, "r", 300, 1.0).json()
    assert [d["action"] for d in (d1, d2, d3)] == ["hold", "hold", "reduce"]
    assert d3["lrs"] == [0.05] and d3["previous_lrs"] == [0.1]
    assert "patience 1" in d3["reason"] and "0.1 -> 0.05" in d3["reason"]

    # a retry of any decided step returns that very decision, whatever the last step is
    assert post(api, "r", 200, 1.0).json() == d2
    assert post(api, "r", 300, 1.0).json() == d3
    run = api.get("/v1/runs/r").json()
    assert run["counts"] == {"decisions": 3, "reductions": 1} and run["last_step"] == 300

    changed = post(api, "r", 200, 0.5)
    assert changed.status_code == 409
    assert "step 200" in changed.json()["detail"] and "already decided" in changed.json()["detail"]
    backwards = post(api, "r", 150, 0.5)
    assert backwards.status_code == 409
    assert "step 150" in backwards.json()["detail"] and "300" in backwards.json()["detail"]
    assert api.get("/v1/runs/r").json() == run  # refusals change nothing


def test_non_finite_metrics_travel_in_every_spelling(api: TestClient) -> None:
    api.put("/v1/runs/nf", json=run_spec({"patience": 0}))
    bodies = [
        b'{"step": 1, "value": NaN}',
        b'{"step": 2, "value": "Infinity"}',
        b'{"step": 3, "value": -Infinity}',
        b'{"step": 4, "value": "NaN"}',
        b'{"step": 5, "value": 1e999}',
    ]
    expected = ["NaN", "Infinity", "-Infinity", "NaN", "Infinity"]
    for body, want in zip(bodies, expected, strict=True):
        r = api.post(
            "/v1/runs/nf/observations", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        assert strict_json(r.text)["value"] == want
    # -Infinity is an improvement on best inf in min mode: torch agrees (see test_e2e)
    decisions = strict_json(api.get("/v1/runs/nf/decisions").text)["items"]
    assert decisions[2]["state"]["best"] == "-Infinity"
    # a NaN retry is the same value, so it is a retry, not a conflict
    again = api.post(
        "/v1/runs/nf/observations",
        content=b'{"step": 1, "value": NaN}',
        headers={"content-type": "application/json"},
    )
    assert again.status_code == 200 and strict_json(again.text)["seq"] == 1


def test_bad_observations_are_422_and_change_nothing(api: TestClient) -> None:
    api.put("/v1/runs/b", json=run_spec())
    for body in (
        {"step": 1, "value": "abc"},
        {"step": 1, "value": True},
        {"step": 1, "value": None},
        {"step": -1, "value": 0.5},
        {"step": 1.5, "value": 0.5},
        {"step": 2**63, "value": 0.5},
        {"step": 1},
        {"step": 1, "value": 0.5, "rank": 4, "world_size": 4},
        {"step": 1, "value": 0.5, "color": "red"},
    ):
        r = api.post("/v1/runs/b/observations", json=body)
        assert r.status_code == 422, (body, r.text)
        strict_json(r.text)
    for raw in (b"not json", b"[1, 2]", b""):
        r = api.post(
            "/v1/runs/b/observations", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, (raw, r.text)
    form = api.post("/v1/runs/b/observations", content=b'{"step": 1, "value": 0.5}',
                    headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert form.status_code == 422 and "Content-Type: application/json" in form.text
    assert api.get("/v1/runs/b").json()["counts"]["decisions"] == 0


def test_decisions_form_a_hash_chain(api: TestClient) -> None:
    api.put("/v1/runs/h", json=run_spec({"patience": 2}))
    for step, value in enumerate([3.0, 2.0, 2.5, "NaN", 2.0, 1.0]):
        assert post(api, "h", step, value).status_code == 200
    items = strict_json(api.get("/v1/runs/h/decisions").text)["items"]
    # the first links to the run itself: the chain pins every field of it that a read serves
    header = strict_json(api.get("/v1/runs/h/export").text.splitlines()[0])
    prev = run_genesis(header["run"])
    assert api.get("/v1/runs/h").json()["created_at"] == header["run"]["created_at"]
    for seq, d in enumerate(items, start=1):
        assert d["seq"] == seq and d["prev_hash"] == prev
        body = {k: v for k, v in d.items() if k != "hash"}
        assert d["hash"] == sha256_hex(canonical_json(body))
        prev = d["hash"]


def test_lr_at_a_step_is_the_last_decision_at_or_before_it(api: TestClient) -> None:
    api.put("/v1/runs/lr", json=run_spec({"patience": 0, "factor": 0.5}, base_lrs=[0.2, 0.02]))
    assert api.get("/v1/runs/lr/lr?step=5").json()["lrs"] == [0.2, 0.02]
    post(api, "lr", 10, 1.0)  # improves: hold
    post(api, "lr", 20, 2.0)  # worse, patience 0: reduce
    at = {s: api.get(f"/v1/runs/lr/lr?step={s}").json() for s in (0, 10, 15, 20, 1000)}
    assert at[0]["lrs"] == [0.2, 0.02] and at[0]["seq"] is None
    assert at[15]["lrs"] == [0.2, 0.02] and at[15]["decided_at_step"] == 10
    assert at[20]["lrs"] == [0.1, 0.01] and at[20]["seq"] == 2
    assert at[1000]["lrs"] == [0.1, 0.01]
    assert api.get("/v1/runs/lr/lr").json()["lrs"] == [0.1, 0.01]
    assert api.get("/v1/runs/lr/lr?step=-1").status_code == 422


def test_decision_log_pages_and_filters(api: TestClient) -> None:
    api.put("/v1/runs/pg", json=run_spec({"patience": 0}))
    for step in range(25):
        post(api, "pg", step, 1.0 + step)  # every one after the first is worse: reduce
    seen, after = [], 0
    while True:
        page = api.get(f"/v1/runs/pg/decisions?after={after}&limit=10").json()
        seen += [d["seq"] for d in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == list(range(1, 26))
    reduces = api.get("/v1/runs/pg/decisions?action=reduce&limit=1000").json()["items"]
    assert {d["action"] for d in reduces} == {"reduce"} and len(reduces) > 5
    assert api.get("/v1/runs/pg/decisions?limit=0").status_code == 422
    typo = api.get("/v1/runs/pg/decisions?action=reduced")
    assert typo.status_code == 422
    (err,) = typo.json()["detail"]  # a 422's detail is always a list of items
    assert err["loc"] == ["query", "action"] and "reduce" in err["msg"]


def test_runs_list_filters_by_label_and_pages(api: TestClient) -> None:
    for i in range(7):
        labels = {"team": "vision" if i % 2 else "nlp", "size": str(i)}
        assert api.put(f"/v1/runs/run-{i}", json=run_spec(labels=labels)).status_code == 201
    ids, after = [], None
    while True:
        q = "?label=team:vision&limit=2" + (f"&after={after}" if after else "")
        page = api.get("/v1/runs" + q).json()
        ids += [r["run_id"] for r in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert ids == ["run-1", "run-3", "run-5"]
    both = api.get("/v1/runs?label=team:vision&label=size:3").json()["items"]
    assert [r["run_id"] for r in both] == ["run-3"]
    assert api.get("/v1/runs?label=nocolon").status_code == 422


def test_policies_list_schema_and_torch_defaults(api: TestClient) -> None:
    items = api.get("/v1/policies").json()["items"]
    (plateau,) = [p for p in items if (p["name"], p["version"]) == ("plateau", 1)]
    sig = inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau.__init__).parameters
    for name in ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "eps"):
        assert plateau["defaults"][name] == sig[name].default, name
    assert plateau["defaults"]["min_lr"] == sig["min_lr"].default
    assert "hold" in plateau["actions"] and "reduce" in plateau["actions"]
    schema = json.dumps(plateau["params_schema"])
    assert "threshold_mode" in schema and "min_delta" in schema


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "version": lrpilot.__version__}
    assert api.get("/readyz").json() == {"status": "ready"}


def test_keras_flavor_keeps_float32_lrs(api: TestClient) -> None:
    api.put("/v1/runs/k", json=run_spec({"flavor": "keras", "patience": 1}, base_lrs=[0.1]))
    first = post(api, "k", 1, 1.0).json()
    assert first["lrs"] == [0.10000000149011612]  # keras' float32 variable holds 0.1 so
    reduced = post(api, "k", 2, 1.0).json()
    assert reduced["action"] == "reduce" and reduced["lrs"] == [0.009999999776482582]
    assert math.isclose(reduced["lrs"][0], 0.01, rel_tol=1e-7)
