"""The dashboard's reads: a run's plot for a long run against a short one, and a page of the
run list among many runs.

    python bench/bench_plot.py [--big 1000000] [--small 1000] [--runs 10000] [--filler 2]
        [--samples 15] [--postgres URL] [--out FILE]

Builds, as bench_history.py does (lrpilot's own domain layer and store: every stored decision
is what the service writes; durability off for the build), a database with ``plot-big`` of
``--big`` decisions, ``plot-small`` of ``--small``, and fillers up to ``--runs`` runs of
``--filler`` decisions each (``make_runs``: bench/bench_ui.py builds its runs with it). Then,
against the real service (tests.harness.LiveServer), one request at a time on one keep-alive
connection, big and small alternating (ABBA):

  plot 1000      GET /v1/runs/{run}/plot?points=1000 (the run page's plot)
  plot 50        GET /v1/runs/{run}/plot?points=50 (a sparkline of the run list)
  plot zoom      GET /v1/runs/{run}/plot?points=1000 over the last tenth of the run's steps

and the run list at ``--runs`` runs: GET /v1/runs?limit=100 in run_id order, by activity
(sort=activity), a filtered page (state=stopped: no run is, so every run is looked at), and
the tenth page by activity (after=). It reports the medians, and big / small for the plots:
issue 16 asks the page of a 1,000,000-decision run to load within 2x of a 1,000-decision one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from bench_history import (
    STEP_EVERY,
    Http,
    append,
    big_small_table,
    build_store,
    checked,
    long_and_short,
    print_server_log,
)
from common import SERVICE_TARGET, console, fresh_database, machine_info, run_spec, write_result
from lrpilot.domain.deciding import new_run, now
from tests.harness import LiveServer

BIG, SMALL = "plot-big", "plot-small"


def make_runs(url: str, sizes: dict[str, int], fillers: int = 0, filler: int = 2) -> None:
    """On the migrated database ``url``: a plateau@1 run of each ``sizes[run_id]`` decisions
    (at steps 100, 200, ...; plateaus, hence reductions), after ``fillers`` runs of ``filler``
    decisions each (their rows first, as a long run's lie among others' in a service that has
    been up)."""
    plan = [(f"plot-filler-{i:05d}", filler) for i in range(fillers)] + list(sizes.items())
    store = build_store(url)
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            decisions = progress.add_task("decisions", total=sum(n for _, n in plan))
            for seed, (run_id, count) in enumerate(plan):
                store.create_run(new_run(run_id, run_spec({"bench": "plot"}), now()))
                append(store, run_id, seed, count, lambda n: progress.advance(decisions, n))
    finally:
        store.close()


def plot_requests(sizes: dict[str, int], samples: int) -> list[tuple[str, str, str]]:
    """(what, run, path), big and small alternating, which goes first alternating too."""
    todo = []
    for sample in range(samples):
        pair = (BIG, SMALL) if sample % 2 == 0 else (SMALL, BIG)
        for what in ("plot 1000", "plot 50", "plot zoom"):
            for run in pair:
                last = STEP_EVERY * sizes[run]
                query = {
                    "plot 1000": "points=1000",
                    "plot 50": "points=50",
                    "plot zoom": f"points=1000&from_step={last - last // 10}&to_step={last}",
                }[what]
                todo.append((what, run, f"/v1/runs/{run}/plot?{query}"))
    return todo


def measure(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sizes = {BIG: args.big, SMALL: args.small}
    with LiveServer(url, target=SERVICE_TARGET, log=tmp / "server.log") as server:
        http = Http(server)
        # the first plot of each run since the server started: its tiles are made (from the
        # database's tiles and the entries after them, store.plots.Tiles)
        cold = Http(server)
        cold.conn.timeout = 600  # a run without tiles in the database is read whole
        first = {run: cold("GET", f"/v1/runs/{run}/plot?points=1000") for run in (BIG, SMALL)}
        plots: dict[tuple[str, str], list[float]] = {}
        for i, (what, run, path) in enumerate(plot_requests(sizes, args.samples + 1)):
            elapsed = http("GET", path)
            if i >= 6:  # the first sample warms caches and the connection
                plots.setdefault((what, run), []).append(elapsed)
        # the run_id the tenth page by activity starts after
        http.conn.request("GET", "/v1/runs?sort=activity&limit=900")
        after = json.loads(http.conn.getresponse().read())["items"][-1]["run_id"]
        pages = {
            "runs, run_id order": "/v1/runs?limit=100",
            "runs, by activity": "/v1/runs?limit=100&sort=activity",
            "runs, state=stopped": "/v1/runs?limit=100&state=stopped",
            "runs, 10th page by activity": f"/v1/runs?limit=100&sort=activity&after={after}",
        }
        lists: dict[str, list[float]] = {}
        for i in range(args.samples + 1):
            for what, path in pages.items():
                elapsed = http("GET", path)
                if i:
                    lists.setdefault(what, []).append(elapsed)
        log = server.log_tail() if server.log.stat().st_size else ""
    rows = []
    for what in dict.fromkeys(w for w, _ in plots):
        big, small = (statistics.median(plots[what, run]) for run in (BIG, SMALL))
        rows.append({"what": what, "big_us": big, "small_us": small, "ratio": big / small})
    listed = [{"what": w, "median_us": statistics.median(v)} for w, v in lists.items()]
    rows.insert(0, {"what": "first plot (cold)", "big_us": first[BIG], "small_us": first[SMALL],
                    "ratio": first[BIG] / first[SMALL]})  # fmt: skip
    return {"plots": rows, "lists": listed, "server_log": log}


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    title = f"plot: {args.big:,} decisions vs {args.small:,} ({args.samples} each)"
    console.print(big_small_table(title, result["plots"], (BIG, SMALL), ms=True, flag=2.0))
    lists = Table(title=f"the run list among {args.runs:,} runs (a page of 100)")
    lists.add_column("request")
    lists.add_column("median ms", justify="right")
    for row in result["lists"]:
        lists.add_row(row["what"], f"{row['median_us'] / 1000:,.1f}")
    console.print(lists)
    print_server_log(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    long_and_short(parser, filler=2, samples=15)
    parser.add_argument(
        "--keep", type=Path, default=None, metavar="FILE",
        help="SQLite: build the runs into FILE and keep it; an existing FILE is used as it is",
    )  # fmt: skip
    args = checked(parser, argv, runs=1000, samples=3)

    info = machine_info()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lrpilot-plot-") as tmp:
        if args.keep is not None and args.keep.exists():
            url = f"sqlite:///{args.keep}"
        else:
            url = fresh_database(args.postgres, args.keep or Path(tmp) / "plot.db")
            make_runs(url, {BIG: args.big, SMALL: args.small}, args.runs - 2, args.filler)
        built = time.monotonic() - t0
        console.print(f"built in {built:.0f} s; measuring ({args.samples} of each request)")
        result = measure(url, args, Path(tmp))
    print_report(result, args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "postgres", "keep")}
    settings["database"] = "postgresql" if args.postgres else "sqlite"  # no credentials
    write_result(args.out, "plot", {"settings": settings, "machine": info, "build_seconds": built,
                                    **result})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
