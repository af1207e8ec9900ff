"""sequence@1 and scaled@1: phases with step boundaries, and plateau control as a scale.

Checked against their parts run by hand (each phase is its own policy from the run's base lrs;
a scale is plateau control run from base lrs of 1.0), through the service (runs, GET lr and
lrs, verify, export and import) and for the 422s of impossible params.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lrpilot.canonical import canonical_json
from lrpilot.policies import Observation, PolicyError, get_policy
from lrpilot.replay import replay

PLATEAU_FAST = {"name": "plateau", "version": 1, "params": {"patience": 0, "factor": 0.5}}
PLATEAU_SLOW = {"name": "plateau", "version": 1, "params": {"patience": 1, "factor": 0.1}}
TWO_PLATEAUS = {
    "phases": [
        {"policy": PLATEAU_FAST, "until_step": 50},
        {"policy": PLATEAU_SLOW},
    ]
}
BASE = (0.1, 0.2)
STREAM = [(10, 1.0), (20, 1.0), (30, 0.9), (40, 0.9), (60, 0.8), (70, 0.8), (80, 0.8), (90, 0.7)]


def by_hand(
    ref: dict[str, Any], stream: list[tuple[int, float]], base: tuple[float, ...] = BASE
) -> list[tuple[str, Any]]:
    """The policy ``ref`` run alone from ``base``: (action, lrs) after each observation."""
    policy = get_policy(ref["name"], ref["version"])
    params = policy.resolve(ref["params"], base)
    state = policy.init(params, base)
    out = []
    for step, value in stream:
        outcome, state = policy.step(params, state, Observation(step, value))
        out.append((outcome.action, outcome.lrs))
    return out


def test_each_phase_is_its_own_policy_from_the_base_lrs() -> None:
    seq = get_policy("sequence", 1)
    params = seq.resolve(TWO_PLATEAUS, BASE)
    got = [(s.action, s.lrs) for s in replay(seq, params, seq.init(params, BASE), STREAM)]
    first = by_hand(PLATEAU_FAST, [o for o in STREAM if o[0] < 50])
    second = by_hand(PLATEAU_SLOW, [o for o in STREAM if o[0] >= 50])
    assert [lrs for _, lrs in got] == [lrs for _, lrs in first + second]
    assert got[3][1] != BASE and got[4][1] == BASE  # phase 2 starts over from the base lrs
    # the jump back up as phase 2 begins is logged as what it is, not as "hold"
    assert got[4][0] == "warmup" and second[0][0] == "hold"
    assert [a for a, _ in got[:4] + got[5:]] == [a for a, _ in first + second[1:]]


def test_reasons_name_the_phase_and_lrs_at_looks_ahead_into_a_phase_not_yet_reached() -> None:
    seq = get_policy("sequence", 1)
    params = seq.resolve(TWO_PLATEAUS, BASE)
    stepper = seq.stepper(params, seq.init(params, BASE))
    stepper.advance(10, 1.0)
    stepper.advance(20, 1.0)
    assert stepper.reason().startswith("phase 1 of 2 (plateau@1): ")
    reduced = stepper.lrs
    assert reduced == (0.05, 0.1)
    state = stepper.state()
    assert seq.lrs_at(params, state, 49) == reduced  # still phase 1: held
    assert seq.lrs_at(params, state, 50) == BASE  # phase 2 from its initial state
    stepper.advance(60, 0.5)
    assert stepper.reason().startswith(
        "phase 2 of 2 (plateau@1), from step 50 (lrs [0.05, 0.1] -> [0.1, 0.2] as it begins): "
    )
    assert stepper.action == "warmup"  # the new phase starts above where the last one left
    assert json.loads(canonical_json(stepper.state().model_dump())) == stepper.state_doc()


@pytest.mark.parametrize(
    "params,loc",
    [
        ({"phases": []}, ("params", "phases")),
        (
            {"phases": [{"policy": PLATEAU_FAST, "until_step": 10}]},
            ("params", "phases", 0, "until_step"),
        ),
        (
            {"phases": [{"policy": PLATEAU_FAST}, {"policy": PLATEAU_SLOW}]},
            ("params", "phases", 0, "until_step"),
        ),
        (
            {
                "phases": [
                    {"policy": PLATEAU_FAST, "until_step": 50},
                    {"policy": PLATEAU_FAST, "until_step": 40},
                    {"policy": PLATEAU_SLOW},
                ]
            },
            ("params", "phases", 1, "until_step"),
        ),
        (
            {"phases": [{"policy": {"name": "plateau", "version": 1, "params": {"factor": 2.0}}}]},
            ("params", "phases", 0, "policy", "params", "factor"),
        ),
        (
            {"phases": [{"policy": {"name": "nope", "version": 1}}]},
            ("params", "phases", 0, "policy", "name"),
        ),
        (
            {
                "phases": [
                    {"policy": PLATEAU_FAST, "until_step": 100},
                    {"policy": {"name": "range_test", "version": 1, "params": {}}},
                ]
            },
            ("params", "phases", 1, "policy", "name"),
        ),
    ],
)
def test_impossible_sequences_are_refused_naming_the_field(
    params: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    with pytest.raises(PolicyError) as caught:
        get_policy("sequence", 1).resolve(params, (0.1,))
    assert loc in [found for found, _ in caught.value.errors], caught.value.errors


def test_scaled_refuses_a_plateau_as_its_schedule() -> None:
    with pytest.raises(PolicyError) as caught:
        get_policy("scaled", 1).resolve({"schedule": PLATEAU_FAST, "plateau": PLATEAU_SLOW}, BASE)
    assert ("params", "schedule") in [loc for loc, _ in caught.value.errors]


def test_a_sequence_run_through_the_service_verifies_and_moves(api: TestClient) -> None:
    spec = {
        "policy": {"name": "sequence", "version": 1, "params": TWO_PLATEAUS},
        "base_lrs": list(BASE),
    }
    assert api.put("/v1/runs/seq", json=spec).status_code == 201
    for step, value in STREAM:
        r = api.post("/v1/runs/seq/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text
    expected = by_hand(PLATEAU_SLOW, [o for o in STREAM if o[0] >= 50])[-1][1]
    assert api.get("/v1/runs/seq/lr", params={"step": 95}).json()["lrs"] == list(expected)
    lrs = api.get("/v1/runs/seq/lrs", params={"from": 0, "count": 100}).json()
    assert lrs["lrs"][0] == list(BASE) and lrs["lrs"][99] == list(expected)
    assert lrs["certain_through"] == 90 and lrs["open_loop"] is False
    verified = api.post("/v1/runs/seq/verify").json()
    assert verified["ok"] is True and verified["count"] == len(STREAM)
    bundle = api.get("/v1/runs/seq/export").text
    api.post("/v1/runs/seq/rewind", json={"to_step": 40})  # back into phase 1
    assert api.get("/v1/runs/seq/lr", params={"step": 40}).json()["lrs"] != list(BASE)
    assert api.post("/v1/runs/seq/verify").json()["ok"] is True
    # the bundle from before the rewind imports elsewhere under another id: refused (spec the
    # same, log different) is a 409 here, so check it offline through the same check instead
    from lrpilot.audit.verify import check_bundle

    checked = check_bundle(lambda: [line.encode() for line in bundle.splitlines()])
    assert checked.ok, checked.report.mismatch


def test_resolving_resolved_params_again_changes_nothing() -> None:
    """A stored run's params are resolved again whenever it is read: resolve is idempotent."""
    seq = get_policy("sequence", 1)
    once = seq.resolve(TWO_PLATEAUS, BASE)
    assert seq.resolve(once.model_dump(), BASE) == once
    # the params carry the base lrs they were resolved for; resolved for others (what-if),
    # they take those
    assert seq.resolve(once.model_dump(), (0.3, 0.4)).base_lrs == (0.3, 0.4)


