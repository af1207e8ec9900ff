"""A ``wsd@1`` run in the audit commands: its export replayed offline with ``lrpilot replay``
under another plateau patience (the decay starts elsewhere), and drawn."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.helpers import lrpilot_cli, one_line, plateau_stream

PARAMS = {"num_warmup_steps": 100, "num_decay_steps": 1000, "plateau": {"patience": 2}}


def test_replay_a_wsd_run_with_another_patience(api: TestClient, tmp_path: Path) -> None:
    spec = {"policy": {"name": "wsd", "version": 1, "params": PARAMS}, "base_lrs": [0.1],
            "metric": "val_loss"}  # fmt: skip
    assert api.put("/v1/runs/wsd-cli", json=spec).status_code == 201
    stream = plateau_stream(40, 100, 100)
    for step, value in stream:
        r = api.post("/v1/runs/wsd-cli/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text
    started = [
        d["step"] for d in api.get("/v1/runs/wsd-cli/decisions").json()["items"]
        if d["reason"].endswith("the decay starts here")
    ]  # fmt: skip
    assert len(started) == 1
    bundle = tmp_path / "wsd.ndjson"
    bundle.write_bytes(api.get("/v1/runs/wsd-cli/export").content)

    same = lrpilot_cli("replay", str(bundle))
    assert same.exit_code == 0 and "the same decisions at every step" in one_line(same.output)
    png = tmp_path / "what-if.png"
    done = lrpilot_cli(
        "replay", str(bundle), "--set", 'plateau={"patience": 6}', "--plot", str(png)
    )
    out = one_line(done.output)
    assert done.exit_code == 0, out
    assert f"{len(stream)} observations replayed under wsd@1" in out
    assert f" {started[0]} " in out  # the first difference: where the recorded decay started
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
