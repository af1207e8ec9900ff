"""POST /v1/simulate (project issue 6): what-if replays of a run's observations."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import PARAMS, create, essence, feed, get_run, live, rewind
from tests.helpers import plateau_stream


def simulate(api: TestClient, body: dict[str, Any]) -> dict:
    r = api.post("/v1/simulate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


SIM_KEYS = ("step", "lrs", "previous_lrs", "action", "reason")


@pytest.mark.parametrize("steps", ["default", "given"])
def test_simulate_equals_a_real_run(api: TestClient, steps: str) -> None:
    values: list[Any] = [v for _, v in plateau_stream(50)]
    values[30] = "NaN"
    step_list = list(range(1, 51)) if steps == "default" else [7 * i + 3 for i in range(50)]
    create(api, "real", base_lrs=[0.1, 0.02])
    decided = feed(api, "real", list(zip(step_list, values, strict=True)))
    body: dict[str, Any] = {
        "policy": {"name": "plateau", "version": 1, "params": PARAMS},
        "base_lrs": [0.1, 0.02],
        "metric": "val_loss",
        "values": values,
    }
    if steps == "given":
        body["steps"] = step_list
    got = simulate(api, body)
    assert got["count"] == 50 and got["differing"] is None
    assert essence(got["items"], SIM_KEYS) == essence(decided, SIM_KEYS)
    assert got["items"][30]["value"] == "NaN"
    assert api.get("/v1/runs").json()["items"] == [get_run(api, "real")]  # stored nowhere


def test_simulate_a_run_with_another_patience(api: TestClient) -> None:
    stream = plateau_stream(60)
    create(api, "recorded")
    recorded = feed(api, "recorded", stream)
    other = {**get_run(api, "recorded")["policy"]["params"], "patience": 5}
    create(api, "patient", other)
    patient = feed(api, "patient", stream)

    got = simulate(
        api, {"run_id": "recorded", "policy": {"name": "plateau", "version": 1, "params": other}}
    )
    assert got["params"]["patience"] == 5
    assert got["count"] == 60
    assert essence(got["items"], SIM_KEYS) == essence(patient, SIM_KEYS)
    for item, rec in zip(got["items"], recorded, strict=True):
        assert item["recorded"] == {"action": rec["action"], "lrs": rec["lrs"]}
    differing = sum(
        a["action"] != b["action"] or a["lrs"] != b["lrs"]
        for a, b in zip(recorded, patient, strict=True)
    )
    assert differing > 0
    assert got["differing"] == differing

    same = simulate(api, {"run_id": "recorded"})  # its own policy: nothing differs
    assert same["differing"] == 0
    assert essence(same["items"], SIM_KEYS) == essence(recorded, SIM_KEYS)

    # a rewound run: its live branch is the stream
    rewind(api, "recorded", 300)
    feed(api, "recorded", plateau_stream(5, seed=2, start_step=310))
    branch = live(api, "recorded")
    got = simulate(api, {"run_id": "recorded"})
    assert got["count"] == len(branch) == 35
    assert [i["step"] for i in got["items"]] == [d["step"] for d in branch]
    assert got["differing"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"run_id": "recorded", "values": [0.5, 0.4]},  # both
        {"policy": {"name": "plateau", "version": 1, "params": {}}, "base_lrs": [0.1]},  # neither
        {},
        {"values": [0.5]},  # values without a policy
        {
            "policy": {"name": "plateau", "version": 1, "params": {}},
            "base_lrs": [0.1],
            "values": [0.5, 0.4],
            "steps": [3],
        },
        {
            "policy": {"name": "plateau", "version": 1, "params": {}},
            "base_lrs": [0.1],
            "values": [0.5, 0.4],
            "steps": [3, 3],
        },
        {
            "policy": {"name": "plateau", "version": 1, "params": {"patience": -1}},
            "base_lrs": [0.1],
            "values": [0.5],
        },
    ],
)
def test_simulate_refuses(api: TestClient, body: dict) -> None:
    create(api, "recorded")
    r = api.post("/v1/simulate", json=body)
    assert r.status_code == 422, r.text


def test_simulate_an_unknown_run_is_404(api: TestClient) -> None:
    r = api.post("/v1/simulate", json={"run_id": "nosuch"})
    assert r.status_code == 404, r.text
