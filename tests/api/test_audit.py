"""Audit (project issue 6): export and import across databases, tampering refused at the right
line (by import and by offline ``lrpilot verify``), verify against edits made in the database,
and rewinds. The decision log's queries and POST /v1/simulate have their own files.

Every test runs the real app (TestClient) on real databases, SQLite and PostgreSQL; offline
checks run the real ``lrpilot`` command in this process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.api.audit_calls import (
    CLIENT,
    ESSENCE,
    Stream,
    at,
    body_of,
    create,
    edit_reason,
    edit_value,
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
    set_decision,
    sql,
    verify,
)
from tests.conftest import app_client, empty_database
from tests.helpers import bundle_text, canonical, lrpilot_cli, one_line, plateau_stream, rechained


@contextmanager
def app_on(backend: str, tmp_path: Path, raise_errors: bool = True) -> Iterator[TestClient]:
    """The app on a fresh, migrated database of ``backend`` (its own file for SQLite); with
    ``raise_errors`` False, an exception in the app is the 500 a client would get."""
    where = tmp_path / backend
    where.mkdir(parents=True, exist_ok=True)
    with app_client(empty_database(backend, where), raise_server_exceptions=raise_errors) as api:
        yield api


# -- export, then import into a fresh database --------------------------------------------


def build_run(api: TestClient, run_id: str, shape: str) -> Stream:
    """A run of some 40 observations (one NaN, a client on some); "rewound" adds two rewinds
    and a new branch. Returns the live branch's stream (what a fresh run would be fed)."""
    create(api, run_id, base_lrs=[0.1, 0.01], labels={"team": "vision", "exp": "a/b-1"})
    stream = plateau_stream(36)
    stream[20] = (stream[20][0], math.nan)
    feed(api, run_id, stream[:10], CLIENT)
    feed(api, run_id, stream[10:])
    if shape == "plain":
        return stream
    rewind(api, run_id, 300)
    branch = plateau_stream(6, seed=7, start_step=310)
    feed(api, run_id, branch)
    rewind(api, run_id, 150)
    tail = plateau_stream(10, seed=9, start_step=160)
    feed(api, run_id, tail)
    return stream[:15] + tail


@pytest.mark.parametrize("shape", ["plain", "rewound"])
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("sqlite", "sqlite"),
        pytest.param("sqlite", "postgres", marks=pytest.mark.postgres),
        pytest.param("postgres", "sqlite", marks=pytest.mark.postgres),
    ],
)
def test_export_import_into_a_fresh_database_verifies_and_continues_alike(
    tmp_path: Path, source: str, target: str, shape: str
) -> None:
    with app_on(source, tmp_path / "src") as src, app_on(target, tmp_path / "dst") as dst:
        build_run(src, "moved", shape)
        bundle = export(src, "moved")
        lines = bundle.splitlines()
        assert bundle.endswith("\n") and "" not in lines
        header, decisions, trailer = json.loads(lines[0]), lines[1:-1], json.loads(lines[-1])
        run = get_run(src, "moved")

        # header: what the run is; one line a decision, byte for byte as GET /decisions serves
        # it (both branches of a rewound run); trailer: count and head
        assert header["bundle"] == "lrpilot/1"
        assert header["run"]["run_id"] == "moved"
        assert header["run"]["config_hash"] == run["config_hash"]
        assert header["run"]["policy"] == run["policy"]
        assert decisions == log_raw(src, "moved")
        assert decisions == log_raw(src, "moved", limit=7)
        header_hash = hashlib.sha256(lines[0].encode()).hexdigest()  # no decision covers it
        assert trailer == {
            "end": {
                "count": run["last_seq"],
                "head_hash": run["head_hash"],
                "header_hash": header_hash,
            }
        }
        assert len(decisions) == run["last_seq"] == run["counts"]["decisions"]

        r = import_(dst, bundle)
        assert r.status_code == 201, r.text
        imported = get_run(dst, "moved")
        assert imported == run  # the run as it stood: head, lrs, last step, counts, status
        assert log_raw(dst, "moved") == decisions
        assert log_raw(dst, "moved", superseded="true") == log_raw(src, "moved", superseded="true")
        assert export(dst, "moved") == bundle

        report = verify(dst, "moved")
        assert report["ok"] is True, report
        assert report["count"] == len(decisions)
        assert report["head_hash"] == run["head_hash"]
        assert report == verify(src, "moved")

        # the identical bundle again: 200, the run unchanged
        again = import_(dst, bundle)
        assert again.status_code == 200, again.text
        assert again.json() == imported
        assert get_run(dst, "moved") == imported

        # both continue exactly alike (created_at is inside the hash: hashes differ)
        more = plateau_stream(12, seed=5, start_step=1000)
        a, b = feed(src, "moved", more), feed(dst, "moved", more)
        keys = ("seq", *ESSENCE)
        assert essence(a, keys) == essence(b, keys)
        assert verify(dst, "moved")["ok"] is True

        # now another log under the same run_id: 409, and nothing of it stored
        moved_on = get_run(dst, "moved")
        for other in (bundle, export(src, "moved")):  # a prefix; the source's continuation
            r = import_(dst, other)
            assert r.status_code == 409, r.text
            assert get_run(dst, "moved") == moved_on
        assert verify(dst, "moved")["ok"] is True


