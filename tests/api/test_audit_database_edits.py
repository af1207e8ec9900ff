"""Audit (project issue 6): POST /v1/runs/{id}/verify catches edits made in the database behind
the service's back (decision bodies, rechained hashes, the run row, superseded flags).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.api.audit_calls import at, create, edit_value, export, feed, get_run, rewind, verify
from tests.helpers import canonical, plateau_stream, rechained


def sql(database_url: str, statement: str, **params: Any) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            return int(conn.execute(sa.text(statement), params).rowcount)
    finally:
        engine.dispose()


def body_of(database_url: str, run_id: str, seq: int) -> str:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("SELECT body FROM decisions WHERE run_id = :r AND seq = :s"),
                    {"r": run_id, "s": seq},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def set_decision(database_url: str, run_id: str, seq: int, **columns: Any) -> None:
    """Set ``columns`` of one stored decision, as whoever can write the database does."""
    sets = ", ".join(f"{name} = :{name}" for name in columns)
    where = "run_id = :run_id AND seq = :seq"
    statement = f"UPDATE decisions SET {sets} WHERE {where}"
    assert sql(database_url, statement, run_id=run_id, seq=seq, **columns) == 1


def mismatch_at(api: TestClient, run_id: str) -> int:
    """The seq verify names; it must refuse the run."""
    report = verify(api, run_id)
    assert report["ok"] is False, report
    return int(report["mismatch"]["seq"])


def test_verify_catches_an_edited_decision_body(api: TestClient, database_url: str) -> None:
    create(api, "edited")
    feed(api, "edited", plateau_stream(20))
    assert verify(api, "edited")["ok"] is True
    set_decision(database_url, "edited", 7, body=edit_value(body_of(database_url, "edited", 7)))
    assert mismatch_at(api, "edited") == 7


def test_verify_catches_an_edited_decision_rechained_in_the_database(
    api: TestClient, database_url: str
) -> None:
    """Whoever writes the database recomputes every hash after the edit (and the run's head):
    the chain holds, the replay through the policy does not."""
    create(api, "rewritten")
    feed(api, "rewritten", plateau_stream(12))
    lines = export(api, "rewritten").splitlines()
    redone = rechained(at(lines, 7, edit_value))
    for seq in range(7, 13):
        set_decision(
            database_url, "rewritten", seq, body=redone[seq], hash=json.loads(redone[seq])["hash"]
        )
    sql(
        database_url,
        "UPDATE runs SET head_hash = :h WHERE run_id = 'rewritten'",
        h=json.loads(redone[-1])["end"]["head_hash"],
    )
    assert mismatch_at(api, "rewritten") == 7


@pytest.mark.parametrize("column", ["state", "lrs", "head_hash"])
def test_verify_catches_an_edited_run_row(api: TestClient, database_url: str, column: str) -> None:
    create(api, "row")
    feed(api, "row", plateau_stream(15))
    run = get_run(api, "row")
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        state = conn.execute(sa.text("SELECT state FROM runs WHERE run_id = 'row'")).scalar_one()
    engine.dispose()
    doc = json.loads(state)
    doc["bad_evaluations"] += 1
    edits = {"state": canonical(doc), "lrs": "[0.5]", "head_hash": "ab" * 32}
    assert sql(database_url, f"UPDATE runs SET {column} = :v WHERE run_id = 'row'", v=edits[column])
    report = verify(api, "row")
    assert report["ok"] is False, report
    assert report["mismatch"]["seq"] == run["last_seq"], report
    assert column in report["mismatch"]["message"], report


def test_verify_catches_a_decision_flagged_superseded(api: TestClient, database_url: str) -> None:
    create(api, "flagged")
    feed(api, "flagged", plateau_stream(15))
    set_decision(database_url, "flagged", 9, superseded=True)
    assert mismatch_at(api, "flagged") == 9


def test_verify_catches_a_superseded_decision_flagged_live(
    api: TestClient, database_url: str
) -> None:
    create(api, "unflagged")
    feed(api, "unflagged", plateau_stream(15))
    rewind(api, "unflagged", 100)  # seqs 11..15 superseded
    set_decision(database_url, "unflagged", 12, superseded=False)
    assert mismatch_at(api, "unflagged") == 12


def test_verify_catches_superseded_flags_swapped(api: TestClient, database_url: str) -> None:
    """One live decision flagged superseded and one superseded flagged live: the number of
    flags is right, the flags are not."""
    create(api, "swapped")
    feed(api, "swapped", plateau_stream(15))
    rewind(api, "swapped", 100)  # seqs 11..15 superseded, 1..10 live
    assert verify(api, "swapped")["ok"] is True
    set_decision(database_url, "swapped", 4, superseded=True)
    set_decision(database_url, "swapped", 13, superseded=False)
    assert mismatch_at(api, "swapped") in (4, 13)
