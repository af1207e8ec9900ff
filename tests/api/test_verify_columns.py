"""Everything served is covered by verify (issue 14): an edit, made in the database, of any
column that a read serves or filters on fails POST /v1/runs/{id}/verify, naming the seq (or the
run's column). The decision body is hashed; these are the columns beside it: a decision's step,
action, seq, hash and superseded flag, and the run's counters (last_seq, last_step, reductions,
head_hash, state, lrs).

The real app (TestClient) on real databases, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import (
    body_of,
    create,
    feed,
    get_run,
    log,
    set_decision,
    sql,
    verify,
)
from tests.helpers import canonical, plateau_stream


def refused(api: TestClient, run_id: str) -> dict:
    report = verify(api, run_id)
    assert report["ok"] is False, report
    return dict(report["mismatch"])


def fed(api: TestClient, run_id: str, n: int = 15) -> None:
    create(api, run_id)
    feed(api, run_id, plateau_stream(n))  # steps 10, 20, ... 10 n
    assert verify(api, run_id)["ok"] is True


def test_an_edited_step_column_fails_verify_at_its_seq(api: TestClient, database_url: str) -> None:
    fed(api, "step")
    before = api.get("/v1/runs/step/lr", params={"step": 72}).json()
    set_decision(database_url, "step", 7, step=75)  # seq 7 decided step 70
    # what the attack changes: GET lr at step 72 now serves seq 6's decision
    assert api.get("/v1/runs/step/lr", params={"step": 72}).json() != before
    mismatch = refused(api, "step")
    assert mismatch["seq"] == 7, mismatch
    assert "step" in mismatch["message"], mismatch


def test_an_edited_action_column_fails_verify_at_its_seq(
    api: TestClient, database_url: str
) -> None:
    fed(api, "action")
    assert not log(api, "action", action="stop")
    set_decision(database_url, "action", 9, action="stop")
    assert [d["seq"] for d in log(api, "action", action="stop")] == [9]  # the filter serves it
    mismatch = refused(api, "action")
    assert mismatch["seq"] == 9, mismatch
    assert "action" in mismatch["message"], mismatch


def test_an_edited_hash_column_fails_verify_at_its_seq(api: TestClient, database_url: str) -> None:
    fed(api, "hashcol")
    set_decision(database_url, "hashcol", 4, hash="ab" * 32)
    mismatch = refused(api, "hashcol")
    assert mismatch["seq"] == 4, mismatch
    assert "hash" in mismatch["message"], mismatch


def test_a_row_beyond_the_runs_last_seq_fails_verify(api: TestClient, database_url: str) -> None:
    """A decision row the run's head does not count (a copy of the last one, one seq on) is
    served by the decision list: verify must read it too."""
    fed(api, "extra")
    body = body_of(database_url, "extra", 15)
    sql(
        database_url,
        "INSERT INTO decisions (project, run_id, seq, step, action, superseded, hash, body) "
        "VALUES ('default', 'extra', 16, 160, 'hold', :f, :h, :b)",
        f=False,
        h=json.loads(body)["hash"],
        b=body,
    )
    assert len(log(api, "extra")) == 16
    mismatch = refused(api, "extra")
    assert mismatch["seq"] == 16, mismatch


def test_a_run_row_moved_back_one_decision_fails_verify(api: TestClient, database_url: str) -> None:
    """The run's head set, consistently, to where it stood one decision earlier: the last
    decision is still in the table, so the log does not end where the run says."""
    fed(api, "moved")
    doc = json.loads(body_of(database_url, "moved", 14))
    sql(
        database_url,
        "UPDATE runs SET last_seq = 14, last_step = :step, head_hash = :h, state = :state, "
        "lrs = :lrs WHERE run_id = 'moved'",
        step=doc["step"],
        h=doc["hash"],
        state=canonical(doc["state"]),
        lrs=canonical(doc["lrs"]),
    )
    assert get_run(api, "moved")["last_seq"] == 14
    mismatch = refused(api, "moved")
    assert mismatch["seq"] == 15, mismatch


@pytest.mark.parametrize("column", ["last_seq", "reductions"])
def test_an_edited_run_counter_fails_verify_naming_it(
    api: TestClient, database_url: str, column: str
) -> None:
    fed(api, "counter", 40)
    run = get_run(api, "counter")
    assert sql(database_url, f"UPDATE runs SET {column} = {column} + 1 WHERE run_id = 'counter'")
    served = get_run(api, "counter")
    assert served != run  # the counts served changed
    mismatch = refused(api, "counter")
    assert column in mismatch["message"], mismatch


def test_an_edited_label_row_fails_verify(api: TestClient, database_url: str) -> None:
    """GET /v1/runs?label= filters on the run_labels rows: they must be the run's labels."""
    create(api, "labelled", labels={"team": "a"})
    feed(api, "labelled", plateau_stream(5))
    assert verify(api, "labelled")["ok"] is True
    sql(database_url, "UPDATE run_labels SET value = 'b' WHERE run_id = 'labelled'")
    assert [r["run_id"] for r in api.get("/v1/runs", params={"label": "team:b"}).json()["items"]]
    mismatch = refused(api, "labelled")
    assert "label" in mismatch["message"], mismatch


RUN_EDITS = {
    # column: (its new value, what verify's message says)
    "metric": ("val_acc", "not the one its log began with"),
    "labels": ('{"team":"b"}', "not the one its log began with"),
    "created_at": ("2020-01-01T00:00:00.000000Z", "not the one its log began with"),
    "aggregate": ('{"on_timeout":"refuse","timeout_s":5.0}', "not the one its log began with"),
    "base_lrs": ("[0.2]", "config_hash"),  # pinned by the config_hash every entry repeats
}


@pytest.mark.parametrize("column", list(RUN_EDITS))
@pytest.mark.parametrize("decided", [0, 5], ids=["empty", "decided"])
def test_an_edited_run_field_fails_verify(
    api: TestClient, database_url: str, column: str, decided: int
) -> None:
    """The run itself is in the chain: its first entry links to the hash of the run as created
    (before any entry, its head is that hash). An edit of a field GET /v1/runs/{id} serves, with
    or without entries, fails verify, saying the run is not the one its log began with."""
    run_id = f"{column}-{decided}"
    create(api, run_id, labels={"team": "a"})
    feed(api, run_id, plateau_stream(decided))
    report = verify(api, run_id)
    assert report["ok"] is True and "notes" not in report, report
    value, message = RUN_EDITS[column]
    before = get_run(api, run_id)
    sql(database_url, f"UPDATE runs SET {column} = :v WHERE run_id = :r", v=value, r=run_id)
    sql(database_url, "UPDATE run_labels SET value = 'b' WHERE run_id = :r", r=run_id)
    assert get_run(api, run_id).get(column) != before.get(column)  # the edit is served
    mismatch = refused(api, run_id)
    assert message in mismatch["message"], mismatch


@pytest.mark.parametrize(
    ("column", "value"), [("last_action", "'stop'"), ("last_at", "'2099-01-01T00:00:00.000000Z'")]
)
def test_an_edited_run_list_column_fails_verify_naming_it(
    api: TestClient, database_url: str, column: str, value: str
) -> None:
    """GET /v1/runs filters on last_action (state) and sorts on last_at (activity)."""
    fed(api, "listed", 5)
    assert sql(database_url, f"UPDATE runs SET {column} = {value} WHERE run_id = 'listed'")
    mismatch = refused(api, "listed")
    assert column in mismatch["message"], mismatch
