"""Cooldown on demand (project issue 17): POST /v1/runs/{id}/cooldown starts a policy's decay
from a later step as a cooldown entry of the log (who asked, why), refused with a 409 when the
step is decided, the run has no stable phase left there, or its policy has no cooldown; every lr
read afterwards follows the decay, verify and export/import rebuild the entry, and a rewind
below it supersedes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import app_client
from tests.harness import GOLDEN_DIR
from tests.helpers import bearer, lrpilot_cli, make_token, one_line, rechained, strict_json

# no planned decay: the stable phase lasts until the run decides it
WSD = {"name": "wsd", "version": 1, "params": {"num_warmup_steps": 10}}


def wsd_spec(**params: Any) -> dict[str, Any]:
    policy = {**WSD, "params": {**WSD["params"], **params}}
    return {"policy": policy, "base_lrs": [0.1, 0.01], "metric": "val_loss"}


def post(
    api: TestClient, run_id: str, step: int, value: float | str = 1.0, **kw: Any
) -> dict[str, Any]:
    r = api.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value}, **kw)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = strict_json(r.text)
    return doc


def lr(api: TestClient, run_id: str, step: int) -> list[float]:
    lrs: list[float] = api.get(f"/v1/runs/{run_id}/lr", params={"step": step}).json()["lrs"]
    return lrs


def verified(api: TestClient, run_id: str) -> dict[str, Any]:
    report: dict[str, Any] = api.post(f"/v1/runs/{run_id}/verify").json()
    assert report["ok"], report
    return report


def test_a_cooldown_is_a_logged_entry_and_the_lrs_follow_the_decay(api: TestClient) -> None:
    assert api.put("/v1/runs/w", json=wsd_spec()).status_code == 201
    for step in (0, 20, 40):
        post(api, "w", step)
    assert lr(api, "w", 1000) == [0.1, 0.01]  # stable for ever, until decided
    r = api.post(
        "/v1/runs/w/cooldown",
        json={"at_step": 100, "steps": 100, "shape": "linear", "reason": "budget cut"},
    )
    assert r.status_code == 200, r.text
    out = strict_json(r.text)
    entry = out["decision"]
    assert out["at_step"] == 100 and out["lrs"] == [0.1, 0.01]
    assert entry["action"] == "start_cooldown" and entry["step"] == 40 and entry["value"] is None
    assert entry["cooldown"] == {
        "at_step": 100,
        "steps": 100,
        "shape": "linear",
        "why": "budget cut",
    }
    assert entry["lrs"] == entry["previous_lrs"] == [0.1, 0.01]
    assert "the decay starts at step 100 and lasts 100 steps (linear shape)" in entry["reason"]
    assert entry["reason"].endswith("; why: budget cut")
    assert entry["state"]["decay_start"] == 100
    # asked again (a retry after a lost answer): in force already, nothing new logged
    body = {"at_step": 100, "steps": 100, "shape": "linear", "reason": "budget cut"}
    again = api.post("/v1/runs/w/cooldown", json=body)
    assert again.status_code == 200 and again.json()["decision"] is None
    # the reads: the lrs before at_step are unchanged, the decay after it
    assert lr(api, "w", 99) == [0.1, 0.01]
    assert lr(api, "w", 150) == [0.05, 0.005]
    assert lr(api, "w", 250) == [0.0, 0.0]
    lrs = api.get("/v1/runs/w/lrs", params={"from": 40, "count": 200}).json()["lrs"]
    assert lrs[0] == [0.1, 0.01] and lrs[110] == [0.05, 0.005] and lrs[199] == [0.0, 0.0]
    # the decisions after it decide from the decay; the cooldown is no step's decision
    assert post(api, "w", 60)["lrs"] == [0.1, 0.01]
    assert post(api, "w", 40)["action"] == "hold"  # the retry of step 40: its decision
    assert post(api, "w", 150)["lrs"] == [0.05, 0.005]
    assert post(api, "w", 150)["action"] == "decay"
    page = api.get("/v1/runs/w/decisions", params={"action": "start_cooldown"}).json()["items"]
    assert [d["seq"] for d in page] == [4]
    run = api.get("/v1/runs/w").json()
    assert run["last_step"] == 150 and run["lrs"] == [0.05, 0.005]
    assert verified(api, "w")["count"] == 6
    plot = api.get("/v1/runs/w/plot").json()
    marks = [e for e in plot["events"] if e["action"] == "start_cooldown"]
    assert marks and marks[0]["cooldown"]["at_step"] == 100
    summary = api.get("/v1/runs/w/summary").json()
    assert summary["decisions"] == 5


def test_refusals_say_why_and_change_nothing(api: TestClient) -> None:
    api.put("/v1/runs/w", json=wsd_spec(num_decay_steps=50))
    api.put("/v1/runs/c", json={"policy": {"name": "cosine", "version": 1, "params": {
        "T_max": 100}}, "base_lrs": [0.1]})  # fmt: skip
    post(api, "w", 20)

    def refused(run_id: str, status: int, body: dict[str, Any], words: str) -> None:
        r = api.post(f"/v1/runs/{run_id}/cooldown", json=body)
        assert r.status_code == status, r.text
        assert words in r.text, r.text

    refused("c", 409, {"at_step": 50, "steps": 10}, "policy cosine@1 has no cooldown")
    refused("w", 409, {"at_step": 20, "steps": 10}, "step 20 is already decided")
    refused("w", 409, {"at_step": 5, "steps": 10}, "already decided")
    refused("nope", 404, {"at_step": 50, "steps": 10}, "not found")
    refused("w", 422, {"at_step": 50, "steps": 10, "shape": "zigzag"}, "zigzag")
    refused("w", 422, {"at_step": 50, "steps": 0}, "steps")
    refused("w", 422, {"at_step": 50}, "steps")
    refused("w", 422, {"at_step": -1, "steps": 5}, "at_step")
    refused("w", 422, {"at_step": 50, "steps": 5, "why": "x"}, "why")
    refused("w", 422, {"at_step": 50, "steps": 5, "reason": ""}, "reason")
    assert api.get("/v1/runs/w").json()["last_seq"] == 1
    # once started (a cooldown, here), no stable phase is left after the decay's start
    assert api.post("/v1/runs/w/cooldown", json={"at_step": 100, "steps": 50}).status_code == 200
    refused("w", 409, {"at_step": 120, "steps": 10}, "no stable phase left")
    # an exponential decay needs a floor above 0
    api.put("/v1/runs/e", json=wsd_spec())
    refused("e", 409, {"at_step": 50, "steps": 10, "shape": "exponential"}, "min_lr_ratio")
    assert verified(api, "w")["count"] == 2


def test_a_rewind_below_a_cooldown_supersedes_it(api: TestClient) -> None:
    api.put("/v1/runs/w", json=wsd_spec())
    for step in (20, 40):
        post(api, "w", step)
    api.post("/v1/runs/w/cooldown", json={"at_step": 100, "steps": 100, "shape": "linear"})
    post(api, "w", 60)
    # to the cooldown's own step: it stays (the state it left is restored)
    out = api.post("/v1/runs/w/rewind", json={"to_step": 40}).json()
    assert out["rewound"] and out["decision"]["rewind"]["restores_seq"] == 3
    assert lr(api, "w", 150) == [0.05, 0.005]
    # below it: superseded, the stable phase is back
    out = api.post("/v1/runs/w/rewind", json={"to_step": 30}).json()
    # (the decision of step 40, the cooldown and the rewind to step 40)
    assert out["decision"]["rewind"] == {"to_step": 30, "restores_seq": 1, "superseded": 3}
    assert lr(api, "w", 150) == [0.1, 0.01]
    gone = api.get("/v1/runs/w/decisions", params={"superseded": True}).json()["items"]
    assert [d["action"] for d in gone] == ["hold", "start_cooldown", "hold", "rewind"]
    assert verified(api, "w")["superseded"] == 4
    # and a cooldown may be asked again from there
    assert api.post("/v1/runs/w/cooldown", json={"at_step": 35, "steps": 10}).status_code == 200
    verified(api, "w")


def test_a_cooldown_before_any_observation_and_under_a_scaling_rule(api: TestClient) -> None:
    spec = wsd_spec(num_warmup_steps=0) | {
        "scaling": {"rule": "linear", "by": "world_size", "base": 2}
    }
    api.put("/v1/runs/s", json=spec)
    r = api.post("/v1/runs/s/cooldown", json={"at_step": 0, "steps": 10, "shape": "linear"})
    assert r.status_code == 200, r.text
    assert r.json()["decision"]["step"] == 0
    post(api, "s", 0)
    api.post("/v1/runs/s/resize", json={"step": 4, "world_size": 4})
    r = api.post("/v1/runs/s/cooldown", json={"at_step": 8, "steps": 4})
    assert r.status_code == 409 and "no stable phase left" in r.text
    assert lr(api, "s", 5) == [0.1, 0.01]  # 0.5 of the base, times 2 for world size 4
    verified(api, "s")


GOLDEN_BUNDLE = GOLDEN_DIR / "bundles" / "cooldown.ndjson"


def make_golden(database_url: str) -> str:
    """The frozen bundle's log: a WSD run without a planned decay, a cooldown asked for by an
    operator's token with a reason, decisions into the decay, a rewind to the cooldown's
    step. (How tests/golden/bundles/cooldown.ndjson was written, once.)"""
    writer = make_token(database_url, "lm", "writer", name="trainer")
    admin = make_token(database_url, "lm", "admin", name="ops")
    with app_client(database_url, migrate=False) as client:
        spec = wsd_spec(decay_type="1-sqrt", min_lr_ratio=0.1)
        client.put("/v1/runs/wsd-cooldown", json=spec, headers=bearer(writer))
        for step in (0, 5, 10, 100, 200):
            post(client, "wsd-cooldown", step, 2.0 - step / 1000, headers=bearer(writer))
        r = client.post(
            "/v1/runs/wsd-cooldown/cooldown",
            json={"at_step": 300, "steps": 200, "reason": "the budget ends at 500 steps"},
            headers=bearer(admin),
        )
        assert r.status_code == 200, r.text
        for step in (300, 350, 400):
            post(client, "wsd-cooldown", step, "NaN", headers=bearer(writer))
        client.post("/v1/runs/wsd-cooldown/rewind", json={"to_step": 300}, headers=bearer(admin))
        for step in (450, 500, 600):
            post(client, "wsd-cooldown", step, 1.5, headers=bearer(writer))
        return client.get("/v1/runs/wsd-cooldown/export", headers=bearer(admin)).text


def test_the_frozen_cooldown_bundle_verifies_and_round_trips_byte_for_byte(
    tmp_path: Path,
) -> None:
    result = lrpilot_cli("verify", str(GOLDEN_BUNDLE))
    assert result.exit_code == 0, result.output
    assert "OK 13 decisions (2 superseded by 1 rewinds)" in one_line(result.output)
    # a what-if replays the cooldown where it was asked: the same decisions without a change
    same = lrpilot_cli("replay", str(GOLDEN_BUNDLE))
    assert "the same decisions at every step" in one_line(same.output), same.output
    text = GOLDEN_BUNDLE.read_text()
    with app_client(f"sqlite:///{tmp_path / 'golden.db'}") as api:
        assert api.post("/v1/runs/import", content=text).status_code == 201
        assert api.get("/v1/runs/wsd-cooldown/export").text == text
        what_if = api.post("/v1/simulate", json={"run_id": "wsd-cooldown"}).json()
        assert what_if["count"] == 9 and what_if["differing"] == 0
        assert lr(api, "wsd-cooldown", 250) == [0.1, 0.01]
        assert lr(api, "wsd-cooldown", 400) == [0.03636038969321072, 0.0036360389693210716]
        assert api.get("/v1/runs/wsd-cooldown").json()["lrs"] == [0.010000000000000002, 0.001]


def edited_fails_verify(bundle: Path, member: str, edit: dict[str, Any], tmp_path: Path) -> None:
    """The bundle with its (one) entry carrying ``member`` edited by ``edit`` and rechained, as
    whoever can write the file could: verify names that entry."""
    lines = bundle.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if f'"{member}":{{' in line)
    doc = json.loads(lines[at])
    doc[member] |= edit
    lines[at] = json.dumps(doc)
    edited = tmp_path / "edited.ndjson"
    edited.write_text("".join(line + "\n" for line in rechained(lines)))
    result = lrpilot_cli("verify", str(edited))
    assert result.exit_code != 0
    assert f"seq {at}" in one_line(result.output), result.output


@pytest.mark.parametrize("edit", [{"at_step": 250}, {"why": "another reason"}])
def test_an_edited_cooldown_fails_verify(edit: dict[str, Any], tmp_path: Path) -> None:
    edited_fails_verify(GOLDEN_BUNDLE, "cooldown", edit, tmp_path)
