"""Decision endpoint vs a trivial FastAPI endpoint, same run, same machine, same uvicorn settings.

    python bench/bench_decisions.py [--seconds 5] [--warmup 1] [--concurrency 1,16,64]
        [--scenarios trivial,decision-many,decision-one] [--repeat 1]
        [--postgres URL [--replicas 2]] [--out bench/results/<name>.json]

Every (scenario, concurrency c) cell gets fresh servers (tests.harness.LiveServer: ``python -m
uvicorn <app> --host 127.0.0.1 --port P --workers 1 --no-access-log --log-level warning``, the
same for both apps) and, for the service, a fresh migrated database: a new SQLite file, or with
``--postgres`` the public schema dropped and migrated again. The load comes from wrk (a separate
C process: no GIL shared with the server) with one connection a thread, ``-t c -c c``, so each
client sends its requests in order; the bodies come from the Lua scripts in bench/wrk/.

Scenarios:
  trivial        POST /echo of bench/trivial_app.py (``async def``): the ratio's denominator
  trivial-sync   POST /echo-sync, the same as a plain ``def`` (FastAPI's thread pool);
                 informative, ratios are always against ``trivial``
  decision-many  client i posts steps 1, 2, 3, ... to its own run bench-many-<i>
  decision-one   all c clients post steps 1, 2, 3, ... to the run bench-one, the same value for
                 a step, with rank and world_size: one request a step decides, the others are
                 retries answered with the stored decision

A first wrk pass of ``--warmup`` seconds is not measured; the measured pass continues from the
highest step the warm-up sent, so that it decides new steps. ``--replicas 2`` (PostgreSQL only)
serves every cell from two processes on one database and splits the c clients between them
(two wrk processes, one a replica, at the same time; ranks and runs numbered across both):
req/s add up, p50 and p99 are the worse replica's.

Any non-2xx answer (counted by the Lua scripts) or socket error is an error: printed loudly,
and the exit status is 1. Compare ratios and server µs/req across machines and runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

import common
from common import console
from tests.harness import LiveServer

WRK_DIR = common.BENCH_DIR / "wrk"
TRIVIAL_TARGET = ("--app-dir", str(common.BENCH_DIR), "trivial_app:app")
# scenario -> (wrk script, extra key=value arguments for it)
SCENARIOS: dict[str, tuple[str, dict[str, str]]] = {
    "trivial": ("trivial.lua", {"path": "/echo"}),
    "trivial-sync": ("trivial.lua", {"path": "/echo-sync"}),
    "decision-many": ("decision_many.lua", {}),
    "decision-one": ("decision_one.lua", {}),
}
DEFAULT_SCENARIOS = "trivial,decision-many,decision-one"
REQUEST_TIMEOUT_S = 10
NOISY_PCT = 10.0  # other processes busier than this (% of one core) make a cell suspect


@dataclass
class Cell:
    scenario: str
    concurrency: int
    replicas: int
    repeat: int
    seconds: float = 0.0  # wrk's measured duration
    requests: int = 0
    errors: int = 0  # non-2xx answers and socket errors
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    ratio: float | None = None  # rps / trivial rps at the same c
    p50_ratio: float | None = None  # p50 / trivial p50 at the same c
    p99_ratio: float | None = None
    server_cpu_pct: float | None = None  # % of one core, summed over replicas
    server_us_per_request: float | None = None
    server_rss_mib: float | None = None  # after the measured pass; the largest replica
    client_cpu_pct: float | None = None  # wrk
    other_cpu_pct: float | None = None  # the rest of the machine: noise
    statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    run_counts: dict[str, int] = field(default_factory=dict)
    server_log: str = ""  # what the servers wrote at --log-level warning (should be nothing)
    rps_all_repeats: list[float] = field(default_factory=list)  # set on the median pass
    errors_all_repeats: int = 0


# -- load --------------------------------------------------------------------------------------


def wrk(script: str, url: str, clients: int, seconds: int, **args: object) -> subprocess.Popen[str]:
    cmd = ["wrk", "-t", str(clients), "-c", str(clients), "-d", f"{seconds}s",
           "--timeout", f"{REQUEST_TIMEOUT_S}s", "-s", script, url,
           "--", *(f"{k}={v}" for k, v in args.items())]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=WRK_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wrk_result(proc: subprocess.Popen[str], seconds: int) -> dict[str, Any]:
    out, err = proc.communicate(timeout=seconds + 2 * REQUEST_TIMEOUT_S + 30)
    for line in out.splitlines():
        if line.startswith("BENCH-RESULT "):
            return dict(json.loads(line.removeprefix("BENCH-RESULT ")))
    raise RuntimeError(f"wrk exited with {proc.returncode} without a result:\n{out}\n{err}")


def drive(
    scenario: str, servers: list[LiveServer], c: int, seconds: int, start: int
) -> list[dict[str, Any]]:
    """c clients for ``seconds``, split over the servers: one wrk process a server, at once."""
    script, extra = SCENARIOS[scenario]
    procs, offset = [], 0
    for i, server in enumerate(servers):
        n = c // len(servers) + (i < c % len(servers))
        if n:
            procs.append(
                wrk(script, server.url, n, seconds, start=start, offset=offset, world=c, **extra)
            )
        offset += n
    return [wrk_result(proc, seconds) for proc in procs]


def error_count(result: dict[str, Any]) -> tuple[int, Counter[str]]:
    statuses = Counter({str(k): int(v) for k, v in result["statuses"].items()})
    socket = {k: int(v) for k, v in result["socket_errors"].items() if k != "status"}
    non_2xx = sum(n for status, n in statuses.items() if not status.startswith("2"))
    for kind, n in socket.items():
        if n:
            statuses[f"socket {kind}"] += n
    return non_2xx + sum(socket.values()), statuses


def samples(results: list[dict[str, Any]]) -> list[str]:
    # Lua writes an empty table as {}: no samples
    return [s for r in results for s in (r["samples"] or [])]


# -- a cell ------------------------------------------------------------------------------------


def usage(servers: list[LiveServer]) -> tuple[float | None, float, float | None]:
    """CPU seconds so far: the servers', wrk's (reaped children), the whole machine's."""
    per_server = [common.cpu_seconds(s.pid) for s in servers]
    server = None if None in per_server else sum(x for x in per_server if x is not None)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return server, children.ru_utime + children.ru_stime, common.machine_busy_seconds()