# -- tampering: refused at the right line, by import and by offline verify -----------------

N = 40  # decisions in the bundle: seq k is on line k + 1, the trailer on line N + 2
TARGET = 12  # the decision that is edited: line 13


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle of N decisions (a NaN among them, a client on some), made once."""
    with app_on("sqlite", tmp_path_factory.mktemp("pristine")) as api:
        create(api, "audited")
        stream = plateau_stream(N)
        stream[25] = (stream[25][0], math.nan)
        feed(api, "audited", stream[:5], CLIENT)
        feed(api, "audited", stream[5:])
        return export(api, "audited")


# name -> (the bundle's lines -> tampered lines, the line that must be named)
TAMPERINGS: dict[str, tuple[Any, int]] = {
    "edited_value": (lambda ls: at(ls, TARGET, edit_value), TARGET + 1),
    "edited_reason": (lambda ls: at(ls, TARGET, edit_reason), TARGET + 1),
    "deleted_line": (lambda ls: ls[:TARGET] + ls[TARGET + 1 :], TARGET + 1),
    "swapped_lines": (
        lambda ls: [*ls[:TARGET], ls[TARGET + 1], ls[TARGET], *ls[TARGET + 2 :]],
        TARGET + 1,
    ),
    "duplicated_line": (lambda ls: ls[: TARGET + 1] + ls[TARGET:], TARGET + 2),
    "truncated_mid_line": (
        lambda ls: [*ls[:TARGET], ls[TARGET][: len(ls[TARGET]) // 2]],
        TARGET + 1,
    ),
    "trailer_count": (
        lambda ls: [*ls[:-1], ls[-1].replace(f'"count":{N}', f'"count":{N + 1}')],
        N + 2,
    ),
    "trailer_head": (
        lambda ls: [*ls[:-1], ls[-1].replace('"head_hash":"', '"head_hash":"0')[:-3] + '"}}'],
        N + 2,
    ),
    "line_after_trailer": (lambda ls: [*ls, ls[-1]], N + 3),
    # every hash recomputed after the edit: the chain is consistent, the replay is not
    "rechained_edit": (lambda ls: rechained(at(ls, TARGET, edit_value)), TARGET + 1),
    "rechained_edited_reason": (lambda ls: rechained(at(ls, TARGET, edit_reason)), TARGET + 1),
}


def test_the_pristine_bundle_checks(pristine: str, tmp_path: Path) -> None:
    """The control for the tamperings: the bundle as exported passes, and ``rechained`` is an
    exact re-implementation of the chain (it leaves an untouched bundle byte for byte)."""
    lines = pristine.splitlines()
    assert len(lines) == N + 2
    assert rechained(lines) == lines
    code, out = offline_verify(tmp_path, pristine)
    assert code == 0, out
    assert f"OK {N} decisions" in out


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_bundle_is_refused_by_import_at_its_line(
    api: TestClient, pristine: str, name: str
) -> None:
    tamper, line = TAMPERINGS[name]
    r = import_(api, bundle_text(tamper(pristine.splitlines())))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", line], detail
    assert f"line {line}" in detail[0]["msg"]
    # nothing of it was stored
    assert api.get("/v1/runs/audited").status_code == 404
    assert api.get("/v1/runs/audited/decisions").status_code == 404
    assert api.get("/v1/runs").json()["items"] == []


def test_truncated_bundle_without_trailer_is_refused(api: TestClient, pristine: str) -> None:
    lines = pristine.splitlines()[:-1]  # every decision, no trailer
    r = import_(api, bundle_text(lines))
    assert r.status_code == 422, r.text
    item = r.json()["detail"][0]
    # the line where the bundle ends (its last line) or where the trailer should have been
    assert item["loc"] in (["body", N + 1], ["body", N + 2]), item
    assert "trailer" in item["msg"] or "truncated" in item["msg"]
    assert api.get("/v1/runs/audited").status_code == 404


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_bundle_fails_offline_verify_naming_its_line(
    pristine: str, tmp_path: Path, name: str
) -> None:
    tamper, line = TAMPERINGS[name]
    text = bundle_text(tamper(pristine.splitlines()))
    code, out = offline_verify(tmp_path, text)
    assert code == 1, out
    assert "FAILED" in out and f"line {line}" in out, out
    code, out = offline_verify(tmp_path, text, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["mismatch"]["line"] == line, report


def test_truncated_bundle_fails_offline_verify(pristine: str, tmp_path: Path) -> None:
    code, out = offline_verify(tmp_path, bundle_text(pristine.splitlines()[:-1]))
    assert code == 1, out
    assert "truncated" in out or "trailer" in out, out
    assert f"line {N + 1}" in out or f"line {N + 2}" in out, out


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"patience":2', '"patience":3'),  # the policy's params
        ('"base_lrs":[0.1]', '"base_lrs":[0.2]'),
        ('"config_hash":"', '"config_hash":"0'),
    ],
    ids=["params", "base_lrs", "config_hash"],
)
def test_an_edited_header_is_refused_at_line_1(
    api: TestClient, pristine: str, tmp_path: Path, old: str, new: str
) -> None:
    assert pristine.count(old) >= 1
    lines = pristine.splitlines()
    lines[0] = lines[0].replace(old, new, 1)
    text = bundle_text(lines)
    r = import_(api, text)
    assert r.status_code == 422, r.text
    assert api.get("/v1/runs/audited").status_code == 404
    code, out = offline_verify(tmp_path, text)
    assert code == 1, out
    assert r.json()["detail"][0]["loc"] == ["body", 1], r.text
    assert "line 1" in out, out


def hostile(lines: list[str], index: int, changes: dict[str, Any]) -> list[str]:
    """Line ``index`` (0-based) with ``changes``, every hash recomputed: only the content is
    wrong."""
    out = list(lines)
    doc = json.loads(out[index])
    doc.update(changes)
    out[index] = json.dumps(doc)
    return rechained(out)


@pytest.fixture(scope="module")
def ends_high(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bundle whose last decision is at the highest step the API takes (2**62) and does not
    improve on the best (its step is in no state and no reason)."""
    with app_on("sqlite", tmp_path_factory.mktemp("high")) as api:
        create(api, "audited")
        feed(api, "audited", [*plateau_stream(10), (2**62, 5.0)])
        return export(api, "audited")


