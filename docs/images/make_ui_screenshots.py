"""The dashboard's screenshots in docs/ and the README: ``python docs/images/make_ui_screenshots.py
[DIR]`` (DIR: where to write ui-runs.png and ui-run.png, by default next to this file).

Starts the real service on a temporary SQLite file (open mode, loopback), makes the README's
three worked runs from docs/schedules (their specs, fed the same validation loss), opens the
runs list and the warmup-then-plateau run in Debian's chromium (offline, as the tests run it:
tests/chromium.py), runs a what-if (the plateau phase's patience 3 -> 1) so that its overlay is
drawn, and saves both pages. Needs chromium, chromium-driver and selenium (the test extra).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCHEDULES = REPO / "docs" / "schedules"
RUNS = {  # run id: (spec, labels)
    "resnet50-warmup": ("warmup_then_plateau", {"team": "vision", "model": "resnet50"}),
    "vit-cosine": ("cosine_with_plateau_drops", {"team": "vision", "model": "vit-b16"}),
    "bert-decay": ("stall_then_linear_decay", {"team": "nlp", "model": "bert-base"}),
}
SHOWN = "resnet50-warmup"
WAIT_S = 30


def schedules() -> Any:
    """docs/schedules/make.py: the README's worked schedules and their validation loss."""
    if str(SCHEDULES) not in sys.path:
        sys.path.insert(0, str(SCHEDULES))
    import make  # type: ignore[import-not-found]

    return make


def make_runs(url: str) -> None:
    import httpx

    make = schedules()
    with httpx.Client(base_url=url, timeout=30) as api:
        for run_id, (name, labels) in RUNS.items():
            spec = json.loads((SCHEDULES / f"{name}.json").read_text())
            api.put(f"/v1/runs/{run_id}", json={**spec, "labels": labels}).raise_for_status()
            for step in range(make.EVERY, make.STEPS + 1, make.EVERY):
                body = {"step": step, "value": make.val_loss(step)}
                api.post(f"/v1/runs/{run_id}/observations", json=body).raise_for_status()


def shoot(url: str, out: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.chromium import chromium

    with chromium(width=1280, height=1000) as browser:
        wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05)
        browser.get(f"{url}/ui/#/runs")
        wait.until(
            lambda d: d.execute_script(
                "const c = document.querySelectorAll('canvas.spark');"
                "return c.length === 3 && Array.from(c).every(x => x.getContext('2d')"
                ".getImageData(0, 0, x.width, x.height).data.some(v => v))"
            )
        )
        browser.set_window_size(1280, 420)
        browser.save_screenshot(str(out / "ui-runs.png"))
        browser.set_window_size(1280, 1000)
        browser.get(f"{url}/ui/#/runs/{SHOWN}")
        wait.until(lambda d: d.execute_script("return window.lrpilotReady === true"))
        wait.until(
            lambda d: d.execute_script(
                "return document.querySelector('#whatif-form [name=phases]')"
            )
        )
        # the what-if: the plateau phase reduces after 1 bad evaluation instead of 3
        browser.execute_script(
            "const f = document.querySelector('#whatif-form [name=phases]');"
            "const phases = JSON.parse(f.value);"
            "phases[1].policy.params.patience = 1;"
            "f.value = JSON.stringify(phases);"
            "document.querySelector('#whatif-form button[type=submit]').click();"
        )
        wait.until(
            lambda d: d.execute_script(
                "return window.lrpilotPlot.whatif && document.getElementById('whatif-summary')"
            )
        )
        time.sleep(0.2)  # the overlay's redraw
        browser.save_screenshot(str(out / "ui-run.png"))


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0]) if args else HERE
    out.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.harness import sqlite_server

    with sqlite_server("screenshots") as server:
        make_runs(server.url)
        shoot(server.url, out)
    print(f"wrote {out / 'ui-runs.png'} and {out / 'ui-run.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