def measure(cell: Cell, servers: list[LiveServer], seconds: int, start: int) -> None:
    (s0, w0, m0), t0 = usage(servers), time.monotonic()
    results = drive(cell.scenario, servers, cell.concurrency, seconds, start)
    (s1, w1, m1), window = usage(servers), time.monotonic() - t0

    statuses: Counter[str] = Counter()
    for r in results:
        errors, counted = error_count(r)
        cell.errors += errors
        statuses += counted
    cell.statuses = dict(sorted(statuses.items()))
    cell.error_samples += samples(results)
    cell.requests = sum(int(r["requests"]) for r in results)
    cell.seconds = max(r["duration_us"] for r in results) / 1e6
    cell.rps = sum(r["requests"] / (r["duration_us"] / 1e6) for r in results)
    cell.p50_ms = max(r["latency_us"]["p50"] for r in results) / 1e3
    cell.p99_ms = max(r["latency_us"]["p99"] for r in results) / 1e3
    cell.max_ms = max(r["latency_us"]["max"] for r in results) / 1e3
    if s0 is not None and s1 is not None:
        cell.server_cpu_pct = 100 * (s1 - s0) / window
        cell.server_us_per_request = 1e6 * (s1 - s0) / max(1, cell.requests)
        if m0 is not None and m1 is not None:
            other = (m1 - m0) - (s1 - s0) - (w1 - w0)
            cell.other_cpu_pct = max(0.0, 100 * other / window)
    cell.client_cpu_pct = 100 * (w1 - w0) / window
    rss = [common.rss_mib(s.pid) for s in servers]
    cell.server_rss_mib = max((x for x in rss if x is not None), default=None)


