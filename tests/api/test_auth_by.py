"""The log records who: every entry a request causes while auth is on carries "by" (the token's
name and project) in its hashed bytes, verify (offline and online) rebuilds it, and an edit of
it fails verify; in open mode entries keep the bytes they always had."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fastapi.testclient import TestClient

from lrpilot.audit.bundle import read_raw
from lrpilot.audit.verify import check_bundle
from tests.conftest import app_client
from tests.helpers import bearer, lrpilot_cli, make_token, rechained, run_spec

CLIENT = {"host": "gpu-node-3", "process": 42, "rank": 0}


def export(client: TestClient, run_id: str, token: str) -> list[str]:
    r = client.get(f"/v1/runs/{run_id}/export", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.text.splitlines()


def offline(lines: list[str], tmp_path: Path) -> tuple[bool, str]:
    path = tmp_path / "bundle.ndjson"
    path.write_text("".join(line + "\n" for line in lines))
    checked = check_bundle(lambda: read_raw(path))
    return checked.ok, str(checked.report.mismatch)


def test_decisions_scales_and_rewinds_record_the_token(database_url: str, tmp_path: Path) -> None:
    writer = make_token(database_url, "vision", "writer", name="trainer")
    admin = make_token(database_url, "vision", "admin", name="ops")
    spec = run_spec() | {"scaling": {"rule": "linear", "by": "world_size", "base": 2}}
    with app_client(database_url, migrate=False) as client:
        assert client.put("/v1/runs/r", json=spec, headers=bearer(writer)).status_code == 201
        for step in (1, 2, 3):
            obs = {"step": step, "value": 1.0 / step, "client": CLIENT}
            r = client.post("/v1/runs/r/observations", json=obs, headers=bearer(writer))
            assert r.status_code == 200, r.text
            assert r.json()["by"] == {"token": "trainer", "project": "vision"}
            assert r.json()["client"] == CLIENT  # declared, kept beside it
        resize = {"step": 3, "world_size": 4}
        r = client.post("/v1/runs/r/resize", json=resize, headers=bearer(writer))
        assert r.json()["decision"]["by"] == {"token": "trainer", "project": "vision"}
        r = client.post("/v1/runs/r/rewind", json={"to_step": 1}, headers=bearer(admin))
        assert r.json()["decision"]["by"] == {"token": "ops", "project": "vision"}
        verified = client.post("/v1/runs/r/verify", headers=bearer(writer)).json()
        assert verified["ok"] is True, verified
        lines = export(client, "r", writer)
    entries = [json.loads(line) for line in lines[1:-1]]
    assert all("by" in e for e in entries) and len(entries) == 5
    assert offline(lines, tmp_path) == (True, "None")
    done = lrpilot_cli("verify", str(tmp_path / "bundle.ndjson"))
    assert done.exit_code == 0, done.output
    # "by" is hashed: an edit of it fails verify at that entry
    forged = [lines[0], lines[1].replace('"token":"trainer"', '"token":"intern"'), *lines[2:]]
    forged_ok, said = offline(forged, tmp_path)
    assert forged_ok is False and "seq 1" in said and "edited" in said, said
    # re-hashed (whoever can write the whole file can), a "by" of another shape is refused
    wrong = rechained([lines[0], lines[1].replace('"by":{', '"by":{"x":"1",', 1), *lines[2:]])
    shape_ok, said = offline(wrong, tmp_path)
    assert shape_ok is False and "by is not" in said, said


def test_aggregated_ranks_record_their_tokens(database_url: str, tmp_path: Path) -> None:
    tokens = [make_token(database_url, "p", "writer", name=f"rank{i}") for i in range(2)]
    spec = run_spec() | {"aggregate": {"timeout_s": 30, "on_timeout": "decide"}}
    with app_client(database_url, migrate=False) as client:
        assert client.put("/v1/runs/a", json=spec, headers=bearer(tokens[0])).status_code == 201
        answers: list[dict[str, object]] = []

        def post(rank: int) -> None:
            obs = {"step": 1, "value": 0.5 + rank, "rank": rank, "world_size": 2}
            r = client.post("/v1/runs/a/observations", json=obs, headers=bearer(tokens[rank]))
            answers.append(r.json())

        threads = [threading.Thread(target=post, args=(rank,)) for rank in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(answers) == 2 and answers[0] == answers[1], answers
        ranks = answers[0]["ranks"]
        assert isinstance(ranks, list)
        assert [r["by"] for r in ranks] == [
            {"token": "rank0", "project": "p"},
            {"token": "rank1", "project": "p"},
        ]
        lines = export(client, "a", tokens[0])
    assert offline(lines, tmp_path) == (True, "None")


def test_open_mode_entries_have_no_by(database_url: str) -> None:
    with app_client(database_url, migrate=False) as client:
        client.put("/v1/runs/r", json=run_spec())
        r = client.post("/v1/runs/r/observations", json={"step": 1, "value": 0.5})
        assert r.status_code == 200 and "by" not in r.json()
        r = client.post("/v1/runs/r/rewind", json={"to_step": 0})
        assert r.status_code == 200 and "by" not in r.json()["decision"]
