"""The dashboard's run page in chromium: does a run of 1,000,000 decisions load as fast as one of
1,000 (issue 16 asks within 2x)?

    python bench/bench_ui.py [--small 1000] [--big 1000000] [--repeat 7] [--db FILE]
        [--out FILE.json]

Builds both runs in one SQLite database with bench/bench_plot.py's ``make_runs`` (the runs its
endpoint bench measures, built the same way: not a copy), serves it (tests.harness.LiveServer,
``lrpilot serve``, open mode on loopback), and loads ``/ui/#/runs/RUN`` in Debian's headless
chromium (offline: tests/chromium.py), alternating the two runs load by load so that drift falls
on both alike.
A load is timed from navigation start to ``window.lrpilotReady`` (the chart drawn with the
service's plot: its first draw with data), read in the page as ``performance.now()``. Reports
each run's median and the ratio big / small, and apart each run's first load after the server
started (a long run's first plot makes its tiles: store/plots.py). ``--db FILE`` keeps the
database, so that a second pass skips the build. Needs chromium and chromium-driver.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.support.ui import WebDriverWait

from bench_plot import make_runs
from common import (
    console,
    fresh_database,
    machine_info,
    print_header,
    timed_bench_parser,
    write_result,
)
from tests.chromium import chromium
from tests.harness import LiveServer

WAIT_S = 120  # a bound on a hang
FIRST_WAIT_S = 1800  # the first plot of a long run after a start makes its tiles: minutes
# the page sets lrpilotReady once the plot is drawn; its time since the navigation began
READY = "return window.lrpilotReady === true ? performance.now() : null"


def load_ms(browser: Any, url: str, wait_s: float = WAIT_S) -> float:
    """One cold load of ``url`` (a new document: about:blank first, so nothing is reused but
    the HTTP cache, which the pages' no-cache revalidates) until the plot is drawn."""
    browser.get("about:blank")
    browser.get(url)
    ready = WebDriverWait(browser, wait_s, poll_frequency=0.01).until(
        lambda d: d.execute_script(READY)
    )
    return float(ready)


def build(path: Path | None, tmp: Path, runs: dict[str, tuple[str, int]]) -> str:
    """The database: ``path`` as it is when it exists (built by an earlier pass with the same
    sizes), else built there (or in ``tmp``) with bench_plot's make_runs."""
    if path is not None and path.exists():
        console.print(f"reusing {path}")
        return f"sqlite:///{path}"
    url = fresh_database(None, path or tmp / "ui.db")
    started = time.perf_counter()
    make_runs(url, dict(runs.values()))
    console.print(f"built both runs in {time.perf_counter() - started:.0f} s")
    return url


def main(argv: list[str] | None = None) -> int:
    parser = timed_bench_parser(__doc__ or "", repeat=7)
    parser.add_argument("--small", type=int, default=1000, help="decisions of the small run")
    parser.add_argument("--big", type=int, default=1_000_000, help="decisions of the big run")
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite file to keep the runs in (reused if it exists)",
    )
    args = parser.parse_args(argv)
    info = machine_info()
    print_header(info, "chromium (headless, offline), lrpilot serve on SQLite")
    runs = {"small": ("ui-small", args.small), "big": ("ui-big", args.big)}
    with tempfile.TemporaryDirectory() as tmp:
        url = build(args.db, Path(tmp), runs)
        times: dict[str, list[float]] = {name: [] for name in runs}
        first: dict[str, float] = {}
        with LiveServer(url) as server, chromium() as browser:
            # each run's first load after the start, apart: it makes a long run's tiles
            for name, (run_id, _) in runs.items():
                first[name] = load_ms(browser, f"{server.url}/ui/#/runs/{run_id}", FIRST_WAIT_S)
            for _ in range(args.repeat):
                for name, (run_id, _) in runs.items():
                    times[name].append(load_ms(browser, f"{server.url}/ui/#/runs/{run_id}"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["big"] / medians["small"]
    for name, (_, count) in runs.items():
        console.print(
            f"{name:5} {count:>9,} decisions: median {medians[name]:7.1f} ms "
            f"(loads: {', '.join(f'{t:.0f}' for t in times[name])}; "
            f"the first after the start: {first[name]:.0f} ms)"
        )
    console.print(f"ratio big / small: [bold]{ratio:.2f}[/] (issue 16 asks <= 2)")
    result = {
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": {
            name: {
                "run_id": r,
                "decisions": c,
                "first_load_ms": first[name],
                "load_ms": times[name],
                "median_ms": medians[name],
            }
            for name, (r, c) in runs.items()
        },
        "ratio": ratio,
    }
    write_result(args.out, "bench_ui", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
