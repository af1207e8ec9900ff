"""A run with a policy per param group (groups@1) through the service, on each database: one
decision a step with every group's lrs, reason and state; the lrs between evaluations, the
reductions counted, verify, rewind, export and import, elastic scaling, aggregated mode, and the
what-ifs (POST /v1/simulate, lrpilot simulate with one group's params changed) and plots."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from lrpilot.policies import get_policy
from lrpilot.replay import Replay
from tests.conftest import app_client
from tests.domain.test_aggregate import post_all
from tests.domain.test_elastic import WORLD, post, resize, verified
from tests.harness import REPO_DIR, LiveServer
from tests.helpers import lrpilot_cli, one_line, plateau_stream, strict_json

# the README's fine-tune (docs/policies.md): the backbone on cosine_with_min_lr after a warmup
# of 1,000 steps, the head on a warmup of 300 steps then plateau@1
FINETUNE: dict[str, Any] = json.loads((REPO_DIR / "docs/images/groups_finetune.json").read_text())
BASE = FINETUNE["base_lrs"]
PARAMS = FINETUNE["policy"]["params"]
STREAM = plateau_stream(30, seed=3, start_step=40, every=40)


def spec(**extra: Any) -> dict[str, Any]:
    return {**FINETUNE, **extra}


def offline() -> list[tuple[str, list[float], str]]:
    """The stream through the one replay loop, no service: (action, lrs, reason) a step."""
    policy = get_policy("groups", 1)
    replay = Replay(policy, policy.resolve(PARAMS, tuple(BASE)), BASE, "val_loss")
    out = []
    for step, value in STREAM:
        action = replay.observe(step, value)
        out.append((action, list(replay.stepper.lrs), replay.stepper.reason()))
    return out


def test_one_decision_a_step_with_every_groups_lrs_reason_and_state(api: TestClient) -> None:
    assert api.put("/v1/runs/ft", json=spec()).status_code == 201
    decided = [post(api, "ft", step, value) for step, value in STREAM]
    assert [(d["action"], d["lrs"], d["reason"]) for d in decided] == offline()
    assert all(d["reason"].startswith("backbone (cosine_with_min_lr@1): ") for d in decided)
    assert all("; head (sequence@1): phase " in d["reason"] for d in decided)
    last = decided[-1]
    assert [g["lrs"] for g in last["state"]["groups"]] == [[lr] for lr in last["lrs"]]
    run = api.get("/v1/runs/ft").json()
    reductions = sum(d["action"] == "reduce" for d in decided)
    assert reductions > 0 and run["counts"] == {"decisions": len(STREAM), "reductions": reductions}
    # between evaluations the backbone's cosine moves on, the head's plateau holds
    step = STREAM[-1][0] + 10
    at = api.get("/v1/runs/ft/lr", params={"step": step}).json()["lrs"]
    assert at[1] == last["lrs"][1] and at[0] != last["lrs"][0]
    lrs = api.get("/v1/runs/ft/lrs", params={"from": 0, "count": step + 1}).json()
    policy = get_policy("groups", 1)
    params = policy.resolve(PARAMS, tuple(BASE))
    assert lrs["lrs"][0] == list(policy.lrs_at(params, policy.init(params, tuple(BASE)), 0))
    assert lrs["lrs"][step] == at
    assert lrs["open_loop"] is False and lrs["certain_through"] == STREAM[-1][0]
    assert verified(api, "ft")["count"] == len(STREAM)

    # a rewind restores every group's state as of its step, and the run goes on from there
    to_step = STREAM[9][0]
    back = api.post("/v1/runs/ft/rewind", json={"to_step": to_step}).json()
    assert back["lrs"] == decided[9]["lrs"]
    again = post(api, "ft", STREAM[10][0], STREAM[10][1])
    assert (again["lrs"], again["reason"], again["state"]) == (
        decided[10]["lrs"],
        decided[10]["reason"],
        decided[10]["state"],
    )
    verified(api, "ft")


def test_export_verifies_offline_and_imports_elsewhere_deciding_the_same(
    api: TestClient, tmp_path: Path
) -> None:
    api.put("/v1/runs/ft", json=spec())
    for step, value in STREAM[:20]:
        post(api, "ft", step, value)
    api.post("/v1/runs/ft/rewind", json={"to_step": STREAM[15][0]})
    text = api.get("/v1/runs/ft/export").text
    bundle = tmp_path / "ft.ndjson"
    bundle.write_text(text)
    checked = lrpilot_cli("verify", str(bundle))
    assert checked.exit_code == 0 and "OK" in one_line(checked.output), checked.output
    with app_client(f"sqlite:///{tmp_path / 'elsewhere.db'}") as elsewhere:
        assert elsewhere.post("/v1/runs/import", content=text).status_code == 201
        verified(elsewhere, "ft")
        for n, (step, value) in enumerate(STREAM[16:]):
            here, there = post(api, "ft", step, value), post(elsewhere, "ft", step, value)
            for key in ("lrs", "action", "reason", "state"):
                assert there[key] == here[key], key
            # both go on from the same head (then each entry's time is its own)
            assert n > 0 or there["prev_hash"] == here["prev_hash"]


def test_a_resize_scales_every_groups_lrs(api: TestClient) -> None:
    api.put("/v1/runs/el", json=spec(scaling=WORLD))
    first = post(api, "el", *STREAM[0])
    r = resize(api, "el", step=STREAM[0][0] + 5, world_size=16)
    assert r.status_code == 200 and r.json()["lrs"] == [2 * lr for lr in first["lrs"]]
    second = post(api, "el", *STREAM[1])
    assert second["lrs"] == [2 * lr for lr in offline()[1][1]]
    assert second["state"]["lrs"] == offline()[1][1]  # the policy never sees the factor
    verified(api, "el")


def test_ranks_of_an_aggregated_groups_run_get_one_decision(backend_server: LiveServer) -> None:
    body = spec(aggregate={"timeout_s": 30, "on_timeout": "refuse"})
    assert httpx.put(f"{backend_server.url}/v1/runs/ag", json=body, timeout=30).status_code == 201
    for step, value in STREAM[:4]:
        # two ranks whose weighted mean is the stream's value
        reports = [
            {"step": step, "value": value + d, "rank": r, "world_size": 2}
            for r, d in enumerate((-0.25, 0.25))
        ]
        answers = asyncio.run(post_all(backend_server.url, "ag", reports))
        assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
        docs = [strict_json(a.text) for a in answers]
        assert docs[0] == docs[1] and "backbone (" in docs[0]["reason"]
    decided = httpx.get(f"{backend_server.url}/v1/runs/ag/decisions", timeout=30).json()["items"]
    assert [d["lrs"] for d in decided] == [lrs for _, lrs, _ in offline()[:4]]
    report = httpx.post(f"{backend_server.url}/v1/runs/ag/verify", timeout=30).json()
    assert report["ok"] and report["count"] == 4, report


def test_what_if_with_other_params_for_one_group(api: TestClient, tmp_path: Path) -> None:
    api.put("/v1/runs/ft", json=spec())
    for step, value in STREAM:
        post(api, "ft", step, value)
    slower = json.loads(json.dumps(PARAMS))
    slower["groups"][1]["policy"]["params"]["phases"][1]["policy"]["params"]["patience"] = 6
    body = {"run_id": "ft", "policy": {"name": "groups", "version": 1, "params": slower}}
    sim = api.post("/v1/simulate", json=body).json()
    assert sim["count"] == len(STREAM) and sim["differing"] > 0
    recorded = {i["step"]: i["recorded"]["lrs"] for i in sim["items"]}
    # the backbone's lrs are the same everywhere: only the head's params changed
    assert all(i["lrs"][0] == recorded[i["step"]][0] for i in sim["items"])
    assert any(i["lrs"][1] != recorded[i["step"]][1] for i in sim["items"])

    bundle = tmp_path / "ft.ndjson"
    bundle.write_bytes(api.get("/v1/runs/ft/export").content)
    png = tmp_path / "what-if.png"
    where = "groups.1.policy.params.phases.1.policy.params.patience"
    done = lrpilot_cli("simulate", str(bundle), "--set", f"{where}=6", "--plot", str(png))
    out = one_line(done.output)
    assert done.exit_code == 0, out
    assert f"{len(STREAM)} observations replayed under groups@1" in out
    assert f"of {sim['differing']})" in out  # the API's what-if and the CLI's agree
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    wrong = lrpilot_cli("simulate", str(bundle), "--set", "groups.7.name=x")
    assert wrong.exit_code != 0 and "groups.7.name: groups has no '7'" in one_line(wrong.output)


def test_plot_of_a_groups_spec_draws_each_group(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(
        '{"policy": {"name": "groups", "version": 1, "params": '
        + __import__("json").dumps(PARAMS)
        + '}, "base_lrs": [0.01, 0.1]}'
    )
    values = tmp_path / "values.txt"
    values.write_text("".join(f"{step} {value}\n" for step, value in STREAM))
    png = tmp_path / "groups.png"
    done = lrpilot_cli("plot", str(path), "--steps", "700", "--values", str(values), "-o", str(png))
    assert done.exit_code == 0, done.output
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- more than the lr: a head on one_cycle@2 cycling the momentum, a backbone on cyclic@2 --------

MOMENTUM_SPEC: dict[str, Any] = {
    "policy": {
        "name": "groups",
        "version": 1,
        "params": {
            "groups": [
                {
                    "name": "backbone",
                    "policy": {
                        "name": "cyclic",
                        "version": 2,
                        "params": {"base_lr": 0.0001, "max_lr": 0.001, "step_size_up": 50},
                    },
                },
                {
                    "name": "head",
                    "policy": {
                        "name": "one_cycle",
                        "version": 2,
                        "params": {"max_lr": 0.1, "total_steps": 1000, "cycle_momentum": True},
                    },
                },
            ]
        },
    },
    "base_lrs": [0.001, 0.01],
    "metric": "val_loss",
}
MOMENTUM_STREAM = STREAM[:8]


def momentum_at(step: int) -> list[float]:
    """Each group's policy alone: the backbone's momentum, then the head's."""
    out = []
    groups = MOMENTUM_SPEC["policy"]["params"]["groups"]
    for group, base in zip(groups, MOMENTUM_SPEC["base_lrs"], strict=True):
        policy = get_policy(group["policy"]["name"], 2)
        params = policy.resolve(group["policy"]["params"], (base,))
        out += policy.extras_at(params, policy.init(params, (base,)), step)["momentum"]
    return out