HOSTILE = ["huge_int_value", "step_above_max", "float_seq"]


def hostile_bundle(case: str, pristine: str, ends_high: str) -> tuple[str, int]:
    """Content that no service writes, with its hashes made right; the line to name."""
    if case == "huge_int_value":  # a JSON integer no float can hold
        return bundle_text(hostile(pristine.splitlines(), 5, {"value": 10**400})), 6
    if case == "step_above_max":  # above the API's MAX_STEP (2**62) and any BIGINT
        high = ends_high.splitlines()
        return bundle_text(hostile(high, len(high) - 2, {"step": 2**70})), len(high) - 1
    assert case == "float_seq"  # seq 5.0: equal to 5 in Python, not an integer in JSON
    return bundle_text(hostile(pristine.splitlines(), 5, {"seq": 5.0})), 6


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("case", HOSTILE)
def test_a_bundle_the_service_could_not_have_written_is_refused_by_import(
    pristine: str, ends_high: str, tmp_path: Path, backend: str, case: str
) -> None:
    """A 422 naming the line: no 500, no 503 saying the database is away, nothing stored."""
    text, line = hostile_bundle(case, pristine, ends_high)
    with app_on(backend, tmp_path, raise_errors=False) as api:
        r = import_(api, text)
        stored = api.get("/v1/runs/audited").status_code
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", line], r.text
        assert stored == 404  # nothing of it, whatever the answer


