"""Elastic jobs (project issue 8): a run's scaling rule rescales its lrs when the job reports a
new world_size or global batch size, as a scale entry in the chain with its reason; every lr
the run serves afterwards (decisions, GET lr, GET lrs) is the policy's times the rule's factor,
and verify, export/import, rewind and what-if replay all account for it."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lrpilot_client import Client
from tests.conftest import app_client
from tests.domain.test_aggregate import aggregated, post_all
from tests.harness import GOLDEN_DIR, LiveServer
from tests.helpers import bundle_text, lrpilot_cli, one_line, rechained, run_spec, strict_json

WORLD = {"rule": "linear", "by": "world_size", "base": 8}


def elastic(scaling: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    spec = run_spec(**kw)
    spec["scaling"] = scaling or WORLD
    return spec


def post(api: TestClient, run_id: str, step: int, value: float, **kw: Any) -> dict[str, Any]:
    r = api.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value, **kw})
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = strict_json(r.text)
    return doc


def resize(api: TestClient, run_id: str, **body: Any) -> httpx.Response:
    return api.post(f"/v1/runs/{run_id}/resize", json=body)


def verified(api: TestClient, run_id: str) -> dict[str, Any]:
    report: dict[str, Any] = api.post(f"/v1/runs/{run_id}/verify").json()
    assert report["ok"], report
    return report


# -- leader mode: POST resize, and the world_size of the observations ------------------------


def test_a_resize_is_a_logged_entry_and_every_lr_after_it_is_scaled(api: TestClient) -> None:
    assert api.put("/v1/runs/e", json=elastic(params={"patience": 1}, base_lrs=[0.1, 0.01]))
    assert post(api, "e", 100, 1.0)["lrs"] == [0.1, 0.01]

    r = resize(api, "e", step=150, world_size=32, client={"host": "node-1"})
    assert r.status_code == 200, r.text
    out = strict_json(r.text)
    entry = out["decision"]
    assert out["resized"] is True and out["lrs"] == [0.4, 0.04]
    assert out["scale"] == {"size": 32, "factor": 4.0, "step": 150}
    assert entry["action"] == "scale" and entry["step"] == 150 and entry["value"] is None
    assert entry["scale"] == 4.0
    assert entry["resize"] == {"by": "world_size", "from": 8, "to": 32}
    assert entry["previous_lrs"] == [0.1, 0.01] and entry["lrs"] == [0.4, 0.04]
    assert entry["client"] == {"host": "node-1"}
    assert entry["reason"] == (
        "world_size 8 -> 32: linear scaling rule, base_lrs are for world_size 8: "
        "lrs [0.1, 0.01] -> [0.4, 0.04] (4.0 x the policy's)"
    )

    # the policy decides on its own lrs; what it serves is scaled, and the reason says both
    held = post(api, "e", 200, 0.9)
    assert held["action"] == "hold" and held["lrs"] == [0.4, 0.04] and held["scale"] == 4.0
    assert held["reason"].endswith("; x 4.0 for world_size 32: lrs [0.4, 0.04] served")
    post(api, "e", 300, 0.95)
    reduced = post(api, "e", 400, 0.96)
    assert reduced["action"] == "reduce"
    assert reduced["lrs"] == [0.1 * 0.1 * 4.0, 0.01 * 0.1 * 4.0]
    assert reduced["state"]["lrs"] == [0.1 * 0.1, 0.01 * 0.1]  # the policy's, unscaled

    lr = {s: api.get(f"/v1/runs/e/lr?step={s}").json()["lrs"] for s in (120, 149, 150, 250)}
    assert lr == {120: [0.1, 0.01], 149: [0.1, 0.01], 150: [0.4, 0.04], 250: [0.4, 0.04]}
    lrs = api.get("/v1/runs/e/lrs?from=148&count=4").json()["lrs"]
    assert lrs == [[0.1, 0.01], [0.1, 0.01], [0.4, 0.04], [0.4, 0.04]]

    run = api.get("/v1/runs/e").json()
    assert run["scaling"] == WORLD and run["scale"] == {"size": 32, "factor": 4.0, "step": 150}
    assert run["lrs"] == reduced["lrs"] and run["last_step"] == 400
    assert run["counts"] == {"decisions": 5, "reductions": 1}
    verified(api, "e")


def test_the_world_size_of_an_observation_resizes_before_the_decision(api: TestClient) -> None:
    api.put("/v1/runs/w", json=elastic(params={"patience": 5}))
    first = post(api, "w", 10, 1.0, world_size=8)  # the base size: nothing to rescale
    assert "scale" not in first and first["seq"] == 1
    second = post(api, "w", 20, 0.9, world_size=4)
    assert second["seq"] == 3 and second["lrs"] == [0.05] and second["scale"] == 0.5
    log = api.get("/v1/runs/w/decisions").json()["items"]
    assert [(d["seq"], d["step"], d["action"]) for d in log] == [
        (1, 10, "hold"),
        (2, 20, "scale"),
        (3, 20, "hold"),
    ]
    # a retry of the step answers its decision, never the scale entry that shares its step
    again = api.post("/v1/runs/w/observations", json={"step": 20, "value": 0.9, "world_size": 4})
    assert again.status_code == 200 and strict_json(again.text) == second
    # back to the base size: the factor is 1 again, and the decisions lose the field
    third = post(api, "w", 30, 0.8, world_size=8)
    assert third["lrs"] == [0.1] and "scale" not in third
    assert api.get("/v1/runs/w").json()["scale"] == {"size": 8, "factor": 1.0, "step": 30}
    verified(api, "w")


def test_a_resize_to_the_size_in_force_changes_nothing(api: TestClient) -> None:
    api.put("/v1/runs/n", json=elastic())
    post(api, "n", 10, 1.0)
    same = strict_json(resize(api, "n", step=20, world_size=8).text)
    assert same["resized"] is False and same["decision"] is None and same["lrs"] == [0.1]
    first = strict_json(resize(api, "n", step=20, world_size=16).text)
    retry = strict_json(resize(api, "n", step=20, world_size=16).text)  # a retried request
    assert first["resized"] is True and retry["resized"] is False
    assert retry["lrs"] == first["lrs"] == [0.2]
    assert api.get("/v1/runs/n").json()["last_seq"] == 2


def test_a_resize_below_the_log_or_to_a_run_without_a_rule_is_refused(api: TestClient) -> None:
    api.put("/v1/runs/r", json=elastic())
    api.put("/v1/runs/plain", json=run_spec())
    post(api, "r", 100, 1.0)
    before = api.get("/v1/runs/r").json()

    below = resize(api, "r", step=99, world_size=16)
    assert below.status_code == 409
    assert "step 99 is below the last decided step 100" in below.json()["detail"]
    at_last = resize(api, "r", step=100, world_size=16)  # resumed from the last evaluation
    assert at_last.status_code == 200, at_last.text
    again = resize(api, "r", step=100, world_size=4)  # the same step again: allowed
    assert again.status_code == 200
    later = api.post("/v1/runs/r/observations", json={"step": 100, "value": 1.0})
    assert later.status_code == 200  # the step's own decision, as a retry
    resize(api, "r", step=300, world_size=2)
    stale = api.post("/v1/runs/r/observations", json={"step": 250, "value": 1.0})
    assert stale.status_code == 409
    assert "step 250 is below step 300" in stale.json()["detail"]

    plain = resize(api, "plain", step=10, world_size=16)
    assert plain.status_code == 409 and "has no scaling rule" in plain.json()["detail"]
    wrong = resize(api, "r", step=400, batch_size=4096)
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0]["loc"] == ["body", "batch_size"]
    for body in ({"step": 400}, {"step": 400, "world_size": 2, "batch_size": 64}):
        r = resize(api, "r", **body)
        assert r.status_code == 422 and "exactly one of" in r.text
    for body in ({"step": 400, "world_size": 0}, {"step": -1, "world_size": 2}):
        assert resize(api, "r", **body).status_code == 422
    assert resize(api, "missing", step=1, world_size=2).status_code == 404

    after = api.get("/v1/runs/r").json()
    assert after["last_seq"] == before["last_seq"] + 3  # the three resizes that were taken
    verified(api, "r")


@pytest.mark.parametrize(
    "scaling",
    [
        {"rule": "cubic", "by": "world_size", "base": 8},
        {"rule": "linear", "by": "gpus", "base": 8},
        {"rule": "linear", "by": "world_size", "base": 0},
        {"rule": "linear", "by": "world_size", "base": 8.0},
        {"rule": "linear", "by": "world_size"},
        {"rule": "linear", "by": "world_size", "base": 8, "extra": 1},
    ],
)
def test_a_scaling_spec_is_checked_at_creation(api: TestClient, scaling: dict[str, Any]) -> None:
    r = api.put("/v1/runs/bad", json=elastic(scaling))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", "scaling"]
    assert api.get("/v1/runs/bad").status_code == 404


def test_a_run_spec_with_another_scaling_rule_is_another_run(api: TestClient) -> None:
    assert api.put("/v1/runs/s", json=elastic()).status_code == 201
    assert api.put("/v1/runs/s", json=elastic()).status_code == 200
    other = api.put("/v1/runs/s", json=elastic({**WORLD, "base": 16}))
    assert other.status_code == 409 and "scaling" in other.json()["detail"]
    assert api.put("/v1/runs/s", json=run_spec()).status_code == 409


def test_sqrt_by_global_batch_size_scales_a_schedule_at_every_step(api: TestClient) -> None:
    spec = {
        "policy": {"name": "cosine", "version": 1, "params": {"T_max": 100, "eta_min": 0.001}},
        "base_lrs": [0.1],
        "scaling": {"rule": "sqrt", "by": "batch_size", "base": 1024},
    }
    assert api.put("/v1/runs/c", json=spec).status_code == 201
    plain = api.get("/v1/runs/c/lrs?from=0&count=100").json()["lrs"]
    out = strict_json(resize(api, "c", step=40, batch_size=4096).text)
    assert out["scale"]["factor"] == 2.0 and out["decision"]["resize"]["by"] == "batch_size"
    assert "square-root scaling rule" in out["decision"]["reason"]
    served = api.get("/v1/runs/c/lrs?from=0&count=100").json()["lrs"]
    assert served[:40] == plain[:40]
    assert served[40:] == [[lr * 2.0 for lr in lrs] for lrs in plain[40:]]
    # 3x the batch: sqrt(3), correctly rounded, times each lr
    resize(api, "c", step=60, batch_size=3072)
    at = api.get("/v1/runs/c/lr?step=70").json()["lrs"]
    assert at == [plain[70][0] * math.sqrt(3.0)]
    verified(api, "c")


# -- aggregated mode: the ranks' world_size ----------------------------------------------------


def test_ranks_reporting_a_new_world_size_rescale_and_all_get_one_decision(
    backend_server: LiveServer,
) -> None:
    spec = aggregated(params={"patience": 5})
    spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 4}
    assert httpx.put(f"{backend_server.url}/v1/runs/a", json=spec, timeout=30).status_code == 201

    def step(step: int, world: int, base: float) -> list[dict[str, Any]]:
        reports = [
            {"step": step, "value": base + r / 100, "rank": r, "world_size": world}
            for r in range(world)
        ]
        answers = asyncio.run(post_all(backend_server.url, "a", reports))
        assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
        return [strict_json(a.text) for a in answers]

    four = step(10, 4, 1.0)
    assert all(d == four[0] for d in four) and four[0]["lrs"] == [0.1] and "scale" not in four[0]
    # the job comes back with 2 ranks (elastic restart): halved, once, before the decision
    two = step(20, 2, 0.9)
    assert all(d == two[0] for d in two)
    assert two[0]["lrs"] == [0.05] and two[0]["scale"] == 0.5 and len(two[0]["ranks"]) == 2
    eight = step(30, 8, 0.8)
    assert all(d == eight[0] for d in eight) and eight[0]["lrs"] == [0.2]

    log = httpx.get(f"{backend_server.url}/v1/runs/a/decisions", timeout=30).json()["items"]
    assert [(d["step"], d["action"]) for d in log] == [
        (10, "hold"),
        (20, "scale"),
        (20, "hold"),
        (30, "scale"),
        (30, "hold"),
    ]
    assert [d["resize"] for d in log if d["action"] == "scale"] == [
        {"by": "world_size", "from": 4, "to": 2},
        {"by": "world_size", "from": 2, "to": 8},
    ]
    report = httpx.post(f"{backend_server.url}/v1/runs/a/verify", timeout=30).json()
    assert report["ok"] and report["count"] == 5, report


# -- the chain: rewind, export, import, verify, what-if --------------------------------------


def resized_run(api: TestClient) -> None:
    """A run with resizes, reductions and a rewind that crosses a resize."""
    api.put("/v1/runs/x", json=elastic(params={"patience": 1}, base_lrs=[0.1, 0.02]))
    post(api, "x", 100, 1.0)
    post(api, "x", 200, 0.9, world_size=16)
    post(api, "x", 300, 0.95)
    resize(api, "x", step=350, world_size=4)
    post(api, "x", 400, 0.96)
    post(api, "x", 500, 0.97)


def test_a_rewind_restores_the_scale_in_force_at_its_step(api: TestClient) -> None:
    resized_run(api)
    assert api.get("/v1/runs/x").json()["scale"]["size"] == 4

    back = api.post("/v1/runs/x/rewind", json={"to_step": 300}).json()
    assert back["lrs"] == [0.2, 0.04] and back["decision"]["scale"] == 2.0
    run = api.get("/v1/runs/x").json()
    assert run["scale"] == {"size": 16, "factor": 2.0, "step": 200} and run["last_step"] == 300
    assert api.get("/v1/runs/x/lr?step=360").json()["lrs"] == [0.2, 0.04]
    verified(api, "x")
    # the superseded resize is not in force: the same step may resize otherwise
    assert post(api, "x", 400, 0.5, world_size=32)["lrs"] == [0.4, 0.08]
    verified(api, "x")

    start = api.post("/v1/runs/x/rewind", json={"to_step": 50}).json()
    assert start["lrs"] == [0.1, 0.02] and "scale" not in start["decision"]
    assert api.get("/v1/runs/x").json()["scale"] == {"size": 8, "factor": 1.0, "step": None}
    verified(api, "x")


def test_export_verifies_offline_and_imports_to_the_same_run(
    api: TestClient, tmp_path: Path
) -> None:
    resized_run(api)
    api.post("/v1/runs/x/rewind", json={"to_step": 300})
    text = api.get("/v1/runs/x/export").text
    path = tmp_path / "x.ndjson"
    path.write_text(text)
    result = lrpilot_cli("verify", str(path))
    assert result.exit_code == 0 and "OK 8 decisions" in one_line(result.output), result.output

    again = api.post("/v1/runs/import", content=text)  # the run holds this very log
    assert again.status_code == 200, again.text
    stored = api.get("/v1/runs/x").json()
    assert {k: again.json()[k] for k in ("scale", "scaling", "last_step", "lrs")} == {
        k: stored[k] for k in ("scale", "scaling", "last_step", "lrs")
    }


def test_import_restores_where_the_run_stands(api: TestClient, tmp_path: Path) -> None:
    resized_run(api)
    post(api, "x", 600, 0.98, world_size=4)  # the size in force: no entry
    text = api.get("/v1/runs/x/export").text
    stored = api.get("/v1/runs/x").json()
    with app_client(f"sqlite:///{tmp_path / 'elsewhere.db'}") as elsewhere:
        created = elsewhere.post("/v1/runs/import", content=text)
        assert created.status_code == 201, created.text
        run = elsewhere.get("/v1/runs/x").json()
        for key in ("scale", "scaling", "last_step", "lrs", "head_hash", "counts"):
            assert run[key] == stored[key], key
        verified(elsewhere, "x")
        # it goes on deciding under the factor in force, as the original does
        here, there = post(api, "x", 700, 0.5), post(elsewhere, "x", 700, 0.5)
        for key in ("lrs", "previous_lrs", "action", "reason", "state", "scale", "prev_hash"):
            assert there[key] == here[key], key


def edit_at(lines: list[str], seq: int, **changes: Any) -> list[str]:
    out = list(lines)
    doc = json.loads(out[seq])
    doc.update(changes)
    out[seq] = json.dumps(doc)
    return rechained(out)


@pytest.mark.parametrize(
    ("seq", "changes", "what"),
    [
        (5, {"scale": 0.25, "lrs": [0.025, 0.005]}, "scale"),  # a resize claiming another factor
        (5, {"resize": {"by": "world_size", "from": 16, "to": 2}}, "scale"),
        (6, {"lrs": [0.1, 0.02]}, "lrs"),  # a decision after the resize, unscaled
        (6, {"scale": 1.0}, "scale"),
        (3, {"previous_lrs": [0.1, 0.02], "lrs": [0.1, 0.02]}, "lrs"),
    ],
)
def test_an_edited_scale_is_found_even_when_rechained(
    api: TestClient, tmp_path: Path, seq: int, changes: dict[str, Any], what: str
) -> None:
    resized_run(api)
    lines = api.get("/v1/runs/x/export").text.splitlines()
    assert json.loads(lines[5])["action"] == "scale"
    path = tmp_path / "edited.ndjson"
    path.write_text(bundle_text(edit_at(lines, seq, **changes)))
    result = lrpilot_cli("verify", str(path))
    assert result.exit_code == 1, result.output
    assert f"seq {seq}" in one_line(result.output) and what in one_line(result.output)


def test_a_what_if_replays_the_recorded_resizes(api: TestClient, tmp_path: Path) -> None:
    resized_run(api)
    path = tmp_path / "x.ndjson"
    path.write_text(api.get("/v1/runs/x/export").text)
    same = lrpilot_cli("replay", str(path))
    assert same.exit_code == 0 and "the same decisions at every step" in one_line(same.output)
    other = one_line(lrpilot_cli("replay", str(path), "--set", "patience=0").output)
    # patience 0 reduces at step 300, under the factor of world_size 16 then in force, and
    # ends three reductions down under the factor of world_size 4
    assert "│ 300 │ 0.95 │ hold 0.2, 0.04 │ reduce 0.020000000000000004," in other, other
    assert "what-if [5.0000000000000016e-05, 1e-05]" in other, other


# -- the client ---------------------------------------------------------------------------------


def test_the_client_creates_a_scaled_run_and_resizes_it(live_server: LiveServer) -> None:
    with Client(live_server.url, identity={"host": "trainer"}) as client:
        run = client.create_run("c", params={"patience": 2}, base_lrs=[0.1], scaling=WORLD)
        assert run.scaling == WORLD and run.scale == {"size": 8, "factor": 1.0, "step": None}
        assert client.observe("c", 10, 1.0).lrs == (0.1,)
        out = client.resize("c", 20, world_size=24)
        assert out.resized and out.lrs == (0.30000000000000004,) and out.scale["factor"] == 3.0
        assert out.decision is not None and out.decision.action == "scale"
        assert out.decision.resize == {"by": "world_size", "from": 8, "to": 24}
        assert client.head_hash("c") == out.decision.hash
        d = client.observe("c", 30, 0.9)
        assert d.scale == 3.0 and d.lrs == (0.1 * 3.0,)
        assert not client.resize("c", 40, world_size=24).resized
        assert client.verify("c").ok


def test_a_resize_past_a_waiting_step_refuses_it_and_the_log_stays_true(
    live_server: LiveServer,
) -> None:
    spec = aggregated(timeout_s=1.5, params={"patience": 5})
    spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 3}
    url = live_server.url
    assert httpx.put(f"{url}/v1/runs/p", json=spec, timeout=30).status_code == 201

    async def race() -> tuple[list[httpx.Response], httpx.Response]:
        reports = [{"step": 10, "value": 1.0, "rank": r, "world_size": 3} for r in (0, 1)]
        waiting = asyncio.ensure_future(post_all(url, "p", reports))
        await asyncio.sleep(0.5)  # both ranks are waiting for rank 2
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            resized = await http.post("/v1/runs/p/resize", json={"step": 20, "world_size": 2})
        return await waiting, resized

    answers, resized = asyncio.run(race())
    assert resized.status_code == 200 and resized.json()["resized"], resized.text
    # the step's timeout came after the resize: deciding it now would go back before step 20
    assert [a.status_code for a in answers] == [409, 409], [a.text for a in answers]
    assert "step 10 is below step 20" in answers[0].json()["detail"]
    late = httpx.post(
        f"{url}/v1/runs/p/observations",
        json={"step": 10, "value": 1.0, "rank": 2, "world_size": 3},
        timeout=30,
    )
    assert late.status_code == 409
    log = httpx.get(f"{url}/v1/runs/p/decisions", timeout=30).json()["items"]
    assert [d["action"] for d in log] == ["scale"]
    assert httpx.post(f"{url}/v1/runs/p/verify", timeout=30).json()["ok"]


GOLDEN_BUNDLE = GOLDEN_DIR / "bundles" / "elastic.ndjson"


def test_the_frozen_elastic_bundle_verifies_and_round_trips_byte_for_byte(
    tmp_path: Path,
) -> None:
    """A log written when elastic jobs were released (resizes by observation and by request,
    a rewind across them, a NaN, a return to the base size) must verify, and import and export
    unchanged, forever."""
    result = lrpilot_cli("verify", str(GOLDEN_BUNDLE))
    assert result.exit_code == 0, result.output
    assert "OK 14 decisions (3 superseded by 1 rewinds)" in one_line(result.output)
    text = GOLDEN_BUNDLE.read_text()
    with app_client(f"sqlite:///{tmp_path / 'golden.db'}") as api:
        assert api.post("/v1/runs/import", content=text).status_code == 201
        assert api.get("/v1/runs/elastic-golden/export").text == text
        run = api.get("/v1/runs/elastic-golden").json()
        assert run["scale"] == {"size": 12, "factor": 1.5, "step": 600}
        assert api.get("/v1/runs/elastic-golden/lr?step=650").json()["lrs"] == [
            0.015000000000000003,
            0.003,
        ]


def test_sizes_beyond_the_limits_are_refused_and_nothing_changes(api: TestClient) -> None:
    api.put("/v1/runs/h", json=elastic(base_lrs=[1e300]))
    api.put("/v1/runs/base1", json=elastic({**WORLD, "base": 1}, base_lrs=[1e305]))
    for world_size in (2**31, 2**63, 10**400):
        r = api.post(
            "/v1/runs/h/observations", json={"step": 1, "value": 1.0, "world_size": world_size}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "world_size"]
        r = resize(api, "h", step=1, world_size=world_size)
        assert r.status_code == 422, r.text
    # 1e305 x 65,536 (LRPILOT_MAX_WORLD_SIZE) is past the largest float: refused, by request
    # or by observation
    huge = resize(api, "base1", step=1, world_size=65_536)
    assert huge.status_code == 409 and "past the largest float" in huge.json()["detail"]
    by_obs = api.post(
        "/v1/runs/base1/observations", json={"step": 1, "value": 1.0, "world_size": 65_536}
    )
    assert by_obs.status_code == 409, by_obs.text
    for run_id, lrs in (("h", [1e300]), ("base1", [1e305])):
        run = api.get(f"/v1/runs/{run_id}").json()
        assert run["last_seq"] == 0 and run["lrs"] == lrs
        verified(api, run_id)


def test_a_rewind_below_a_resize_past_the_last_step_supersedes_it(api: TestClient) -> None:
    api.put("/v1/runs/past", json=elastic())
    post(api, "past", 100, 1.0)
    resize(api, "past", step=200, world_size=16)
    assert api.get("/v1/runs/past").json()["lrs"] == [0.2]
    out = api.post("/v1/runs/past/rewind", json={"to_step": 150}).json()
    assert out["rewound"] and out["lrs"] == [0.1] and out["decision"]["rewind"]["superseded"] == 1
    assert api.get("/v1/runs/past").json()["scale"] == {"size": 8, "factor": 1.0, "step": None}
    assert api.get("/v1/runs/past/lr?step=250").json()["lrs"] == [0.1]
    # a resize from an earlier step is possible again
    assert strict_json(resize(api, "past", step=160, world_size=4).text)["lrs"] == [0.05]
    verified(api, "past")


def test_a_policy_whose_state_says_scale_is_read_right(api: TestClient) -> None:
    """scaled@1's state has a "scale" of its own (plateau control as a scale): the factor of
    an elastic run is the entry's, never a key of the policy's state."""
    spec = {
        "policy": {
            "name": "scaled",
            "version": 1,
            "params": {
                "schedule": {"name": "cosine", "version": 1, "params": {"T_max": 40}},
                "plateau": {"name": "plateau", "version": 1, "params": {"patience": 0}},
            },
        },
        "base_lrs": [0.01],
    }
    for run_id, scaling in (("plain", None), ("elastic", WORLD)):
        assert api.put(f"/v1/runs/{run_id}", json={**spec, "scaling": scaling}).status_code == 201
        post(api, run_id, 5, 1.0)
        post(api, run_id, 10, 1.5)  # patience 0: the scale drops
    plain = api.get("/v1/runs/plain/lrs?from=0&count=20").json()["lrs"]
    assert api.get("/v1/runs/elastic/lrs?from=0&count=20").json()["lrs"] == plain
    resize(api, "elastic", step=12, world_size=16)
    served = api.get("/v1/runs/elastic/lrs?from=0&count=20").json()["lrs"]
    assert served == plain[:12] + [[lr * 2.0 for lr in lrs] for lrs in plain[12:]]
    assert api.get("/v1/runs/elastic/lr?step=15").json()["lrs"] == [plain[15][0] * 2.0]
    verified(api, "elastic")


def test_simulate_of_a_resized_run_keeps_its_resizes(api: TestClient) -> None:
    resized_run(api)
    same = api.post("/v1/simulate", json={"run_id": "x"}).json()
    assert same["differing"] == 0, same
    assert [i.get("scale") for i in same["items"]] == [None, 2.0, 2.0, 0.5, 0.5]
    other = api.post(
        "/v1/simulate",
        json={
            "run_id": "x",
            "policy": {"name": "plateau", "version": 1, "params": {"patience": 0}},
        },
    ).json()
    at_300 = other["items"][2]
    assert at_300["action"] == "reduce" and at_300["lrs"] == [0.1 * 0.1 * 2.0, 0.02 * 0.1 * 2.0]


def test_plot_of_a_resized_live_run_shows_the_served_lrs_and_marks_the_resizes(
    live_server: LiveServer, tmp_path: Path
) -> None:
    from lrpilot.cli.plot import run_series
    from lrpilot_client import Client

    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        assert http.put("/v1/runs/pl", json=elastic(params={"patience": 1})).status_code == 201
        for step, value, world in ((10, 1.0, 8), (20, 0.9, 16), (30, 0.95, 16), (40, 0.96, 4)):
            body = {"step": step, "value": value, "world_size": world}
            assert http.post("/v1/runs/pl/observations", json=body).status_code == 200
        series = run_series(Client(live_server.url), "pl", 45)
        served = http.get("/v1/runs/pl/lrs", params={"from": 0, "count": 46}).json()["lrs"]
    assert series.lrs == [tuple(x) for x in served]
    assert (20, "scale") in series.marks and (40, "scale") in series.marks
    assert [s for s, _ in series.evaluations] == [10, 20, 30, 40]
    out = tmp_path / "elastic.png"
    result = lrpilot_cli("plot", "--from-run", "pl", "--url", live_server.url, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