def run_cell(scenario: str, c: int, repeat: int, args: argparse.Namespace, tmp: Path) -> Cell:
    cell = Cell(scenario=scenario, concurrency=c, replicas=args.replicas, repeat=repeat)
    name = f"{scenario}-c{c}-{repeat}"
    target: tuple[str, ...]
    if scenario.startswith("trivial"):
        target, database_url, run_ids = TRIVIAL_TARGET, None, []
    else:
        target = common.SERVICE_TARGET
        database_url = common.fresh_database(args.postgres, tmp / f"{name}.db")
        many = scenario == "decision-many"
        run_ids = [f"bench-many-{i}" for i in range(c)] if many else ["bench-one"]
    servers = [
        LiveServer(database_url, target=target, log=tmp / f"{name}-{i}.log")
        for i in range(args.replicas)
    ]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        with httpx.Client(base_url=servers[0].url, timeout=REQUEST_TIMEOUT_S) as http:
            for run_id in run_ids:
                r = http.put(f"/v1/runs/{run_id}", json=common.RUN_SPEC)
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"PUT /v1/runs/{run_id} -> {r.status_code} {r.text}")

        start = 1
        if args.warmup:
            warm = drive(scenario, servers, c, args.warmup, start)
            if errors := sum(error_count(r)[0] for r in warm):
                cell.error_samples += [f"warm-up: {errors} errors", *samples(warm)]
            start += max(step for r in warm for step in r["last_steps"])
        measure(cell, servers, args.seconds, start)

        with httpx.Client(base_url=servers[0].url, timeout=REQUEST_TIMEOUT_S) as http:
            for run_id in run_ids:
                r = http.get(f"/v1/runs/{run_id}")
                if r.status_code != 200:
                    cell.error_samples.append(f"GET /v1/runs/{run_id} -> {r.status_code}")
                    continue
                for key in ("decisions", "reductions"):
                    cell.run_counts[key] = cell.run_counts.get(key, 0) + r.json()["counts"][key]
        for server in servers:
            if not server.running:
                cell.error_samples.append(f"server died:\n{server.log_tail()}")
            elif server.log.stat().st_size:
                cell.server_log += server.log_tail()
    return cell


# -- report ------------------------------------------------------------------------------------


