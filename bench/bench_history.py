"""Is the service flat in history? A long run against a short one, in one database, one server.

    python bench/bench_history.py [--runs 10000] [--big 1000000] [--small 1000]
        [--filler 10] [--samples 300] [--soak 30] [--postgres URL] [--out FILE]

Builds, in process and through lrpilot's own domain layer and store (the real policy decides
every step, so every stored decision is the canonical ~700-byte document the service would
have written), a database of ``--runs`` runs: ``history-big`` with ``--big`` decisions,
``history-small`` with ``--small``, and the others with ``--filler`` decisions each. Then it
serves that database (tests.harness.LiveServer, the same uvicorn command line as
bench_decisions.py) and, one request at a time on one keep-alive connection, alternating the
two runs request by request so that drift and noise fall on both alike:

  new decision   POST /v1/runs/{run}/observations at the run's next step
  lr early/middle/late   GET /v1/runs/{run}/lr?step=N, N between two decisions at 5 %, 50 %
                 and 95 % of the run

and reports each one's median latency on both runs and the ratio big / small (1.0 is flat).
Last, ``--soak`` seconds of decision-many load (wrk, bench/wrk/decision_many.lua) against the
same server, with its RSS sampled every second: start, end and peak.

The build writes with synchronous=OFF (SQLite) or synchronous_commit=off (PostgreSQL): it is
a fixture, not a measurement, and a crash during it just means building again. The server
runs with the service's own settings.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from bench_decisions import drive, error_count
from bench_decisions import samples as samples_of
from common import (
    RUN_SPEC,
    SERVICE_TARGET,
    console,
    fresh_database,
    machine_info,
    metric_value,
    rss_mib,
    run_spec,
    write_result,
)
from lrpilot.api.auth import DEFAULT_PROJECT
from lrpilot.domain.deciding import decide, new_run, now
from lrpilot.settings import Settings
from lrpilot.store.records import RunKey
from lrpilot.store.runs import Store, WriteTx
from tests.harness import LiveServer

BIG, SMALL = "history-big", "history-small"
STEP_EVERY = 100  # training steps between two evaluations: decision k is at step 100 k
BATCH = 5000  # decisions a build transaction
POSITIONS = {"early": 0.05, "middle": 0.5, "late": 0.95}


# -- the build ---------------------------------------------------------------------------------


def build_store(url: str) -> Store:
    """The service's store, with durability off for the build's connections, and its
    transactions of BATCH decisions given all the time they need on a loaded machine."""
    store = Store(Settings(database_url=url, db_timeout_s=600.0))
    pragma = "PRAGMA synchronous=OFF" if url.startswith("sqlite") else "SET synchronous_commit=off"

    @sa.event.listens_for(store.engine, "connect")
    def _fast(dbapi_conn: Any, _: Any) -> None:  # after the store's own listener: overrides it
        cursor = dbapi_conn.cursor()
        cursor.execute(pragma)
        cursor.close()

    return store


def append(store: Store, run_id: str, seed: int, count: int, advance: Callable[[int], Any]) -> None:
    """``count`` decisions on the run, from the policy itself, ``BATCH`` a transaction."""
    done = 0
    while done < count:
        n = min(BATCH, count - done)

        def work(tx: WriteTx, n: int = n) -> None:
            key = RunKey(DEFAULT_PROJECT, run_id)  # the runs are made in open mode's project
            head = tx.lock_runs({key})[0][key]
            for _ in range(n):
                k = head.last_seq + 1
                decision = decide(head, STEP_EVERY * k, metric_value(seed, k))
                tx.append_decision(decision)
                head = head.after(decision)

        store.transact(work)
        done += n
        advance(n)


def build(url: str, args: argparse.Namespace) -> None:
    fillers = max(0, args.runs - 2)
    plan = [(BIG, args.big), (SMALL, args.small)]
    plan += [(f"history-filler-{i:05d}", args.filler) for i in range(fillers)]
    store = build_store(url)
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            runs = progress.add_task("runs", total=len(plan))
            decisions = progress.add_task("decisions", total=sum(n for _, n in plan))
            # The fillers first and the two measured runs last: their rows lie behind the
            # fillers', as a long run's lie among other runs' in a service that has been up.
            for seed, (run_id, count) in reversed(list(enumerate(plan))):
                store.create_run(new_run(run_id, run_spec({"bench": "history"}), now()))
                append(store, run_id, seed, count, lambda n: progress.advance(decisions, n))
                progress.advance(runs)
    finally:
        store.close()


# -- the measurement ---------------------------------------------------------------------------


class Http:
    """One keep-alive connection (the standard library's): a request, its latency in µs."""

    def __init__(self, server: LiveServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> float:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        t0 = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - t0) * 1e6
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{method} {path} -> {response.status} {payload[:300]!r}")
        return elapsed


def last_steps(http: Http) -> dict[str, int]:
    out = {}
    for run_id in (BIG, SMALL):
        http.conn.request("GET", f"/v1/runs/{run_id}")
        out[run_id] = json.loads(http.conn.getresponse().read())["last_step"]
    return out


def requests(args: argparse.Namespace, last: dict[str, int]) -> Iterator[tuple[str, str, Any]]:
    """(what, run, request) in the order sent: big and small alternate, request by request,
    and which of the two goes first alternates from one sample to the next (ABBA), because the
    first POST after a series of GETs costs more than the second, whichever run it is for."""
    sizes = {BIG: args.big, SMALL: args.small}
    next_k = {run: last[run] // STEP_EVERY + 1 for run in (BIG, SMALL)}
    for sample in range(args.samples):
        pair = (BIG, SMALL) if sample % 2 == 0 else (SMALL, BIG)
        for run in pair:
            k = next_k[run]
            next_k[run] += 1
            body = {"step": STEP_EVERY * k, "value": metric_value(7, k)}
            yield "new decision", run, ("POST", f"/v1/runs/{run}/observations", body)
        for where, fraction in POSITIONS.items():
            for run in pair:
                step = STEP_EVERY * max(1, round(sizes[run] * fraction)) + STEP_EVERY // 2
                yield f"lr {where}", run, ("GET", f"/v1/runs/{run}/lr?step={step}", None)


def soak(server: LiveServer, args: argparse.Namespace) -> dict[str, Any]:
    """Decision-many load for ``--soak`` seconds, the server's RSS sampled every second."""
    c = args.soak_concurrency
    put = Http(server)
    for i in range(c):
        put("PUT", f"/v1/runs/bench-many-{i}", RUN_SPEC)
    samples: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(drive, "decision-many", [server], c, args.soak, 1)
        while not load.done():
            if (rss := rss_mib(server.pid)) is not None:
                samples.append(rss)
            time.sleep(1.0)
        results = load.result()
    errors = sum(error_count(r)[0] for r in results)
    for sample in samples_of(results):
        console.print(f"[bold red]soak:[/] {sample}", markup=False)
    rps = sum(r["requests"] / (r["duration_us"] / 1e6) for r in results)
    end = rss_mib(server.pid)
    return {"seconds": args.soak, "concurrency": c, "req_per_s": rps, "errors": errors,
            "rss_mib_start": samples[0] if samples else None, "rss_mib_end": end,
            "rss_mib_peak": max([*samples, end or 0.0])}  # fmt: skip


def measure(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with LiveServer(url, target=SERVICE_TARGET, log=tmp / "server.log") as server:
        http = Http(server)
        latencies: dict[tuple[str, str], list[float]] = {}
        todo = list(requests(args, last_steps(http)))
        rss_start = rss_mib(server.pid)
        for i, (what, run, (method, path, body)) in enumerate(todo):
            elapsed = http(method, path, body)
            if i >= len(todo) // 10:  # the first tenth warms caches and the connection
                latencies.setdefault((what, run), []).append(elapsed)
        rss_after = rss_mib(server.pid)
        soaked = soak(server, args) if args.soak else None
        log = server.log_tail() if server.log.stat().st_size else ""
    rows = []
    for what in dict.fromkeys(w for w, _ in latencies):
        big, small = (statistics.median(latencies[what, run]) for run in (BIG, SMALL))
        rows.append({"what": what, "big_us": big, "small_us": small, "ratio": big / small})
    return {"rows": rows, "rss_mib": {"start": rss_start, "after_samples": rss_after},
            "soak": soaked, "server_log": log}  # fmt: skip


def big_small_table(
    title: str, rows: list[dict[str, Any]], names: tuple[str, str], ms: bool, flag: float
) -> Table:
    """Each request's median on the long and the short run (µs, or ms) and their ratio,
    flagged above ``flag``."""
    table = Table(title=title)
    unit = "ms" if ms else "µs"
    for name in ("request", f"{names[0]} {unit}", f"{names[1]} {unit}", "big / small"):
        table.add_column(name, justify="left" if name == "request" else "right")
    for row in rows:
        ratio = f"{row['ratio']:.2f}"
        table.add_row(
            row["what"],
            f"{row['big_us'] / 1000:,.1f}" if ms else f"{row['big_us']:,.0f}",
            f"{row['small_us'] / 1000:,.1f}" if ms else f"{row['small_us']:,.0f}",
            f"[bold yellow]{ratio}[/]" if row["ratio"] > flag else ratio,
        )
    return table


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    title = f"history: {args.big:,} decisions vs {args.small:,}, {args.runs:,} runs"
    console.print(big_small_table(title, result["rows"], (BIG, SMALL), ms=False, flag=1.2))
    rss = result["rss_mib"]
    console.print(f"server RSS: {rss['start']:.0f} MiB at start, {rss['after_samples']:.0f} after")
    if soaked := result["soak"]:
        console.print(
            f"soak: {soaked['seconds']} s of decision-many at c={soaked['concurrency']}, "
            f"{soaked['req_per_s']:,.0f} req/s, RSS {soaked['rss_mib_start']:.0f} -> "
            f"{soaked['rss_mib_end']:.0f} MiB (peak {soaked['rss_mib_peak']:.0f})"
            + (f" [bold red]{soaked['errors']} ERRORS[/]" if soaked["errors"] else "")
        )
    print_server_log(result)


def print_server_log(result: dict[str, Any]) -> None:
    if result["server_log"]:
        console.print("[bold yellow]server log:[/]")
        console.print(result["server_log"], markup=False)


def long_and_short(parser: argparse.ArgumentParser, filler: int, samples: int) -> None:
    """The options of a bench of a long run against a short one among many (bench_plot's too):
    --runs, --big, --small, --filler, --samples, --postgres, --out."""
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the database")
    parser.add_argument("--big", type=int, default=1_000_000, help="decisions of the long run")
    parser.add_argument("--small", type=int, default=1_000, help="decisions of the short run")
    parser.add_argument("--filler", type=int, default=filler, help="decisions of every other run")
    parser.add_argument("--samples", type=int, default=samples, help="requests of each kind a run")
    parser.add_argument(
        "--postgres", "--database-url", dest="postgres", metavar="URL",
        help="PostgreSQL instead of SQLite (its public schema is DROPPED first)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")


def checked(
    parser: argparse.ArgumentParser, argv: list[str] | None, runs: int, samples: int
) -> argparse.Namespace:
    """The parsed options of ``long_and_short``, with at least ``runs`` runs and ``samples``
    samples (a usage error else)."""
    args = parser.parse_args(argv)
    if min(args.big, args.small) < 20 or args.runs < runs or args.samples < samples:
        parser.error(f"--big and --small >= 20, --runs >= {runs}, --samples >= {samples}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    long_and_short(parser, filler=10, samples=300)
    parser.add_argument("--soak", type=int, default=30, help="seconds of load for RSS; 0: none")
    parser.add_argument("--soak-concurrency", type=int, default=16)
    args = checked(parser, argv, runs=2, samples=10)

    info = machine_info()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lrpilot-history-") as tmp:
        url = fresh_database(args.postgres, Path(tmp) / "history.db")
        build(url, args)
        built = time.monotonic() - t0
        console.print(f"built in {built:.0f} s; measuring ({args.samples} of each request)")
        result = measure(url, args, Path(tmp))
    print_report(result, args)

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "postgres")}
    settings["database"] = "postgresql" if args.postgres else "sqlite"  # no credentials
    write_result(
        args.out,
        "history",
        {"settings": settings, "machine": info, "build_seconds": built, **result},
    )
    soaked = result["soak"]
    return 1 if soaked and soaked["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
