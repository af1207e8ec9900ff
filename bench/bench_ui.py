"""The dashboard's run page in chromium: does a run of 1,000,000 decisions load as fast as one of
1,000 (issue 16 asks within 2x), warm and cold?

    python bench/bench_ui.py [--small 1000] [--big 1000000] [--repeat 7] [--cold 5] [--db FILE]
        [--out FILE.json]

Builds both runs in one SQLite database with bench/bench_plot.py's ``make_runs`` (the runs its
endpoint bench measures, built the same way, through the store's append path: not a copy),
serves it (tests.harness.LiveServer, ``lrpilot serve``, open mode on loopback), and loads
``/ui/#/runs/RUN`` in Debian's headless chromium (offline: tests/chromium.py).
A load is timed from navigation start to ``window.lrpilotReady`` (the chart drawn with the
service's plot: its first draw with data), read in the page as ``performance.now()``.

  cold  ``--cold`` times: the server restarted (a new process, nothing of the runs in its
        memory), then each run's first load, the two in turns (which one goes first
        alternates from one restart to the next, so that the process's own first request
        falls on both alike)
  warm  ``--repeat`` loads of each run on one server, alternating run by run

Reports each run's medians and the ratios big / small. ``--db FILE`` keeps the database, so
that a second pass skips the build. Needs chromium and chromium-driver.
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


def cold_loads(
    server: LiveServer, browser: Any, runs: dict[str, tuple[str, int]], passes: int
) -> dict[str, list[float]]:
    """Each run's first load after a restart of ``server``, ``passes`` times, the order of the
    two alternating."""
    loads: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for n in range(passes):
        server.restart()
        for name in names if n % 2 == 0 else names[::-1]:
            loads[name].append(load_ms(browser, f"{server.url}/ui/#/runs/{runs[name][0]}"))
    return loads


def main(argv: list[str] | None = None) -> int:
    parser = timed_bench_parser(__doc__ or "", repeat=7)
    parser.add_argument("--small", type=int, default=1000, help="decisions of the small run")
    parser.add_argument("--big", type=int, default=1_000_000, help="decisions of the big run")
    parser.add_argument(
        "--cold", type=int, default=5, help="restarts: each run's first load after each"
    )
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
        warm: dict[str, list[float]] = {name: [] for name in runs}
        with LiveServer(url) as server, chromium() as browser:
            cold = cold_loads(server, browser, runs, args.cold)
            for _ in range(args.repeat):
                for name, (run_id, _) in runs.items():
                    warm[name].append(load_ms(browser, f"{server.url}/ui/#/runs/{run_id}"))
    result: dict[str, Any] = {
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": {name: {"run_id": r, "decisions": c} for name, (r, c) in runs.items()},
    }
    for what, times in (("cold", cold), ("warm", warm)):
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["big"] / medians["small"]
        for name, (_, count) in runs.items():
            console.print(
                f"{what} {name:5} {count:>9,} decisions: median {medians[name]:7.1f} ms "
                f"(loads: {', '.join(f'{t:.0f}' for t in times[name])})"
            )
            result["runs"][name] |= {
                f"{what}_load_ms": times[name],
                f"{what}_median_ms": medians[name],
            }
        console.print(f"{what} ratio big / small: [bold]{ratio:.2f}[/] (issue 16 asks <= 2)")
        result[f"{what}_ratio"] = ratio
    write_result(args.out, "bench_ui", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
