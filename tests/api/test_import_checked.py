"""Imports checked whole (issue 14): every line of a bundle, its header and trailer included,
is checked like the API's own fields (type, length, encoding) by one check that both import
and offline ``lrpilot verify`` run: a byte-order mark, a NUL, a lone surrogate, an over-long
field or line are refused with a message naming the line (a 422 on import, exit 1 offline),
never a 500, and nothing of the bundle is stored.

The real app (TestClient) on SQLite and PostgreSQL; the real ``lrpilot verify`` in process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.audit_calls import create, export, feed, import_, offline_verify, sql
from tests.conftest import app_client
from tests.helpers import bundle_text, plateau_stream, rechained, run_spec


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A valid bundle's lines (run "checked", ten decisions)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pristine') / 'p.db'}"
    with app_client(url) as api:
        create(api, "checked")
        feed(api, "checked", plateau_stream(10))
        return export(api, "checked").splitlines()


def header_with(**run: Any) -> Callable[[list[str]], str]:
    """The bundle with these members of the header's run, every hash recomputed."""

    def edit(lines: list[str]) -> str:
        doc = json.loads(lines[0])
        doc["run"].update(run)
        return bundle_text(rechained([json.dumps(doc), *lines[1:]]))

    return edit


def trailer_with(**end: Any) -> Callable[[list[str]], str]:
    def edit(lines: list[str]) -> str:
        out = rechained(lines)
        doc = json.loads(out[-1])
        doc["end"].update(end)
        return bundle_text([*out[:-1], json.dumps(doc)])

    return edit


def client_with(host: str) -> Callable[[list[str]], str]:
    """Decision 3 declared by a client whose host is ``host``, rechained."""

    def edit(lines: list[str]) -> str:
        doc = json.loads(lines[3])
        doc["client"] = {"host": host}
        out = list(lines)
        out[3] = json.dumps(doc)
        return bundle_text(rechained(out))

    return edit


def raw(edit: Callable[[str], str]) -> Callable[[list[str]], str]:
    return lambda lines: edit(bundle_text(lines))


HOSTILE: dict[str, tuple[Callable[[list[str]], str], int, str]] = {
    # name: (the edit, the line named, a word of the message)
    "bom": (raw(lambda text: "\ufeff" + text), 1, "byte-order mark"),
    "created_at_41": (header_with(created_at="2" * 41), 1, "created_at"),
    "created_at_nul": (header_with(created_at="2026\u0000"), 1, "NUL"),
    "created_at_surrogate": (header_with(created_at="2026\ud800"), 1, "surrogate"),
    "label_surrogate": (header_with(labels={"team": "\udc00"}), 1, "surrogate"),
    "client_nul": (client_with("gpu\u0000"), 4, "NUL"),
    # no hash can be computed over a lone surrogate: the escape is written into the line as is
    "entry_surrogate": (
        lambda lines: bundle_text(
            [*lines[:3], lines[3].replace('"created_at":"', '"created_at":"\\ud83d'), *lines[4:]]
        ),
        4,
        "surrogate",
    ),
    "raw_nul": (lambda lines: bundle_text([lines[0], lines[1] + "\x00", *lines[2:]]), 2, "NUL"),
    "trailer_key_id": (
        trailer_with(signature={"algorithm": "ed25519", "key_id": "\ud800", "value": "x"}),
        12,
        "signature",
    ),
    "trailer_extra": (trailer_with(note="x" * 100_000), 12, "note"),
    "trailer_count_float": (trailer_with(count=10.0), 12, "count"),
    "trailer_header_hash_long": (trailer_with(header_hash="a" * 10_000), 12, "header_hash"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_bundle_is_refused_naming_its_line(
    api: TestClient, pristine: list[str], tmp_path: Path, name: str
) -> None:
    edit, line, word = HOSTILE[name]
    text = edit(pristine)
    r = import_(api, text)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", line], r.text
    assert word.lower() in detail["msg"].lower(), r.text
    assert api.get("/v1/runs/checked").status_code == 404
    code, out = offline_verify(tmp_path, text)
    assert code == 1, out
    assert f"line {line}" in out, out
    assert word.lower() in out.lower(), out


def test_the_pristine_bundle_imports(api: TestClient, pristine: list[str], tmp_path: Path) -> None:
    """The edits above are what is refused: the bundle itself imports and verifies."""
    text = bundle_text(pristine)
    assert import_(api, text).status_code == 201
    assert offline_verify(tmp_path, text)[0] == 0


def test_a_line_longer_than_the_bound_is_refused_naming_it(
    database_url: str, pristine: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRPILOT_MAX_BUNDLE_LINE_BYTES", "4096")
    text = bundle_text([*pristine[:3], "x" * 100_000, *pristine[3:]])
    with app_client(database_url, migrate=False) as api:
        r = import_(api, text)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", 4], r.text
        assert "LRPILOT_MAX_BUNDLE_LINE_BYTES" in r.text, r.text
        assert import_(api, bundle_text(pristine)).status_code == 201  # lines within the bound
    code, out = offline_verify(tmp_path, text)
    assert code == 1 and "line 4" in out and "4096" in out, out


def test_a_run_id_being_imported_cannot_be_created_meanwhile(tmp_path: Path) -> None:
    """On SQLite a large import writes its log before its run row: meanwhile, a PUT of that
    run id is a 409, not a run that would find the import's rows as its own."""
    url = f"sqlite:///{tmp_path / 'importing.db'}"
    with app_client(url) as api:
        sql(
            url,  # an import's first slice, as it stands committed (no run row yet)
            "INSERT INTO decisions (project, run_id, seq, step, action, superseded, hash, body) "
            "VALUES ('default', 'busy', 1, 10, 'hold', 0, :h, '{}')",
            h="ab" * 32,
        )
        r = api.put("/v1/runs/busy", json=run_spec())
        assert r.status_code == 409 and "being imported" in r.text, r.text
        assert api.get("/v1/runs/busy").status_code == 404
        assert api.get("/v1/runs/busy/decisions").status_code == 404
        # another project's import of that id holds nothing of this project's
        sql(
            url,
            "INSERT INTO decisions (project, run_id, seq, step, action, superseded, hash, body) "
            "VALUES ('p2', 'free', 1, 10, 'hold', 0, :h, '{}')",
            h="ab" * 32,
        )
        r = api.put("/v1/runs/free", json=run_spec())
        assert r.status_code == 201, r.text
        assert api.get("/v1/runs/free/decisions").json()["items"] == []
