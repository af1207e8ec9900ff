"""``lrpilot verify BUNDLE --checkpoint FILE.pt`` / ``--entry SEQ:HASH``: a checkpoint's entry
checked against an exported bundle offline (docs/client.md, "Checkpoints bound to the log").

The run is made through the app (a rewind: its log has a superseded branch), exported, and each
checkpoint is a real torch.save of the state an LrpilotScheduler writes, nested as a job's
checkpoint nests it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests.helpers import lrpilot_cli, one_line, plateau_stream, run_spec

RUN = "ckpt-run"


def decisions(api: TestClient) -> list[dict[str, Any]]:
    r = api.get(f"/v1/runs/{RUN}/decisions", params={"limit": 1000})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@pytest.fixture
def bundle(api: TestClient, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A run of 8 observations rewound to step 40, continued by 2: its bundle and its log."""
    assert api.put(f"/v1/runs/{RUN}", json=run_spec({"patience": 1})).status_code == 201
    for step, value in plateau_stream(8):
        r = api.post(f"/v1/runs/{RUN}/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text
    assert api.post(f"/v1/runs/{RUN}/rewind", json={"to_step": 40}).json()["rewound"]
    for step, value in plateau_stream(2, seed=3, start_step=50):
        r = api.post(f"/v1/runs/{RUN}/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text
    r = api.get(f"/v1/runs/{RUN}/export")
    assert r.status_code == 200
    path = tmp_path / "run.ndjson"
    path.write_bytes(r.content)
    return path, decisions(api)


def checkpoint(tmp_path: Path, seq: int | None, head: str | None, run_id: str = RUN) -> Path:
    state = {"lrpilot": 1, "run_id": run_id, "root_run_id": run_id, "last_epoch": 60,
             "observed_step": 60, "seq": seq, "head_hash": head, "base_lrs": [0.1]}  # fmt: skip
    path = tmp_path / f"ckpt-{seq}.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "lr_schedulers": [state]}, path)
    return path


def test_a_live_entry_is_bound_and_a_superseded_or_foreign_one_is_not(
    bundle: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    path, log = bundle
    live = next(d for d in log if d["step"] == 30)  # kept by the rewind to step 40
    gone = next(d for d in log if d["step"] == 60 and d["seq"] < 10)  # superseded by it
    last = log[-1]

    ok = lrpilot_cli("verify", str(path), "--checkpoint", str(checkpoint(tmp_path, *_of(live))))
    assert ok.exit_code == 0, ok.output
    assert f"the checkpoint's entry {live['seq']} is on the live branch" in one_line(ok.output)
    ok = lrpilot_cli("verify", str(path), "--entry", f"{last['seq']}:{last['hash']}")
    assert ok.exit_code == 0, ok.output

    failed = lrpilot_cli("verify", str(path), "--checkpoint", str(checkpoint(tmp_path, *_of(gone))))
    assert failed.exit_code == 1
    assert "FAILED" in failed.output and "a branch since rewound" in one_line(failed.output)
    failed = lrpilot_cli("verify", str(path), "--entry", f"{live['seq']}:{'0' * 64}")
    assert failed.exit_code == 1 and f"has hash {live['hash']}" in one_line(failed.output)
    failed = lrpilot_cli("verify", str(path), "--entry", f"99:{live['hash']}")
    assert failed.exit_code == 1 and "the log has no entry 99" in one_line(failed.output)


def test_a_checkpoint_of_another_run_or_a_bad_argument_is_one_line(
    bundle: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    path, log = bundle
    other = checkpoint(tmp_path, 1, log[0]["hash"], run_id="another-run")
    result = lrpilot_cli("verify", str(path), "--checkpoint", str(other))
    assert result.exit_code == 1
    assert "is a checkpoint of run 'another-run'; the bundle is of run 'ckpt-run'" in result.output
    not_torch = tmp_path / "notes.pt"
    not_torch.write_text("not a checkpoint")
    result = lrpilot_cli("verify", str(path), "--checkpoint", str(not_torch))
    assert result.exit_code == 1 and "not a torch checkpoint" in result.output
    result = lrpilot_cli("verify", str(path), "--entry", "3")
    assert result.exit_code == 1 and "--entry must be SEQ:HASH" in result.output
    unbound = checkpoint(tmp_path, None, None)
    result = lrpilot_cli("verify", str(path), "--checkpoint", str(unbound))
    assert result.exit_code == 1 and "has no seq and head_hash" in result.output


def _of(entry: dict[str, Any]) -> tuple[int, str]:
    return entry["seq"], entry["hash"]
