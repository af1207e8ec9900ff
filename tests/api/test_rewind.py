"""Rewinds (project issue 6): a rewound run continues as a fresh run would, its entries verify
online and offline, and an edited rewind entry is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import (
    CLIENT,
    at,
    create,
    essence,
    export,
    feed,
    fresh_run_equals,
    get_run,
    import_,
    live,
    log,
    log_raw,
    observe,
    offline_verify,
    rewind,
    verify,
)
from tests.helpers import bundle_text, plateau_stream, rechained


def test_rewind_then_continue_equals_a_fresh_run(api: TestClient) -> None:
    create(api, "resumed")
    first = plateau_stream(30)  # steps 10..300
    before = feed(api, "resumed", first)
    head = get_run(api, "resumed")["head_hash"]
    old_tail = log_raw(api, "resumed")[15:]  # seqs 16..30, steps 160..300

    out = rewind(api, "resumed", 150, CLIENT)
    assert out["rewound"] is True and out["to_step"] == 150
    assert out["lrs"] == before[14]["lrs"]
    entry = out["decision"]
    assert entry["action"] == "rewind"
    assert entry["client"] == CLIENT
    assert entry["rewind"] == {"to_step": 150, "restores_seq": 15, "superseded": 15}
    assert (entry["seq"], entry["step"], entry["prev_hash"]) == (31, 150, head)
    assert entry["state"] == before[14]["state"]
    assert entry["lrs"] == before[14]["lrs"] and entry["previous_lrs"] == before[-1]["lrs"]
    run = get_run(api, "resumed")
    assert run["lrs"] == before[14]["lrs"]
    assert run["head_hash"] == entry["hash"]
    assert log(api, "resumed")[-1] == entry  # the rewind is an entry of the chain

    # a retry of a step at or below to_step that the live branch decided: the same decision
    raw = log_raw(api, "resumed")
    r = observe(api, "resumed", 100, first[9][1])
    assert r.status_code == 200 and r.text == raw[9], r.text
    r = observe(api, "resumed", 150, first[14][1])  # the decision, not the rewind entry
    assert r.status_code == 200 and r.text == raw[14], r.text
    assert observe(api, "resumed", 100, first[9][1] + 1.0).status_code == 409

    branch = plateau_stream(25, seed=3, start_step=160)  # steps 160..400, other values
    new = feed(api, "resumed", branch)
    assert [d["seq"] for d in new] == list(range(32, 57))
    assert new[0]["previous_lrs"] == before[14]["lrs"]
    fresh_run_equals(api, "resumed", "fresh", first[:15] + branch)

    # the superseded decisions are kept, untouched
    assert log_raw(api, "resumed", superseded="true") == old_tail
    # retries on the new branch answer the new branch's decision; the old value is refused
    r = observe(api, "resumed", 200, branch[4][1])
    assert r.status_code == 200 and r.json() == new[4]
    assert observe(api, "resumed", 200, first[19][1]).status_code == 409
    r = observe(api, "resumed", 100, first[9][1])
    assert r.status_code == 200 and r.text == raw[9]

    # verify and export cover both branches
    report = verify(api, "resumed")
    assert report["ok"] is True, report
    assert (report["count"], report["superseded"], report["rewinds"]) == (56, 15, 1)
    lines = export(api, "resumed").splitlines()
    assert len(lines) == 56 + 2
    assert lines[1:-1] == log_raw(api, "resumed")
    assert json.loads(lines[-1])["end"]["count"] == 56


def test_rewind_to_or_past_the_last_step_changes_nothing(api: TestClient) -> None:
    create(api, "still")
    feed(api, "still", plateau_stream(10))  # last step 100
    run = get_run(api, "still")
    for to_step in (100, 101, 10**9):
        out = rewind(api, "still", to_step)
        assert out["rewound"] is False, out
        assert out["decision"] is None
        assert out["lrs"] == run["lrs"]
        assert get_run(api, "still") == run
    assert len(log(api, "still")) == 10


def test_rewind_of_an_unknown_run_is_404(api: TestClient) -> None:
    r = api.post("/v1/runs/nosuch/rewind", json={"to_step": 3})
    assert r.status_code == 404, r.text
    assert api.get("/v1/runs/nosuch").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"to_step": -1},
        {"to_step": "3"},
        {"to_step": 3, "client": {"host": "a\u0000b"}},
        {"to_step": 3, "client": {"pid": 1}},
        {"to_step": 3, "extra": 1},
    ],
)
def test_rewind_refuses_a_bad_body(api: TestClient, body: dict) -> None:
    create(api, "strict")
    feed(api, "strict", plateau_stream(5))
    r = api.post("/v1/runs/strict/rewind", json=body)
    assert r.status_code == 422, r.text
    assert len(log(api, "strict")) == 5


def test_rewind_before_the_first_decision_restores_the_initial_lrs(api: TestClient) -> None:
    create(api, "restart", base_lrs=[0.1, 0.01])
    first = plateau_stream(20)  # steps 10..200
    feed(api, "restart", first)
    assert get_run(api, "restart")["lrs"] != [0.1, 0.01]
    out = rewind(api, "restart", 5)
    assert out["rewound"] is True
    assert out["lrs"] == [0.1, 0.01]
    assert out["decision"]["rewind"] == {"to_step": 5, "restores_seq": None, "superseded": 20}
    assert get_run(api, "restart")["lrs"] == [0.1, 0.01]
    lr = api.get("/v1/runs/restart/lr", params={"step": 50}).json()
    assert lr["lrs"] == [0.1, 0.01], lr
    again = plateau_stream(15, seed=4)
    feed(api, "restart", again)
    create(api, "restart-fresh", base_lrs=[0.1, 0.01])
    feed(api, "restart-fresh", again)
    assert essence(live(api, "restart")) == essence(log(api, "restart-fresh"))
    report = verify(api, "restart")
    assert report["ok"] is True and report["superseded"] == 20, report


def test_two_rewinds_in_a_row_verify_online_and_offline(api: TestClient, tmp_path: Path) -> None:
    create(api, "twice")
    first = plateau_stream(30)  # steps 10..300
    feed(api, "twice", first)
    one = rewind(api, "twice", 250)
    two = rewind(api, "twice", 120)  # below the first rewind: supersedes 130..250 too
    assert one["decision"]["rewind"] == {"to_step": 250, "restores_seq": 25, "superseded": 5}
    assert two["lrs"] == log(api, "twice")[11]["lrs"]
    # the second supersedes steps 130..250 of the first branch (seqs 13..25) and, with them,
    # the first rewind's entry (seq 31, at step 250): it is of the branch it abandons
    superseded = {d["seq"] for d in log(api, "twice", superseded="true")}
    assert set(range(13, 31)) <= superseded <= set(range(13, 32)), sorted(superseded)
    assert two["decision"]["rewind"] == {
        "to_step": 120,
        "restores_seq": 12,
        "superseded": len(superseded) - 5,
    }
    report = verify(api, "twice")
    assert report["ok"] is True, report
    assert (report["count"], report["superseded"], report["rewinds"]) == (32, len(superseded), 2)
    branch = plateau_stream(20, seed=6, start_step=130)
    feed(api, "twice", branch)
    fresh_run_equals(api, "twice", "twice-fresh", first[:12] + branch)
    # and a third, on the new branch, to a step above the second
    rewind(api, "twice", 200)
    more = plateau_stream(8, seed=8, start_step=210)
    feed(api, "twice", more)
    report = verify(api, "twice")
    assert report["ok"] is True, report
    assert report["rewinds"] == 3
    live_steps = [d["step"] for d in live(api, "twice")]
    assert live_steps == [s for s, _ in first[:12] + branch[:8] + more]

    bundle = export(api, "twice")
    code, out = offline_verify(tmp_path, bundle)
    assert code == 0, out
    assert f"OK {report['count']} decisions" in out
    assert f"{report['superseded']} superseded by 3 rewinds" in out
    head = get_run(api, "twice")["head_hash"]
    code, out = offline_verify(tmp_path, bundle, "--head", head)
    assert code == 0, out


def test_a_rewound_bundle_with_an_edited_rewind_entry_is_refused(
    api: TestClient, tmp_path: Path
) -> None:
    create(api, "rw")
    feed(api, "rw", plateau_stream(20))
    rewind(api, "rw", 120)
    feed(api, "rw", plateau_stream(5, seed=2, start_step=130))
    lines = export(api, "rw").splitlines()
    assert json.loads(lines[21])["action"] == "rewind"

    def claims_less(line: str) -> str:
        return line.replace('"superseded":8', '"superseded":7')

    tampered = bundle_text(rechained(at(lines, 21, claims_less)))
    code, out = offline_verify(tmp_path, tampered)
    assert code == 1, out
    assert "line 22" in out, out
    r = import_(api, tampered.replace('"run_id":"rw"', '"run_id":"rw2"'))
    assert r.status_code == 422, r.text
