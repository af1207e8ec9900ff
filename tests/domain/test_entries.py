"""One builder an entry kind: what the service writes, verify builds again and compares as bytes.

A log of every kind (decisions, a scale entry, a rewind, aggregated decisions) is exported and
checked offline; then entries are altered so that their content parses the same or their hash
still matches their bytes, which only a comparison of the rebuilt bytes can refuse.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from lrpilot import entries
from lrpilot.audit import verify
from lrpilot.audit.verify import BundleCheck, check_bundle
from lrpilot.entries import Kind
from tests.helpers import canonical, rechained, sealed

_HASH = re.compile(r',"hash":"([0-9a-f]{64})"')


def exported(api: TestClient) -> list[str]:
    """A run whose log holds every entry kind the service writes today."""
    spec = {
        "policy": {"name": "plateau", "version": 1, "params": {"patience": 1}},
        "base_lrs": [0.1, 0.02],
        "metric": "val_loss",
        "scaling": {"rule": "linear", "by": "world_size", "base": 2},
    }
    assert api.put("/v1/runs/kinds", json=spec).status_code == 201
    values = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98]
    for i, value in enumerate(values, start=1):
        body = {"step": 10 * i, "value": value, "world_size": 2 if i < 4 else 4}
        body["client"] = {"host": "gpu-1", "rank": 0}
        assert api.post("/v1/runs/kinds/observations", json=body).status_code == 200
    rewound = api.post("/v1/runs/kinds/rewind", json={"to_step": 30, "client": {"host": "ops"}})
    assert rewound.json()["rewound"]
    for step, value in ((40, "NaN"), (50, 0.5)):
        assert api.post("/v1/runs/kinds/observations", json={"step": step, "value": value})
    return api.get("/v1/runs/kinds/export").text.splitlines()


def checked(lines: Iterable[str]) -> BundleCheck:
    raw = [line.encode() + b"\n" for line in lines]
    return check_bundle(lambda: iter(raw))


def rehashed(line: str) -> str:
    """``line`` with its hash recomputed over its own bytes, whatever form they have: what
    someone who can write the log can do to any edit."""
    found = _HASH.search(line)
    assert found is not None
    without = line[: found.start()] + line[found.end() :]
    digest = hashlib.sha256(without.encode()).hexdigest()
    return line[: found.start()] + f',"hash":"{digest}"' + line[found.end() :]


def with_trailer(lines: list[str]) -> list[str]:
    """The bundle's trailer made to match its (last) entries again."""
    found = _HASH.search(lines[-2])
    head = found[1] if found else ""
    header_hash = hashlib.sha256(lines[0].encode()).hexdigest()
    end = {"count": len(lines) - 2, "head_hash": head, "header_hash": header_hash}
    return [*lines[:-1], canonical({"end": end})]


def test_the_exported_log_holds_every_kind_and_verifies_byte_for_byte(api: TestClient) -> None:
    lines = exported(api)
    kinds = {entries.kind_of(json.loads(line)["action"]) for line in lines[1:-1]}
    assert kinds == {Kind.DECISION, Kind.SCALE, Kind.REWIND}
    result = checked(lines)
    assert result.ok, result.report.mismatch
    assert result.report.rewinds == 1 and result.report.count == len(lines) - 2


def test_an_entry_rebuilt_through_the_builder_is_the_stored_text(api: TestClient) -> None:
    """The decide path's builder, called with what a stored decision says was seen, writes that
    decision's very bytes (the verify path does exactly this for every entry)."""
    lines = exported(api)
    doc = json.loads(lines[2])  # the second decision, scaled by nothing yet
    run = json.loads(lines[0])["run"]
    chain = entries.Chain(
        doc["run_id"], doc["policy"], run["config_hash"], doc["seq"] - 1, doc["prev_hash"]
    )
    at = entries.Stamp(chain, doc["step"], doc["created_at"], entries.Asker(doc["client"]))
    draft = entries.decision(
        at,
        doc["value"],
        action=doc["action"],
        reason=doc["reason"],
        lrs=doc["lrs"],
        previous_lrs=doc["previous_lrs"],
        state=doc["state"],
    )
    assert draft.seal().body == lines[2]


