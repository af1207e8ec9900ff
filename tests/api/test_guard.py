"""Checkpoints declared and a guarded run's rollbacks (issue 18, docs/guard.md), over HTTP on
SQLite and PostgreSQL: the entries, the run going on from the checkpoint as after a rewind,
retries, the stop after max_rollbacks, verify, export/import and offline verify, the summary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import (
    export,
    get_run,
    import_,
    log,
    observe,
    offline_verify,
    rewind,
    verify,
)
from tests.conftest import app_client, empty_database
from tests.harness import REPO_DIR
from tests.helpers import bundle_text, lrpilot_cli, one_line, rechained, run_spec

GUARD = {
    "on": ["nan", "spike"],
    "spike": {"rule": "ratio", "ratio": 2.0},
    "lr_factor": 0.5,
    "max_rollbacks": 2,
}


def guarded(api: TestClient, run_id: str, guard: dict[str, Any] | None = None) -> None:
    spec = run_spec({"patience": 100}) | {"guard": guard or GUARD}
    r = api.put(f"/v1/runs/{run_id}", json=spec)
    assert r.status_code == 201, r.text


def decided(api: TestClient, run_id: str, step: int, value: float) -> dict[str, Any]:
    r = observe(api, run_id, step, value)
    assert r.status_code == 200, r.text
    return dict(r.json())


def checkpoint(api: TestClient, run_id: str, step: int, ref: str, status: int = 201) -> Any:
    r = api.post(f"/v1/runs/{run_id}/checkpoints", json={"step": step, "ref": ref})
    assert r.status_code == status, r.text
    return r.json()


def test_a_guarded_run_rolls_back_to_its_checkpoint_and_goes_on_from_there(
    api: TestClient, tmp_path: Path
) -> None:
    guarded(api, "g")
    for step, value in ((1, 1.0), (2, 0.9), (3, 0.8)):
        assert decided(api, "g", step, value)["action"] == "hold"

    # declared: an entry of the chain at its own step, no decision, the last step unmoved
    first = checkpoint(api, "g", 2, "ckpt-2")
    assert first["declared"] is True
    entry = first["decision"]
    assert (entry["action"], entry["step"], entry["value"]) == ("checkpoint", 2, None)
    assert entry["checkpoint"] == {"ref": "ckpt-2"}
    assert entry["lrs"] == entry["previous_lrs"] == [0.1]
    assert checkpoint(api, "g", 2, "ckpt-2", status=200) == first | {"declared": False}
    later = checkpoint(api, "g", 2, "ckpt-2-best")["decision"]  # another ref: another one
    assert get_run(api, "g")["last_step"] == 3
    assert decided(api, "g", 4, 0.85)["action"] == "hold"

    # a NaN: rolled back to the newest checkpoint before step 5, the lrs cut
    rollback = decided(api, "g", 5, math.nan)
    assert rollback["action"] == "rollback"
    assert rollback["rollback"] == {
        "trigger": "nan",
        "count": 1,
        "checkpoint": {"seq": later["seq"], "step": 2, "ref": "ckpt-2-best"},
    }
    assert rollback["lrs"] == [0.05] and rollback["previous_lrs"] == [0.1]
    assert "val_loss nan is not finite (nan)" in rollback["reason"]
    assert "to checkpoint 'ckpt-2-best' (step 2)" in rollback["reason"]
    # a retry of the step is answered with it, nothing new
    assert decided(api, "g", 5, math.nan) == rollback
    run = get_run(api, "g")
    assert (run["last_step"], run["lrs"], run["last_seq"]) == (2, [0.05], rollback["seq"] + 1)
    rewind = log(api, "g")[-1]
    assert rewind["action"] == "rewind" and rewind["rewind"]["to_step"] == 2
    assert rewind["lrs"] == [0.05]

    # the run goes on from step 2: steps 3 and 4 again, the trouble a superseded branch
    assert decided(api, "g", 3, 0.8)["lrs"] == [0.05]
    live = [(d["step"], d["action"]) for d in log(api, "g", superseded="false")]
    assert live == [
        (1, "hold"),
        (2, "hold"),
        (2, "checkpoint"),
        (2, "checkpoint"),
        (2, "rewind"),
        (3, "hold"),
    ]
    gone = [(d["step"], d["action"]) for d in log(api, "g", superseded="true")]
    assert gone == [(3, "hold"), (4, "hold"), (5, "rollback")]

    # a spike (above 2 x the best 0.8): the second rollback, the lrs cut again
    spike = decided(api, "g", 4, 1.7)
    assert spike["action"] == "rollback" and spike["lrs"] == [0.025]
    assert spike["rollback"]["trigger"] == "spike" and spike["rollback"]["count"] == 2
    assert "val_loss 1.7 is above 2.0 x the best 0.8" in spike["reason"]
    # max_rollbacks reached: the next trouble is a stop, and so is every decision after it
    stop = decided(api, "g", 3, math.inf)
    assert stop["action"] == "stop" and stop["lrs"] == [0.025]
    assert "2 rollbacks already (max_rollbacks 2): stop" in stop["reason"]
    assert decided(api, "g", 4, 0.7)["action"] == "stop"

    listed = api.get("/v1/runs/g/checkpoints").json()
    assert [(c["step"], c["ref"], c["superseded"]) for c in listed["items"]] == [
        (2, "ckpt-2", False),
        (2, "ckpt-2-best", False),
    ]
    summary = api.get("/v1/runs/g/summary").json()
    assert [c["ref"] for c in summary["checkpoints"]] == ["ckpt-2", "ckpt-2-best"]
    assert summary["checkpoint_count"] == 2 and listed["next"] is None
    assert [(r["step"], r["trigger"], r["checkpoint"]["ref"]) for r in summary["rollbacks"]] == [
        (5, "nan", "ckpt-2-best"),
        (4, "spike", "ckpt-2-best"),
    ]
    assert summary["guard"] == {"rollbacks": 2, "cut": 0.25, "stopped": True}

    # the log proves itself: in the service, exported, imported, and offline
    assert verify(api, "g")["ok"] is True
    bundle = export(api, "g")
    assert offline_verify(tmp_path, bundle)[0] == 0
    (tmp_path / "fresh").mkdir()
    with app_client(empty_database("sqlite", tmp_path / "fresh")) as fresh:
        assert import_(fresh, bundle).status_code == 201
        assert get_run(fresh, "g") == get_run(api, "g")
        assert verify(fresh, "g")["ok"] is True
        assert export(fresh, "g") == bundle
        # it goes on there as it would have here: a stop, the guard's state carried over
        assert decided(fresh, "g", 5, 0.6)["action"] == "stop"


def test_admin_rewinds_never_give_back_rollbacks_so_the_summary_lists_at_most_max_rollbacks(
    api: TestClient,
) -> None:
    """The summary lists every rollback of the log, superseded ones included (each is, by its
    own rewind), with no page: what bounds it is that the count is the run's, not a branch's.
    A rewind by hand, even to before the first decision, carries the count, the cut and the
    stop (``Guarded.carry``), so no log ever holds more than max_rollbacks rollbacks."""
    guarded(api, "b")  # max_rollbacks 2
    for step, value in ((1, 1.0), (2, 0.9), (3, 0.8)):
        decided(api, "b", step, value)
    checkpoint(api, "b", 2, "c2")
    assert decided(api, "b", 4, math.nan)["rollback"]["count"] == 1
    rewind(api, "b", 1)  # by hand, below the rollback's checkpoint: the first rollback's branch
    decided(api, "b", 2, 0.9)
    checkpoint(api, "b", 2, "c2-again")
    assert decided(api, "b", 3, math.nan)["rollback"]["count"] == 2
    rewind(api, "b", 0)  # before the first decision: the policy's initial state, count kept
    decided(api, "b", 1, 1.0)
    checkpoint(api, "b", 1, "c1")
    assert decided(api, "b", 2, math.nan)["action"] == "stop"
    rewind(api, "b", 0)  # nor does a rewind undo the stop
    assert decided(api, "b", 1, 1.0)["action"] == "stop"

    def rollbacks(**query: str) -> list[int]:
        return [d["step"] for d in log(api, "b", **query) if d["action"] == "rollback"]

    assert rollbacks() == rollbacks(superseded="true") == [4, 3]  # both gone by rewinds
    summary = api.get("/v1/runs/b/summary").json()
    assert [(r["step"], r["checkpoint"]["ref"]) for r in summary["rollbacks"]] == [
        (4, "c2"),
        (3, "c2-again"),
    ]
    assert summary["guard"] == {"rollbacks": 2, "cut": 0.25, "stopped": True}
    assert verify(api, "b")["ok"] is True


def test_trouble_without_a_checkpoint_cuts_the_lrs_in_place(api: TestClient) -> None:
    guarded(api, "nock")
    decided(api, "nock", 1, 1.0)
    checkpoint(api, "nock", 5, "ahead")  # not before the trouble's step: not a target
    cut = decided(api, "nock", 5, math.nan)
    assert cut["action"] == "reduce" and cut["lrs"] == [0.05]
    assert "no checkpoint declared before this step to roll back to" in cut["reason"]
    assert get_run(api, "nock")["last_step"] == 5
    assert verify(api, "nock")["ok"] is True


def test_a_zscore_guard_and_an_unguarded_run_keep_their_shape(api: TestClient) -> None:
    zscore = {"on": ["spike"], "spike": {"rule": "zscore", "k": 3.0, "window": 4}}
    guarded(api, "z", zscore)
    for step, value in enumerate((1.0, 1.1, 0.9, 1.0, 1.05), start=1):
        assert decided(api, "z", step, value)["action"] == "hold"
    checkpoint(api, "z", 5, "c5")
    assert decided(api, "z", 6, math.nan)["action"] == "hold"  # "nan" is not in "on"
    spike = decided(api, "z", 7, 3.0)
    assert spike["action"] == "rollback"
    assert "standard deviations above the mean" in spike["reason"]
    run = get_run(api, "z")
    assert run["guard"] == zscore | {"lr_factor": 0.5, "max_rollbacks": 3}
    assert verify(api, "z")["ok"] is True

    plain = api.put("/v1/runs/plain", json=run_spec()).json()
    assert "guard" not in plain
    # a run without a guard: its config hash is the policy's, params' and base lrs' alone
    guarded(api, "g")
    assert get_run(api, "g")["config_hash"] != plain["config_hash"]


@pytest.mark.parametrize(
    ("guard", "says"),
    [
        ({"on": ["spike"]}, '"spike" (the rule) is required'),
        ({"on": ["nan"], "spike": {"rule": "ratio", "ratio": 2.0}}, '"spike" (the rule)'),
        ({"on": ["nan", "nan"]}, "names a trigger twice"),
        ({"on": []}, "at least 1"),
        ({"on": ["nan"], "lr_factor": 1.5}, "less than 1"),
        ({"on": ["nan"], "max_rollbacks": -1}, "greater than or equal to 0"),
        ({"on": ["spike"], "spike": {"rule": "median"}}, "rule"),
        ({"on": ["spike"], "spike": {"rule": "zscore", "k": 3, "window": 5000}}, "1000"),
        ({"on": ["spike"], "spike": {"rule": "ratio", "ratio": 0.5}}, "greater than 1"),
    ],
)
def test_a_bad_guard_is_a_clear_422(
    module_api: TestClient, guard: dict[str, Any], says: str
) -> None:
    r = module_api.put("/v1/runs/bad", json=run_spec() | {"guard": guard})
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"][0]["msg"], r.text


def test_checkpoints_refused_clearly(api: TestClient) -> None:
    assert api.post("/v1/runs/none/checkpoints", json={"step": 1, "ref": "x"}).status_code == 404
    api.put("/v1/runs/c", json=run_spec())
    for body in ({"step": -1, "ref": "x"}, {"step": 1, "ref": ""}, {"step": 1}, {"ref": "x"}):
        assert api.post("/v1/runs/c/checkpoints", json=body).status_code == 422
    assert api.get("/v1/runs/none/checkpoints").status_code == 404


GOLDEN_BUNDLE = REPO_DIR / "tests" / "golden" / "bundles" / "guard.ndjson"


def test_the_frozen_guard_bundle_verifies_and_round_trips_byte_for_byte(tmp_path: Path) -> None:
    """A guarded run's log as written when the guard was released (checkpoints, one declared
    twice and one late, a NaN and a zscore spike rolled back, a rewind by hand, the stop after
    max_rollbacks) must verify, and import and export unchanged, forever."""
    result = lrpilot_cli("verify", str(GOLDEN_BUNDLE))
    assert result.exit_code == 0, result.output
    assert "OK 22 decisions (7 superseded by 3 rewinds)" in one_line(result.output)
    text = GOLDEN_BUNDLE.read_text()
    with app_client(f"sqlite:///{tmp_path / 'golden.db'}") as api:
        assert import_(api, text).status_code == 201
        assert api.get("/v1/runs/guard-golden/export").text == text
        summary = api.get("/v1/runs/guard-golden/summary").json()
        assert [r["trigger"] for r in summary["rollbacks"]] == ["nan", "spike"]
        assert summary["guard"] == {"rollbacks": 2, "cut": 0.25, "stopped": True}
        assert decided(api, "guard-golden", 120, 0.6)["action"] == "stop"


def _edited(lines: list[str], seq: int, *changes: tuple[str, str]) -> list[str]:
    out = list(lines)
    for old, new in changes:
        assert old in out[seq]
        out[seq] = out[seq].replace(old, new)
    return rechained(out)


def test_an_edited_rollback_or_checkpoint_is_found_offline(tmp_path: Path) -> None:
    lines = GOLDEN_BUNDLE.read_text().splitlines()
    rollback = next(i for i, line in enumerate(lines) if '"action":"rollback"' in line)
    target = next(i for i, line in enumerate(lines) if '"ref":"ckpt/step-60"}' in line)
    cases = {
        # rolled back to another checkpoint than the newest one before the trouble
        "target": (
            _edited(lines, rollback, ('"ref":"ckpt/step-60"', '"ref":"ckpt/step-30"')),
            "rollback is not what the policy decides",
        ),
        # the log cut after a rollback: the rewind that must follow it is missing
        "no rewind": (rechained([*lines[: rollback + 1], lines[-1]]), "without its rewind"),
        # the checkpoint moved past the trouble: the rollback must have gone to the one before
        "moved": (
            _edited(lines, target, ('"step":60', '"step":85'), ("of step 60", "of step 85")),
            "rollback is not what the policy decides",
        ),
    }
    for name, (edited, says) in cases.items():
        code, output = offline_verify(tmp_path, bundle_text(edited))
        assert code != 0, name
        assert says in output, (name, output)


def test_a_rollback_in_an_elastic_run_restores_the_size_of_its_checkpoint(
    api: TestClient,
) -> None:
    spec = run_spec({"patience": 100}) | {
        "guard": {"on": ["nan"]},
        "scaling": {"rule": "linear", "by": "world_size", "base": 1},
    }
    assert api.put("/v1/runs/e", json=spec).status_code == 201
    for step in (10, 20):
        r = api.post("/v1/runs/e/observations", json={"step": step, "value": 1.0, "world_size": 2})
        assert r.status_code == 200 and r.json()["lrs"] == [0.2], r.text
    checkpoint(api, "e", 20, "c20")
    assert checkpoint(api, "e", 20, "c20", status=200)["decision"]["scale"] == 2.0
    r = api.post("/v1/runs/e/resize", json={"step": 25, "world_size": 4})
    assert r.json()["lrs"] == [0.4], r.text
    rollback = decided(api, "e", 30, math.nan)
    assert rollback["action"] == "rollback" and rollback["lrs"] == [0.2]  # 0.1 x 0.5 x 4
    run = get_run(api, "e")
    # back at step 20: the size of then (2), the cut kept
    assert run["scale"] == {"size": 2, "factor": 2.0, "step": 10}
    assert run["lrs"] == [0.1] and run["last_step"] == 20
    assert verify(api, "e")["ok"] is True
