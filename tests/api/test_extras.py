"""More than the lr over HTTP: a one_cycle@2 run's momentum and weight decay in the observation
response, GET /decisions, GET /lr and /lrs, simulate, and through export, import, verify and a
rewind (SQLite and PostgreSQL); a run of a policy that schedules none has none of those members.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import (
    export,
    feed,
    import_,
    log,
    log_raw,
    offline_verify,
    rewind,
    verify,
)
from tests.conftest import app_client
from tests.helpers import bundle_text, canonical, lrpilot_cli, one_line, rechained, started

PARAMS = {
    "max_lr": [0.1, 0.01],
    "total_steps": 200,
    "three_phase": True,
    "start_wd": [0.0, 0.01],
    "end_wd": 0.1,
    "wd_incr_style": "cosine",
    "wd_incr_steps": 150,
}
BASE = [0.1, 0.01]
STREAM = [(10, 1.0), (40, 0.9), (90, float("nan")), (160, 0.5), (250, 0.4)]


def expected(step: int) -> dict[str, list[float]]:
    policy, resolved, state = started("one_cycle", 2, PARAMS, BASE)
    return {k: list(v) for k, v in policy.extras_at(resolved, state, step).items()}


def create(api: TestClient, run_id: str, name: str = "one_cycle", version: int = 2) -> None:
    params = PARAMS if version == 2 else {"max_lr": 0.1, "total_steps": 200}
    spec = {"policy": {"name": name, "version": version, "params": params}, "base_lrs": BASE}
    r = api.put(f"/v1/runs/{run_id}", json=spec)
    assert r.status_code == 201, r.text


def extras(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("momentum", "weight_decay") if k in doc}


def test_every_answer_carries_the_extras_and_the_log_keeps_them(
    api: TestClient, tmp_path: Path
) -> None:
    create(api, "oc")
    answers = feed(api, "oc", STREAM)
    for (step, _), answer in zip(STREAM, answers, strict=True):
        assert extras(answer) == expected(step)
        assert extras(answer["state"]) == expected(step)  # in the state: the chain pins them
        assert "momentum" in answer["reason"] and "weight_decay" in answer["reason"]
    assert [extras(d) for d in log(api, "oc")] == [extras(a) for a in answers]

    r = api.get("/v1/runs/oc/lr", params={"step": 20})
    assert r.status_code == 200 and extras(r.json()) == expected(20)
    assert extras(api.get("/v1/runs/oc/lr").json()) == expected(250)  # the latest
    r = api.get("/v1/runs/oc/lrs", params={"from": 95, "count": 10})
    body = r.json()
    assert body["momentum"] == [expected(k)["momentum"] for k in range(95, 105)]
    assert body["weight_decay"] == [expected(k)["weight_decay"] for k in range(95, 105)]

    # verify rebuilds every entry, extras included; a bundle carries them to another run
    assert verify(api, "oc")["ok"] is True
    rewound = rewind(api, "oc", 40)
    assert rewound["lrs"] == answers[1]["lrs"]
    assert extras(api.get("/v1/runs/oc/lr").json()) == expected(40)
    assert verify(api, "oc")["ok"] is True
    bundle = export(api, "oc")
    assert all('"momentum":' in line for line in bundle.splitlines()[1:-1])
    with app_client(f"sqlite:///{tmp_path / 'other.db'}") as other:
        r = import_(other, bundle)
        assert r.status_code == 201, r.text
        assert verify(other, "oc")["ok"] is True
        assert log_raw(other, "oc") == log_raw(api, "oc")
        assert extras(other.get("/v1/runs/oc/lr").json()) == expected(40)
        # the imported run continues alike
        more = feed(other, "oc", [(120, 0.3)])
        assert extras(more[0]) == expected(120)
        assert verify(other, "oc")["ok"] is True

    # offline: the bundle verifies; a momentum edited (the chain recomputed, as whoever can
    # write the file can) does not, named at its entry, in the state or at the top
    lines = bundle.splitlines()
    assert offline_verify(tmp_path, bundle)[0] == 0
    for where in ("top", "state"):
        doc = json.loads(lines[2])
        held = doc if where == "top" else doc["state"]
        held["momentum"] = [held["momentum"][0] * 0.5, held["momentum"][1]]
        edited = rechained([*lines[:2], canonical(doc), *lines[3:]])
        code, said = offline_verify(tmp_path, bundle_text(edited))
        assert code != 0 and "seq 2" in said and "momentum" in said, said


def test_simulate_answers_the_extras(api: TestClient) -> None:
    r = api.post(
        "/v1/simulate",
        json={
            "policy": {"name": "one_cycle", "version": 2, "params": PARAMS},
            "base_lrs": BASE,
            "values": [1.0, 2.0, 3.0],
            "steps": [10, 50, 300],
        },
    )
    assert r.status_code == 200, r.text
    assert [extras(i) for i in r.json()["items"]] == [expected(k) for k in (10, 50, 300)]


def test_a_what_if_of_other_momentum_levels_differs_where_only_the_momentum_does(
    api: TestClient, tmp_path: Path
) -> None:
    create(api, "wi")
    feed(api, "wi", STREAM)
    same = api.post("/v1/simulate", json={"run_id": "wi"}).json()
    assert same["differing"] == 0
    assert [extras(i["recorded"]) for i in same["items"]] == [expected(s) for s, _ in STREAM]
    body = {
        "run_id": "wi",
        "policy": {"name": "one_cycle", "version": 2, "params": {"base_momentum": 0.5}},
    }
    other = api.post("/v1/simulate", json=body).json()
    # the lrs are the same; the momentum differs wherever the cycle is off its max
    assert [i["lrs"] for i in other["items"]] == [i["lrs"] for i in same["items"]]
    assert (
        other["differing"]
        == sum(i["momentum"] != i["recorded"]["momentum"] for i in other["items"])
        > 0
    )
    # offline, from the export: the same count, and the table shows the momentum
    bundle = tmp_path / "wi.ndjson"
    bundle.write_text(export(api, "wi"))
    result = lrpilot_cli("simulate", str(bundle), "--set", "base_momentum=0.5")
    assert result.exit_code == 0, result.output
    text = one_line(result.output)
    assert f"of {other['differing']})" in text and "momentum" in text
    assert "the same decisions at every step" in one_line(
        lrpilot_cli("simulate", str(bundle)).output
    )


@pytest.mark.parametrize("version", [1, 2])
def test_a_run_that_schedules_no_extras_has_no_such_members(api: TestClient, version: int) -> None:
    if version == 1:
        create(api, "plain", version=1)
    else:  # @2 with the momentum cycling off and no weight decay: nothing scheduled
        spec = {
            "policy": {
                "name": "cyclic",
                "version": 2,
                "params": {"base_lr": 0.01, "max_lr": 0.1, "cycle_momentum": False},
            },
            "base_lrs": BASE,
        }
        assert api.put("/v1/runs/plain", json=spec).status_code == 201
    answers = feed(api, "plain", STREAM[:2])
    assert [extras(a) for a in answers] == [{}, {}]
    assert [extras(d) for d in log(api, "plain")] == [{}, {}]
    assert extras(api.get("/v1/runs/plain/lr", params={"step": 3}).json()) == {}
    assert extras(api.get("/v1/runs/plain/lrs", params={"from": 0, "count": 3}).json()) == {}
    raws = log_raw(api, "plain")
    if version == 1:  # @1's entries keep the shape they always had
        assert all("momentum" not in raw and "weight_decay" not in raw for raw in raws)
    else:  # @2's state says what is not scheduled: null
        assert all(json.loads(raw)["state"]["momentum"] is None for raw in raws)


def test_a_half_given_ramp_is_a_422_naming_it(api: TestClient) -> None:
    spec = {
        "policy": {"name": "one_cycle", "version": 2, "params": {**PARAMS, "end_wd": None}},
        "base_lrs": BASE,
    }
    r = api.put("/v1/runs/half", json=spec)
    assert r.status_code == 422, r.text
    assert "start_wd and end_wd schedule the weight decay together" in r.text
    assert api.get("/v1/runs/half").status_code == 404


def test_a_guard_or_a_retime_around_extras_is_refused_not_dropped(api: TestClient) -> None:
    """A guard cuts the lrs and a retime remaps them: neither knows the momentum or the weight
    decay, so a run that schedules them is refused a guard (422, at run creation) and a retime
    (409), rather than losing its extras silently."""
    guard = {"on": ["nan"], "lr_factor": 0.5, "max_rollbacks": 2}
    spec = {"policy": {"name": "one_cycle", "version": 2, "params": PARAMS}, "base_lrs": BASE}
    r = api.put("/v1/runs/oc-guarded", json={**spec, "guard": guard})
    assert r.status_code == 422, r.text
    assert "schedules the momentum and the weight_decay" in r.text and "guard" in r.text

    create(api, "oc-retimed")
    feed(api, "oc-retimed", STREAM[:2])
    body = {"at_step": 50, "horizon": 400, "mode": "keep_fraction"}
    r = api.post("/v1/runs/oc-retimed/retime", json=body)
    assert r.status_code == 409, r.text
    assert "a retime moves the lr only" in r.text
    assert extras(api.get("/v1/runs/oc-retimed/lr", params={"step": 60}).json()) == expected(60)
