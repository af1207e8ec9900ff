"""The worked schedules of the README and docs/policies.md (docs/schedules/): each spec is a run
the service takes, fed the plotted validation loss it decides what the plots show, and the
committed PNGs are what docs/schedules/make.py draws today (pixels compared, within a small
tolerance)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.harness import REPO_DIR

DOCS = REPO_DIR / "docs" / "schedules"


def make_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_schedules", DOCS / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(api: TestClient, name: str) -> list[dict[str, Any]]:
    """Create the run from the spec file, post the plotted loss; the decisions."""
    make = make_module()
    spec = json.loads((DOCS / f"{name}.json").read_text())
    assert api.put(f"/v1/runs/{name}", json=spec).status_code == 201
    decisions = []
    for step in range(make.EVERY, make.STEPS + 1, make.EVERY):
        r = api.post(
            f"/v1/runs/{name}/observations", json={"step": step, "value": make.val_loss(step)}
        )
        assert r.status_code == 200, r.text
        decisions.append(r.json())
    assert api.post(f"/v1/runs/{name}/verify").json()["ok"] is True
    return decisions


def lr(api: TestClient, name: str, step: int) -> float:
    lrs: list[float] = api.get(f"/v1/runs/{name}/lr", params={"step": step}).json()["lrs"]
    return lrs[0]


def test_warmup_then_plateau(api: TestClient) -> None:
    decisions = run(api, "warmup_then_plateau")
    assert lr(api, "warmup_then_plateau", 0) == 0.001  # start_factor 0.01 of 0.1
    assert 0.001 < lr(api, "warmup_then_plateau", 500) < 0.1
    assert lr(api, "warmup_then_plateau", 1000) == 0.1
    reduced = [d["step"] for d in decisions if d["action"] == "reduce"]
    assert reduced == [5500, 6500, 7500, 8500, 9500]  # the stall from step 4,000, patience 3
    assert decisions[-1]["lrs"] == [0.1 * 0.5**5]


def test_cosine_with_plateau_drops(api: TestClient) -> None:
    decisions = run(api, "cosine_with_plateau_drops")
    reduced = [d["step"] for d in decisions if d["action"] == "reduce"]
    assert reduced == [5500, 6500, 7500, 8500, 9500]
    before, after = (
        lr(api, "cosine_with_plateau_drops", 5499),
        lr(api, "cosine_with_plateau_drops", 5500),
    )
    assert abs(after / before - 0.5) < 1e-3  # the level halves at the plateau (cosine moves a hair)


def test_stall_then_linear_decay_then_stop(api: TestClient) -> None:
    decisions = run(api, "stall_then_linear_decay")
    actions = {d["step"]: d["action"] for d in decisions}
    start = min(step for step, action in actions.items() if action == "decay")
    assert lr(api, "stall_then_linear_decay", start) == 0.1
    assert 0.0001 < lr(api, "stall_then_linear_decay", start + 1500) < 0.1
    assert lr(api, "stall_then_linear_decay", start + 3000) == 0.0001  # the floor after K steps
    assert "stop" in actions.values() and actions[10_000] == "stop"


def test_wsd_cooldown_on_a_plateau(api: TestClient) -> None:
    decisions = run(api, "wsd_cooldown_on_a_plateau")
    started = [d for d in decisions if d["action"] == "decay"]
    assert started[0]["step"] == 5500 and started[0]["reason"].endswith("the decay starts here")
    assert lr(api, "wsd_cooldown_on_a_plateau", 5500) == 0.1  # the stable phase's, until then
    assert 0.001 < lr(api, "wsd_cooldown_on_a_plateau", 6500) < 0.1
    assert lr(api, "wsd_cooldown_on_a_plateau", 7500) == 0.1 * 0.01  # min_lr_ratio, after 2000


def test_wsd_deepseek_steps(api: TestClient) -> None:
    run(api, "wsd_deepseek_steps")
    at = {k: lr(api, "wsd_deepseek_steps", k) for k in (7999, 8000, 8999, 9000, 10_000)}
    assert at == {7999: 0.1, 8000: 0.1 * 0.316, 8999: 0.1 * 0.316, 9000: 0.1 * 0.316 * 0.316,
                  10_000: 0.1 * 0.099856}  # fmt: skip


# RMS of the pixel difference (0..255) allowed between a committed PNG and a fresh drawing: the
# same matplotlib draws the same pixels (0.0); this leaves room for a release that moves text
# antialiasing a little, not for another curve, mark, title or legend (those differ by > 10)
TOLERANCE = 2.0


def test_the_committed_pngs_are_what_make_py_draws(tmp_path: Path) -> None:
    from matplotlib.testing.compare import compare_images

    subprocess.run([sys.executable, str(DOCS / "make.py"), str(tmp_path)], check=True)
    make = make_module()
    assert (DOCS / "val_loss.txt").read_text() == (tmp_path / "val_loss.txt").read_text()
    stale = []
    for name in make.SPECS:
        drawn = tmp_path / f"{name}.png"
        assert drawn.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        problem = compare_images(str(DOCS / f"{name}.png"), str(drawn), tol=TOLERANCE)
        if problem is not None:
            stale.append(f"{name}.png: {problem}")
    assert not stale, "run `python docs/schedules/make.py` and commit the PNGs:\n" + "\n".join(
        stale
    )
    # the comparison sees a change of curve: two of the plots differ beyond the tolerance
    first, second = (str(tmp_path / f"{name}.png") for name in make.SPECS[:2])
    assert compare_images(first, second, tol=TOLERANCE) is not None