def test_the_groups_momentum_is_in_every_answer_and_the_run_verifies(api: TestClient) -> None:
    assert api.put("/v1/runs/mo", json=MOMENTUM_SPEC).status_code == 201
    decided = [post(api, "mo", step, value) for step, value in MOMENTUM_STREAM]
    for (step, _), d in zip(MOMENTUM_STREAM, decided, strict=True):
        assert d["momentum"] == d["state"]["momentum"] == momentum_at(step)
        assert "weight_decay" not in d and "weight_decay" not in d["state"]  # not scheduled
        assert "head (one_cycle@2): " in d["reason"] and ", momentum " in d["reason"]
    logged = api.get("/v1/runs/mo/decisions").json()["items"]
    assert [d["momentum"] for d in logged] == [d["momentum"] for d in decided]
    last = MOMENTUM_STREAM[-1][0]
    assert api.get("/v1/runs/mo/lr").json()["momentum"] == momentum_at(last)
    between = api.get("/v1/runs/mo/lr", params={"step": 25}).json()
    assert between["momentum"] == momentum_at(25) != momentum_at(MOMENTUM_STREAM[0][0])
    lrs = api.get("/v1/runs/mo/lrs", params={"from": 30, "count": 5}).json()
    assert lrs["momentum"] == [momentum_at(k) for k in range(30, 35)]
    assert verified(api, "mo")["count"] == len(MOMENTUM_STREAM)
    sim = api.post("/v1/simulate", json={"run_id": "mo"}).json()
    assert sim["differing"] == 0 and [i["momentum"] for i in sim["items"]] == [
        d["momentum"] for d in decided
    ]


def test_a_group_that_schedules_no_momentum_beside_one_that_does_is_a_422(
    api: TestClient,
) -> None:
    spec = json.loads(json.dumps(MOMENTUM_SPEC))
    spec["policy"]["params"]["groups"][0]["policy"]["params"]["cycle_momentum"] = False
    r = api.put("/v1/runs/half", json=spec)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", "policy", "params", "groups", 0, "policy"]
    assert detail["msg"].endswith(
        "every group schedules the momentum or none: groups.0 (backbone, cyclic@2) does not, "
        "group 'head' does"
    )
    assert api.get("/v1/runs/half").status_code == 404