def test_a_duplicated_member_is_refused_though_its_hash_matches_its_bytes(
    api: TestClient,
) -> None:
    """Bytes the service never wrote are refused even where they parse to the same entry and
    their hash matches them: a member written twice (what a reader of the served bytes
    believes then depends on its parser)."""
    lines = exported(api)
    last = lines[-2]
    value = json.dumps(json.loads(last)["value"])
    doubled = last[:-1] + f',"value":{value}}}'  # the same value again: it parses the same
    assert json.loads(doubled) == json.loads(last)
    edited = with_trailer([*lines[:-2], rehashed(doubled), lines[-1]])
    result = checked(edited)
    assert not result.ok
    assert result.report.mismatch is not None and result.report.mismatch.seq == len(lines) - 2


def test_a_member_the_service_never_writes_is_refused_by_name(api: TestClient) -> None:
    lines = exported(api)
    doc = json.loads(lines[3])
    doc["note"] = "approved"
    edited = rechained([*lines[:3], sealed(doc), *lines[4:]])
    result = checked(edited)
    assert not result.ok and result.report.mismatch is not None
    assert result.report.mismatch.seq == doc["seq"]
    assert "note" in str(result.report.mismatch)


def test_a_reworded_reason_rechained_is_refused_by_name(api: TestClient) -> None:
    """Every kind's reason is rebuilt: a reworded one is refused even with the chain recomputed
    after it (what whoever can write the file can do)."""
    lines = exported(api)
    for number, line in enumerate(lines[1:-1], start=1):
        doc = json.loads(line)
        doc["reason"] += " (approved by ops)"
        edited = rechained([*lines[:number], sealed(doc), *lines[number + 1 :]])
        result = checked(edited)
        mismatch = result.report.mismatch
        assert not result.ok and mismatch is not None, doc["action"]
        assert mismatch.seq == doc["seq"] and "reason" in str(mismatch), doc["action"]


def relinked(lines: list[str], index: int, edited: str) -> list[str]:
    """The bundle with line ``index`` replaced by ``edited`` (its hash recomputed over its own
    bytes, if it still has one) and every later entry linked to it again, their bytes otherwise
    as they were."""
    out, line = lines[:index], edited
    for original, after in zip(lines[index:-1], [*lines[index + 1 : -1], ""], strict=True):
        line = rehashed(line) if _HASH.search(line) else line
        out.append(line)
        was, now = _HASH.search(original), _HASH.search(line)
        assert was is not None
        line = after.replace(
            was[0][1:].replace("hash", "prev_hash", 1), f'"prev_hash":"{now[1] if now else ""}"'
        )
    return with_trailer([*out, lines[-1]])


def test_reading_a_decision_off_its_bytes_never_changes_a_verdict(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verify reads a plain decision's inputs off its bytes instead of parsing it (the rebuilt
    entry must be those bytes anyway). Edited anywhere, with the hashes recomputed, every such
    line gets the verdict the parsing path gives it, at the same entry, and the same words
    unless the bytes are not canonical JSON."""
    lines = exported(api)
    plain = [
        i for i, line in enumerate(lines[1:-1], start=1) if verify._plain_decision(line) is not None
    ]
    assert len(plain) >= 6  # with and without a client, scaled, NaN

    def verdict(bundle: list[str], reading: bool) -> tuple[bool, int | None, str]:
        with monkeypatch.context() as patch:
            if not reading:
                patch.setattr(verify, "_plain_decision", lambda text: None)
            report = checked(bundle).report
        found = report.mismatch
        return report.ok, found.seq if found else None, found.what if found else ""

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(
        index=st.sampled_from(plain),
        at=st.floats(0, 1),
        cut=st.integers(0, 3),
        put=st.text(alphabet='"{}[],:\\0123456789.eE-+ NaInfityhlodrucsp_', max_size=4),
    )
    def edited_anywhere(index: int, at: float, cut: int, put: str) -> None:
        line = lines[index]
        pos = int(at * len(line))
        bundle = relinked(lines, index, line[:pos] + put + line[pos + cut :])
        read, parsed = verdict(bundle, True), verdict(bundle, False)
        assert read[:2] == parsed[:2]
        assert read[2] in (parsed[2], "the entry is not in its canonical form")

    edited_anywhere()
