"""Retime (project issue 17): POST /v1/runs/{id}/retime gives a running schedule a new horizon
without a jump in lr, as a retime entry of the log; the reads, the decisions after it, verify,
export/import and rewinds follow it; a what-if (POST /v1/simulate's retime, lrpilot replay
--retime) shows what one would do before it is asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import app_client
from tests.domain.test_cooldown import edited_fails_verify, lr, post, verified
from tests.harness import GOLDEN_DIR
from tests.helpers import bearer, lrpilot_cli, make_token, one_line, strict_json

COSINE = {"policy": {"name": "cosine", "version": 1, "params": {"T_max": 1000, "eta_min": 0.001}},
          "base_lrs": [0.1, 0.01], "metric": "val_loss"}  # fmt: skip


def test_a_retime_is_a_logged_entry_and_the_lrs_follow_the_new_horizon(api: TestClient) -> None:
    api.put("/v1/runs/c", json=COSINE)
    for step in (0, 200, 400):
        post(api, "c", step)
    at_500, at_1000 = lr(api, "c", 500), lr(api, "c", 1000)
    r = api.post("/v1/runs/c/retime", json={"at_step": 500, "horizon": 2000,
                                            "mode": "keep_fraction"})  # fmt: skip
    assert r.status_code == 200, r.text
    entry = strict_json(r.text)["decision"]
    assert entry["action"] == "retime" and entry["step"] == 400 and entry["value"] is None
    assert entry["retime"] == {"at_step": 500, "horizon": 2000, "mode": "keep_fraction"}
    assert entry["lrs"] == entry["previous_lrs"] == post(api, "c", 400)["lrs"]
    assert "from step 500 the schedule ends (T_max) at step 2000" in entry["reason"]
    assert lr(api, "c", 500) == at_500  # no jump
    again = api.post("/v1/runs/c/retime", json={"at_step": 500, "horizon": 2000,
                                                "mode": "keep_fraction"})  # fmt: skip
    assert again.status_code == 200 and again.json()["decision"] is None  # a retry
    assert lr(api, "c", 2000) == at_1000 == [0.001, 0.001]  # the end, at the new horizon
    decided = post(api, "c", 1250)
    assert decided["lrs"] == lr(api, "c", 1250) and decided["action"] == "decay"
    assert "training step 1250 is schedule step 750" in decided["reason"]
    rows = api.get("/v1/runs/c/lrs", params={"from": 1998, "count": 3}).json()["lrs"]
    assert rows[2] == [0.001, 0.001]
    logged = api.get("/v1/runs/c/decisions", params={"action": "retime"}).json()["items"]
    assert [d["seq"] for d in logged] == [4]
    # keep_lr from 1500 to 1600: the lr at 1500 kept, the decay fitted down to the floor
    r = api.post("/v1/runs/c/retime", json={"at_step": 1500, "horizon": 1600, "mode": "keep_lr"})
    assert r.status_code == 200, r.text
    assert lr(api, "c", 1500) == pytest.approx(lr(api, "c", 1499), rel=1e-3)
    assert lr(api, "c", 1600) == pytest.approx([0.001, 0.001], rel=1e-12)
    post(api, "c", 1550)
    assert verified(api, "c")["count"] == 7
    marks = [e for e in api.get("/v1/runs/c/plot").json()["events"] if e["action"] == "retime"]
    assert [m["retime"]["horizon"] for m in marks] == [2000, 1600]
    assert api.get("/v1/runs/c/summary").json()["decisions"] == 5


def test_refusals_say_why_and_change_nothing(api: TestClient) -> None:
    api.put("/v1/runs/c", json=COSINE)
    api.put("/v1/runs/p", json={"policy": {"name": "plateau", "version": 1, "params": {}},
                                "base_lrs": [0.1]})  # fmt: skip
    post(api, "c", 300)

    def refused(run_id: str, status: int, body: dict[str, Any], words: str) -> None:
        r = api.post(f"/v1/runs/{run_id}/retime", json=body)
        assert r.status_code == status, r.text
        assert words in r.text, r.text

    ok = {"at_step": 500, "horizon": 2000, "mode": "keep_lr"}
    refused("p", 409, ok, "policy plateau@1 has no horizon")
    refused("c", 409, ok | {"at_step": 300}, "step 300 is already decided")
    refused("c", 409, ok | {"at_step": 1200, "horizon": 3000}, "the schedule has ended")
    refused("c", 422, ok | {"horizon": 500}, "not after at_step")
    refused("c", 422, ok | {"mode": "sideways"}, "mode")
    refused("c", 422, {"at_step": 500, "horizon": 2000}, "mode")
    refused("c", 422, ok | {"horizon": 0}, "horizon")
    refused("nope", 404, ok, "not found")
    assert api.get("/v1/runs/c").json()["last_seq"] == 1
    verified(api, "c")


def test_a_rewind_below_a_retime_supersedes_it(api: TestClient) -> None:
    api.put("/v1/runs/c", json=COSINE)
    post(api, "c", 100)
    post(api, "c", 200)
    before = lr(api, "c", 800)
    api.post("/v1/runs/c/retime", json={"at_step": 300, "horizon": 3000, "mode": "keep_lr"})
    assert lr(api, "c", 800) != before
    out = api.post("/v1/runs/c/rewind", json={"to_step": 150}).json()
    assert out["decision"]["rewind"]["superseded"] == 2
    assert lr(api, "c", 800) == before
    assert verified(api, "c")["superseded"] == 2


def test_what_a_retime_would_do_before_it_is_asked(api: TestClient, tmp_path: Path) -> None:
    api.put("/v1/runs/c", json=COSINE)
    steps = list(range(0, 1001, 100))
    for step in steps:
        post(api, "c", step)
    body = {"run_id": "c", "retime": {"at_step": 500, "horizon": 2000, "mode": "keep_fraction"}}
    out = api.post("/v1/simulate", json=body).json()
    # the decisions from step 500 on differ (the schedule is slower); those before do not
    assert out["differing"] == 5
    assert [i["step"] for i in out["items"] if i["lrs"] != i["recorded"]["lrs"]] == steps[6:]
    assert out["items"][5]["lrs"] == out["items"][5]["recorded"]["lrs"]
    late = {"at_step": 500, "horizon": 400, "mode": "keep_lr"}
    bad = api.post("/v1/simulate", json=body | {"retime": late})
    assert bad.status_code == 422 and "not after at_step" in bad.text
    bundle = tmp_path / "c.ndjson"
    bundle.write_text(api.get("/v1/runs/c/export").text)
    done = lrpilot_cli("replay", str(bundle), "--retime", "500:2000:keep_fraction")
    assert done.exit_code == 0, done.output
    text = one_line(done.output)
    assert "retime='500:2000:keep_fraction'" in text and "(first 5 of 5)" in text
    wrong = lrpilot_cli("replay", str(bundle), "--retime", "500:2000")
    assert wrong.exit_code == 1 and "--retime takes AT:HORIZON:MODE" in one_line(wrong.output)
    ended = lrpilot_cli("replay", str(bundle), "--retime", "500:400:keep_lr")
    assert ended.exit_code == 1 and "not after at_step" in one_line(ended.output)


GOLDEN_BUNDLE = GOLDEN_DIR / "bundles" / "retime.ndjson"


def make_golden(database_url: str) -> str:
    """The frozen bundle's log: a one_cycle run extended (keep_fraction) and then shortened
    (keep_lr) by an operator's token, a rewind below the step where both retimes were asked
    (the first stays), a NaN. (How tests/golden/bundles/retime.ndjson was written, once.)"""
    writer = make_token(database_url, "lm", "writer", name="trainer")
    admin = make_token(database_url, "lm", "admin", name="ops")
    spec = {"policy": {"name": "one_cycle", "version": 1,
                       "params": {"max_lr": [0.1, 0.01], "total_steps": 1000}},
            "base_lrs": [0.1, 0.01], "metric": "val_loss"}  # fmt: skip
    with app_client(database_url, migrate=False) as client:
        client.put("/v1/runs/retimed", json=spec, headers=bearer(writer))
        for step in (0, 200, 400):
            post(client, "retimed", step, 2.0 - step / 1000, headers=bearer(writer))
        for body in (
            {"at_step": 500, "horizon": 2000, "mode": "keep_fraction"},
            {"at_step": 1200, "horizon": 1500, "mode": "keep_lr"},
        ):
            r = client.post("/v1/runs/retimed/retime", json=body, headers=bearer(admin))
            assert r.status_code == 200, r.text
            post(client, "retimed", body["at_step"] + 100, 1.5, headers=bearer(writer))
        client.post("/v1/runs/retimed/rewind", json={"to_step": 550}, headers=bearer(admin))
        for step in (1000, 1500, 2000):
            value: float | str = "NaN" if step == 1500 else 1.0
            post(client, "retimed", step, value, headers=bearer(writer))  # type: ignore[arg-type]
        return client.get("/v1/runs/retimed/export", headers=bearer(admin)).text


def test_the_frozen_retime_bundle_verifies_and_round_trips_byte_for_byte(tmp_path: Path) -> None:
    result = lrpilot_cli("verify", str(GOLDEN_BUNDLE))
    assert result.exit_code == 0, result.output
    assert "OK 11 decisions (3 superseded by 1 rewinds)" in one_line(result.output)
    same = lrpilot_cli("replay", str(GOLDEN_BUNDLE))  # its retime replayed where it was asked
    assert "the same decisions at every step" in one_line(same.output), same.output
    text = GOLDEN_BUNDLE.read_text()
    with app_client(f"sqlite:///{tmp_path / 'golden.db'}") as api:
        assert api.post("/v1/runs/import", content=text).status_code == 201
        assert api.get("/v1/runs/retimed/export").text == text
        assert api.post("/v1/simulate", json={"run_id": "retimed"}).json()["differing"] == 0
        assert lr(api, "retimed", 2000) == [4e-07, 4e-08]  # the cycle's end, at the new horizon
        assert lr(api, "retimed", 1250) == [0.02830609982086991, 0.002830609982086991]


@pytest.mark.parametrize("edit", [{"horizon": 2500}, {"mode": "keep_lr"}])
def test_an_edited_retime_fails_verify(edit: dict[str, Any], tmp_path: Path) -> None:
    edited_fails_verify(GOLDEN_BUNDLE, "retime", edit, tmp_path)