def median_cells(cells: list[Cell]) -> list[Cell]:
    """For each (scenario, c), the pass with the median req/s (the lower of two), with ratios."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.scenario, cell.concurrency), []).append(cell)
    chosen = []
    for group in groups.values():
        median = sorted(group, key=lambda cell: cell.rps)[(len(group) - 1) // 2]
        median.rps_all_repeats = [cell.rps for cell in group]
        median.errors_all_repeats = sum(cell.errors for cell in group)
        chosen.append(median)
    trivial = {cell.concurrency: cell for cell in chosen if cell.scenario == "trivial"}
    for cell in chosen:
        if (ref := trivial.get(cell.concurrency)) and ref.rps:
            cell.ratio = cell.rps / ref.rps
            cell.p50_ratio = cell.p50_ms / ref.p50_ms
            cell.p99_ratio = cell.p99_ms / ref.p99_ms
    return chosen


def _num(x: float | None, fmt: str = ",.0f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{unit}"


def print_table(cells: list[Cell], args: argparse.Namespace) -> None:
    where = "PostgreSQL" if args.postgres else "SQLite"
    title = f"lrpilot decisions vs trivial FastAPI endpoint: {where}, {args.replicas} replica(s)"
    if args.repeat > 1:
        title += f", median of {args.repeat} passes (errors: all passes)"
    table = Table(title=title)
    columns = ("scenario", "c", "req/s", "p50 ms", "p99 ms", "ratio", "p50 ×", "p99 ×",
               "req/s range", "errors", "server µs/req", "server CPU", "RSS MiB", "wrk CPU",
               "other CPU")  # fmt: skip
    for name in columns:
        left = name == "scenario"
        table.add_column(name, justify="left" if left else "right", no_wrap=left)
    for c in cells:
        spread = c.rps_all_repeats
        other = _num(c.other_cpu_pct, ".0f", " %")
        table.add_row(
            c.scenario,
            str(c.concurrency),
            _num(c.rps),
            _num(c.p50_ms, ".2f"),
            _num(c.p99_ms, ".2f"),
            _num(c.ratio, ".2f"),
            _num(c.p50_ratio, ".2f"),
            _num(c.p99_ratio, ".2f"),
            f"{min(spread):,.0f}-{max(spread):,.0f}" if len(spread) > 1 else "-",
            f"[bold red]{c.errors_all_repeats}[/]" if c.errors_all_repeats else "0",
            _num(c.server_us_per_request),
            _num(c.server_cpu_pct, ".0f", " %"),
            _num(c.server_rss_mib, ".0f"),
            _num(c.client_cpu_pct, ".0f", " %"),
            f"[bold yellow]{other}[/]" if (c.other_cpu_pct or 0) >= NOISY_PCT else other,
        )
    console.print(table)
    for c in cells:
        if c.run_counts:
            console.print(
                f"  {c.scenario} c={c.concurrency}: {c.run_counts['decisions']:,} decisions "
                f"stored, {c.run_counts['reductions']} reductions"
            )


def report_problems(all_cells: list[Cell]) -> bool:
    """Print what went wrong, loudly; True if any request failed."""
    noisy = [c for c in all_cells if (c.other_cpu_pct or 0) >= NOISY_PCT]
    if noisy:
        console.print(
            f"[bold yellow]other processes used >= {NOISY_PCT:.0f} % of a core in "
            f"{len(noisy)} cell(s): noise, not a baseline; rerun on a quiet machine[/]"
        )
    for cell in all_cells:
        if cell.server_log:
            console.print(f"[bold yellow]server log, {cell.scenario} c={cell.concurrency}:[/]")
            console.print(cell.server_log, markup=False)
    failed = [c for c in all_cells if c.errors or c.error_samples]
    if failed:
        console.rule("[bold red]ERRORS[/]")
    for cell in failed:
        console.print(
            f"[bold red]{cell.scenario} c={cell.concurrency} (pass {cell.repeat + 1}): "
            f"{cell.errors} errors, statuses {cell.statuses}[/]"
        )
        for sample in cell.error_samples:
            console.print(f"    {sample}", markup=False)
    return bool(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds a cell")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds first")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help="comma-separated")
    parser.add_argument(
        "--repeat", type=int, default=1, help="passes; each cell reports its median-req/s pass"
    )
    parser.add_argument(
        "--postgres", "--database-url", dest="postgres", metavar="URL",
        help="PostgreSQL instead of SQLite (its public schema is DROPPED for every cell)",
    )  # fmt: skip
    parser.add_argument(
        "--replicas", type=int, default=1, help="service processes a cell (>1: PostgreSQL only)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)

    concurrencies = [int(x) for x in args.concurrency.split(",") if x.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if not concurrencies or min(concurrencies) < 1 or args.repeat < 1 or args.seconds < 1:
        parser.error("concurrency, --repeat and --seconds must be >= 1")
    if args.postgres and args.postgres.startswith("sqlite"):
        parser.error("--postgres takes a PostgreSQL URL (SQLite is the default: a file a cell)")
    if args.replicas < 1 or (args.replicas > 1 and not args.postgres):
        parser.error("--replicas > 1 needs --postgres: replicas share a PostgreSQL database")
    out: Path = args.out or common.result_path("decisions")

    info = common.machine_info()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    info["wrk"] = wrk_version.split("  ")[0].strip() or None  # without its copyright
    common.print_header(info, f"{info['wrk']}; {common.servers_line(info)}")
    all_cells: list[Cell] = []
    t0 = time.monotonic()
    # Concurrency outside, scenarios inside: the cells a ratio compares run close in time.
    with tempfile.TemporaryDirectory(prefix="lrpilot-bench-") as tmp:
        for repeat in range(args.repeat):
            for c in concurrencies:
                for scenario in scenarios:
                    console.print(f"  [{repeat + 1}] {scenario:<14} c={c:<3} ...", end=" ")
                    cell = run_cell(scenario, c, repeat, args, Path(tmp))
                    bad = f" [bold red]{cell.errors} ERRORS[/]" if cell.errors else ""
                    console.print(
                        f"{cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} ms, "
                        f"p99 {cell.p99_ms:.2f} ms{bad}"
                    )
                    all_cells.append(cell)

    cells = sorted(
        median_cells(all_cells), key=lambda c: (scenarios.index(c.scenario), c.concurrency)
    )
    print_table(cells, args)
    failed = report_problems(all_cells)
    console.print(f"total {time.monotonic() - t0:.0f} s")

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "postgres")}
    settings["database"] = "postgresql" if args.postgres else "sqlite"  # no credentials
    result = {
        "command": common.command_line("bench_decisions.py", argv, args.postgres),
        "settings": {**settings, "run_spec": common.RUN_SPEC},
        "machine": info,
        "cells": [asdict(c) for c in cells],  # the median pass of each cell
        "all_cells": [asdict(c) for c in all_cells],
    }
    common.write_result(out, "decisions", result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