COSINE = {"name": "cosine", "version": 1, "params": {"T_max": 1000, "eta_min": 0.0}}
HALVE = {"name": "plateau", "version": 1, "params": {"patience": 1, "factor": 0.5}}


def test_scaled_is_the_schedule_times_plateau_control_run_from_one() -> None:
    scaled = get_policy("scaled", 1)
    params = scaled.resolve({"schedule": COSINE, "plateau": HALVE}, BASE)
    state = scaled.init(params, BASE)
    cosine = get_policy("cosine", 1)
    cp = cosine.resolve(COSINE["params"], BASE)
    c0 = cosine.init(cp, BASE)
    scales = by_hand_from_one(HALVE, STREAM)
    for (step, value), scale in zip(STREAM, scales, strict=True):
        outcome, state = scaled.step(params, state, Observation(step, value))
        want = tuple(a * b for a, b in zip(cosine.lrs_at(cp, c0, step), scale, strict=True))
        assert outcome.lrs == want
        # between evaluations the schedule moves on and the scale holds
        later = tuple(a * b for a, b in zip(cosine.lrs_at(cp, c0, step + 5), scale, strict=True))
        assert scaled.lrs_at(params, state, step + 5) == later
    assert scales[-1] != (1.0, 1.0), "the stream has plateaus: the scale dropped"


def by_hand_from_one(ref: dict[str, Any], stream: list[tuple[int, float]]) -> list[Any]:
    policy = get_policy(ref["name"], ref["version"])
    ones = (1.0, 1.0)
    params = policy.resolve(ref["params"], ones)
    state = policy.init(params, ones)
    out = []
    for step, value in stream:
        _, state = policy.step(params, state, Observation(step, value))
        out.append(state.lrs)
    return out


def test_simulate_runs_a_composite(api: TestClient) -> None:
    body = {
        "policy": {
            "name": "scaled",
            "version": 1,
            "params": {"schedule": COSINE, "plateau": HALVE},
        },
        "base_lrs": list(BASE),
        "values": [v for _, v in STREAM],
        "steps": [s for s, _ in STREAM],
    }
    r = api.post("/v1/simulate", json=body)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["step"] for i in items] == [s for s, _ in STREAM]
    assert any(i["action"] == "reduce" for i in items)
    assert all(i["reason"].startswith("scale: ") for i in items)