@pytest.mark.parametrize("case", HOSTILE)
def test_a_bundle_the_service_could_not_have_written_fails_offline_verify(
    pristine: str, ends_high: str, tmp_path: Path, case: str
) -> None:
    """Exit 1 naming the line, not a traceback and not OK."""
    text, line = hostile_bundle(case, pristine, ends_high)
    path = tmp_path / "hostile.ndjson"
    path.write_text(text)
    result = lrpilot_cli("verify", str(path), catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"lrpilot verify crashed: {result.exception!r}"
    )
    assert result.exit_code == 1, result.output
    assert f"line {line}" in one_line(result.output), result.output


def test_head_catches_a_rewritten_or_shortened_log(pristine: str, tmp_path: Path) -> None:
    lines = pristine.splitlines()
    head = json.loads(lines[-1])["end"]["head_hash"]
    code, out = offline_verify(tmp_path, pristine, "--head", head)
    assert code == 0, out
    # every hash recomputed after an edit: refused, and the recorded head is not its head
    code, out = offline_verify(tmp_path, bundle_text(rechained(at(lines, TARGET, edit_value))))
    assert code == 1, out
    code, out = offline_verify(
        tmp_path, bundle_text(rechained(at(lines, TARGET, edit_value))), "--head", head
    )
    assert code == 1, out
    # the last decisions cut off and the trailer written again: a consistent log that replays,
    # which only the recorded head can tell from the real one
    prefix = bundle_text(rechained([*lines[:-6], lines[-1]]))
    code, out = offline_verify(tmp_path, prefix)
    assert code == 0, out
    code, out = offline_verify(tmp_path, prefix, "--head", head)
    assert code == 1, out
    assert "head" in out


def test_online_verify_with_the_recorded_head(api: TestClient) -> None:
    create(api, "headed")
    feed(api, "headed", plateau_stream(10))
    head = get_run(api, "headed")["head_hash"]
    assert verify(api, "headed", head)["ok"] is True
    feed(api, "headed", plateau_stream(2, start_step=500))
    report = verify(api, "headed", head)  # the log no longer ends at the recorded head
    assert report["ok"] is False, report
    assert api.post("/v1/runs/headed/verify", json={"head": "nothex"}).status_code == 422
    assert api.post("/v1/runs/nosuch/verify").status_code == 404


# -- verify catches edits made in the database ------------------------------------------------


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


# -- rewind -------------------------------------------------------------------------------


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
