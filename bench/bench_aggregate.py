"""An aggregated step of W ranks against W concurrent trivial requests, same run, same machine.

    python bench/bench_aggregate.py [--ranks 64,256] [--steps 24] [--warmup 3] [--repeat 1]
        [--pause-ms 20] [--postgres-url URL] [--out bench/results/aggregate-<time>.json]

Issue 8's speed requirement: an aggregated step of 64 and of 256 ranks, from the first post to
the last rank's answer, takes at most 2x the time of the same number of concurrent trivial
requests.

Every pass starts two fresh servers with tests.harness.LiveServer (``python -m uvicorn <app>
--host 127.0.0.1 --port P --workers 1 --no-access-log --log-level warning``, the same for
both): the service on a fresh database migrated first with ``lrpilot db upgrade`` (a new SQLite
file; with ``--postgres-url``, that database's public schema DROPPED and migrated again), and
bench/trivial_app.py. For each W, a run ``agg-w<W>`` is created in aggregated mode
(``"aggregate": {"timeout_s": 60, "on_timeout": "decide"}``) and the bench opens W keep-alive
connections to each server before anything is timed. Then, after ``--warmup`` unmeasured
rounds, ``--steps`` measured rounds; a round is, in an order that rotates from round to round:

  aggregated    W POSTs /v1/runs/agg-w<W>/observations, one a rank and a connection, all of
                the same step: ``{"step", "value", "rank", "world_size": W, "weight"}``
  trivial       W POSTs /echo of the trivial app, ``{"step", "value"}`` (an ``async def``
                route with a pydantic body: bench_decisions' denominator): the ratio's reference
  trivial-get   W GETs /healthz of the trivial app (no body at all): informative

A side's step time runs from just before its first request is written to the moment its last
answer is read whole. The load generator is this process: one asyncio Protocol a connection,
the requests pre-built as bytes and written one after the other with no await in between (the
``send ms`` column: how long writing all W took), each answer parsed from its Content-Length.
The servers are separate processes; ``client CPU`` is this process's CPU time during a step.

Every aggregated step is checked: every answer a 200, the W answers the same bytes, the
decision of the step with the W ranks in rank order (each the value and weight that rank
sent, no ``missing_ranks``), its value the weighted mean of what was sent
(``lrpilot.entries.weighted_mean``), its seq one more than the previous step's. At the end of
a pass the run holds one decision a step and its chain verifies (``POST /verify``). Any failure
is printed loudly and the exit status is 1.

Reported, for each W and side: the median and p90 of the step times of a pass, then the median
of those over the ``--repeat`` passes; ratio = the aggregated median / the trivial median of
the same pass (median over passes, with their range).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

import lrpilot
from common import (
    RUN_SPEC,
    SERVICE_TARGET,
    TRIVIAL_TARGET,
    command_line,
    console,
    cpu_seconds,
    fresh_database,
    machine_busy_seconds,
    machine_info,
    metric_value,
    print_header,
    result_path,
    servers_line,
    write_result,
)
from lrpilot.entries import weighted_mean
from tests.harness import LiveServer

AGGREGATE = {"timeout_s": 60, "on_timeout": "decide"}
SIDES = ("aggregated", "trivial", "trivial-get")
REFERENCE = "trivial"  # the ratio's denominator
ANSWER_TIMEOUT_S = 120.0  # a round not answered within this is an error (the run's timeout: 60)
MAX_ERROR_SAMPLES = 20


# -- the load generator: one Protocol a keep-alive connection ---------------------------------


class Round:
    """One request a connection, all sent at once; done when the last answer is read."""

    def __init__(self, n: int) -> None:
        self.outstanding = n
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_answer = math.inf
        self.last_answer = 0.0

    def answered(self, at: float) -> None:
        self.first_answer = min(self.first_answer, at)
        self.last_answer = max(self.last_answer, at)
        self.outstanding -= 1
        if self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)

    def failed(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class Connection(asyncio.Protocol):
    """An HTTP/1.1 keep-alive connection that has at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._head_end = -1
        self._need = -1  # bytes of buffer that hold the whole answer, once the head is read
        self._round: Round | None = None
        self.status = 0
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._round is not None:
            self._round.failed(ConnectionError(f"the server closed a connection: {exc}"))
            self._round = None

    def expect(self, round_: Round) -> None:
        self._round = round_
        self.status, self.body = 0, b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._need < 0:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).split(b"\r\n")
            self.status = int(head[0].split(b" ", 2)[1])
            length = None
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    self._fail(f"unsupported Transfer-Encoding {value.strip()!r}")
                    return
            if length is None:
                self._fail("an answer without Content-Length")
                return
            self._head_end = end + 4
            self._need = self._head_end + length
        if len(self._buf) < self._need:
            return
        at = time.perf_counter()
        if len(self._buf) > self._need:
            self._fail("bytes after the answer (nothing was asked)")
            return
        self.body = bytes(self._buf[self._head_end :])
        self._buf.clear()
        self._need = -1
        round_, self._round = self._round, None
        if round_ is None:
            self._fail("an answer nobody asked for")
        else:
            round_.answered(at)

    def _fail(self, why: str) -> None:
        if self._round is not None:
            self._round.failed(RuntimeError(why))
            self._round = None
        if self.transport is not None:
            self.transport.close()


class Pool:
    """``n`` pre-opened keep-alive connections to one server."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.conns: list[Connection] = []
        self.reconnects = 0  # connections the server closed between rounds (e.g. idle timeout)

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, "127.0.0.1", self.port)
        return conn

    async def ready(self) -> None:
        """Every connection open (untimed): opened now, or reopened if the server closed it."""
        if not self.conns:
            self.conns = list(await asyncio.gather(*(self._open() for _ in range(self.n))))
            return
        for i, conn in enumerate(self.conns):
            if conn.closed:
                self.conns[i] = await self._open()
                self.reconnects += 1

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()


@dataclass
class Shot:
    """One round of one side: W requests, their answers and the times."""

    wall_s: float
    send_s: float  # writing all W requests
    first_s: float  # first answer read
    client_cpu_s: float
    server_cpu_s: float | None
    machine_busy_s: float | None
    statuses: list[int]
    bodies: list[bytes]


async def fire(pool: Pool, requests: list[bytes], server_pid: int) -> Shot:
    """Write one request on each connection, back to back; wait for every answer."""
    await pool.ready()
    conns = pool.conns[: len(requests)]
    round_ = Round(len(requests))
    for conn in conns:
        conn.expect(round_)
    server0, busy0, cpu0 = cpu_seconds(server_pid), machine_busy_seconds(), time.process_time()
    t0 = time.perf_counter()
    for conn, request in zip(conns, requests, strict=True):
        assert conn.transport is not None
        conn.transport.write(request)
    t_sent = time.perf_counter()
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            await round_.done
    except TimeoutError:
        raise RuntimeError(
            f"{round_.outstanding} of {len(requests)} answers missing after {ANSWER_TIMEOUT_S} s"
        ) from None
    cpu1, busy1, server1 = time.process_time(), machine_busy_seconds(), cpu_seconds(server_pid)
    return Shot(
        wall_s=round_.last_answer - t0,
        send_s=t_sent - t0,
        first_s=round_.first_answer - t0,
        client_cpu_s=cpu1 - cpu0,
        server_cpu_s=None if server0 is None or server1 is None else server1 - server0,
        machine_busy_s=None if busy0 is None or busy1 is None else busy1 - busy0,
        statuses=[conn.status for conn in conns],
        bodies=[conn.body for conn in conns],
    )


def http_request(method: str, path: str, port: int, body: dict[str, Any] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    payload = json.dumps(body, separators=(",", ":")).encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


# -- the workload ------------------------------------------------------------------------------


def rank_report(step: int, rank: int, world: int) -> dict[str, Any]:
    """Rank r's report of a step: its own value (a seed a rank) and weight (its samples)."""
    return {
        "step": step,
        "value": metric_value(rank + 1, step),
        "rank": rank,
        "world_size": world,
        "weight": float(100 + rank % 7),
    }


def check_aggregated(
    shot: Shot, run_id: str, step: int, reports: list[dict[str, Any]], last_seq: int | None
) -> tuple[list[str], int | None]:
    """What is wrong with an aggregated step's answers (nothing: []), and the decision's seq."""
    bad = [(rank, s) for rank, s in enumerate(shot.statuses) if s != 200]
    if bad:
        samples = [f"rank {rank}: {status} {shot.bodies[rank][:300]!r}" for rank, status in bad[:5]]
        return [
            f"{run_id} step {step}: {len(bad)} of {len(reports)} answers not 200",
            *samples,
        ], None
    errors = []
    distinct = len(set(shot.bodies))
    if distinct != 1:
        errors.append(f"{run_id} step {step}: {distinct} different answers, not one decision")
    try:
        decision = json.loads(shot.bodies[0])
    except ValueError as exc:
        return [*errors, f"{run_id} step {step}: an answer is not JSON: {exc}"], None
    expected_ranks = [
        {"rank": r["rank"], "value": r["value"], "weight": r["weight"]} for r in reports
    ]
    mean = weighted_mean((r["value"], r["weight"]) for r in reports)
    if decision.get("run_id") != run_id or decision.get("step") != step:
        errors.append(f"{run_id} step {step}: the decision is of {decision.get('step')}")
    if decision.get("ranks") != expected_ranks:
        got = decision.get("ranks")
        n = len(got) if isinstance(got, list) else got
        errors.append(f"{run_id} step {step}: ranks listed are not the W sent ({n} entries)")
    if "missing_ranks" in decision:
        errors.append(f"{run_id} step {step}: missing_ranks {decision['missing_ranks']}")
    if decision.get("value") != mean:
        errors.append(f"{run_id} step {step}: value {decision.get('value')!r} != mean {mean!r}")
    seq = decision.get("seq")
    if last_seq is not None and seq != last_seq + 1:
        errors.append(f"{run_id} step {step}: seq {seq} after {last_seq}")
    return errors, seq if isinstance(seq, int) else None


# -- a pass ------------------------------------------------------------------------------------


@dataclass
class SideResult:
    """One side at one W in one pass: its measured rounds."""

    side: str
    ranks: int
    repeat: int
    database: str
    wall_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    client_cpu_ms: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)
    other_cpu_ms: list[float] = field(default_factory=list)  # the machine minus both
    median_ms: float = math.nan
    p90_ms: float = math.nan
    ratio: float | None = None  # median / the reference's median, this pass
    reconnects: int = 0


@dataclass
class Pass:
    repeat: int
    database: str
    sides: list[SideResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    run_counts: dict[str, Any] = field(default_factory=dict)
    server_log: str = ""


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def record(result: SideResult, shot: Shot) -> None:
    result.wall_ms.append(1e3 * shot.wall_s)
    result.send_ms.append(1e3 * shot.send_s)
    result.first_ms.append(1e3 * shot.first_s)
    result.client_cpu_ms.append(1e3 * shot.client_cpu_s)
    if shot.server_cpu_s is not None:
        result.server_cpu_ms.append(1e3 * shot.server_cpu_s)
        if shot.machine_busy_s is not None:
            other = shot.machine_busy_s - shot.server_cpu_s - shot.client_cpu_s
            result.other_cpu_ms.append(max(0.0, 1e3 * other))


async def measure_ranks(
    w: int, service: LiveServer, trivial: LiveServer, args: argparse.Namespace, p: Pass
) -> list[SideResult]:
    run_id = f"agg-w{w}"
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        r = await http.put(f"/v1/runs/{run_id}", json={**RUN_SPEC, "aggregate": AGGREGATE})
        if r.status_code != 201:
            raise RuntimeError(f"PUT /v1/runs/{run_id} -> {r.status_code} {r.text}")
    pools = {
        "aggregated": (Pool(service.port, w), service.pid),
        "trivial": (Pool(trivial.port, w), trivial.pid),
        "trivial-get": (Pool(trivial.port, w), trivial.pid),
    }
    results = {side: SideResult(side, w, p.repeat, p.database) for side in SIDES}
    get = http_request("GET", "/healthz", trivial.port)
    last_seq: int | None = None
    try:
        for pool, _ in pools.values():
            await pool.ready()
        for i in range(args.warmup + args.steps):
            step = i + 1
            measured = i >= args.warmup
            order = SIDES[i % 3 :] + SIDES[: i % 3]  # each side first, second, last alike
            for side in order:
                pool, pid = pools[side]
                if side == "aggregated":
                    reports = [rank_report(step, rank, w) for rank in range(w)]
                    path = f"/v1/runs/{run_id}/observations"
                    requests = [http_request("POST", path, service.port, r) for r in reports]
                elif side == "trivial":
                    body = {"step": step, "value": metric_value(0, step)}
                    requests = [http_request("POST", "/echo", trivial.port, body)] * w
                else:
                    requests = [get] * w
                try:
                    shot = await fire(pool, requests, pid)
                except (RuntimeError, ConnectionError, OSError) as exc:
                    p.errors.append(f"{side} W={w} step {step}: {exc}")
                    return list(results.values())
                if side == "aggregated":
                    errors, last_seq = check_aggregated(shot, run_id, step, reports, last_seq)
                else:
                    bad = [s for s in shot.statuses if s != 200]
                    errors = [f"{side} W={w} step {step}: {len(bad)} not 200: {bad[:5]}"] * bool(
                        bad
                    )
                p.errors += errors
                if measured:
                    record(results[side], shot)
                if args.pause_ms:
                    await asyncio.sleep(args.pause_ms / 1e3)
    finally:
        for pool, _ in pools.values():
            pool.close()
    for side, (pool, _) in pools.items():
        results[side].reconnects = pool.reconnects

    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
        run = (await http.get(f"/v1/runs/{run_id}")).json()
        decisions = run["counts"]["decisions"]
        if decisions != args.warmup + args.steps:
            p.errors.append(f"{run_id}: {decisions} decisions, {args.warmup + args.steps} steps")
        verified = (await http.post(f"/v1/runs/{run_id}/verify", json={})).json()
        if verified.get("ok") is not True:
            p.errors.append(f"{run_id}: verify says {verified}")
        p.run_counts[run_id] = {**run["counts"], "verified": verified.get("ok")}
    return list(results.values())


def run_pass(repeat: int, database: str, args: argparse.Namespace, tmp: Path) -> Pass:
    p = Pass(repeat=repeat, database=database)
    postgres = args.postgres_url if database == "postgresql" else None
    url = fresh_database(postgres, tmp / f"aggregate-{repeat}.db")
    service = LiveServer(url, target=SERVICE_TARGET, log=tmp / f"service-{repeat}.log")
    trivial = LiveServer(target=TRIVIAL_TARGET, log=tmp / f"trivial-{repeat}.log")
    with service, trivial:
        for w in args.ranks:
            console.print(f"  [{repeat + 1}] {database} W={w:<4} ...", end=" ")
            t0 = time.monotonic()
            sides = asyncio.run(measure_ranks(w, service, trivial, args, p))
            for side in sides:
                side.median_ms = statistics.median(side.wall_ms) if side.wall_ms else math.nan
                side.p90_ms = quantile(side.wall_ms, 0.9)
            ref = next(s for s in sides if s.side == REFERENCE)
            for side in sides:
                if ref.median_ms > 0:
                    side.ratio = side.median_ms / ref.median_ms
            p.sides += sides
            agg = sides[0]
            bad = f" [bold red]{len(p.errors)} ERRORS[/]" if p.errors else ""
            console.print(
                f"aggregated {agg.median_ms:.1f} ms, trivial {ref.median_ms:.1f} ms, "
                f"ratio {agg.ratio or math.nan:.2f} ({time.monotonic() - t0:.0f} s){bad}"
            )
        for server in (service, trivial):
            if not server.running:
                p.errors.append(f"server died:\n{server.log_tail()}")
            elif server.log.stat().st_size:
                p.server_log += server.log_tail()
    return p


# -- report ------------------------------------------------------------------------------------


@dataclass
class Summary:
    database: str
    side: str
    ranks: int
    passes: int
    median_ms: float  # the median over passes of each pass's median
    p90_ms: float  # the median over passes of each pass's p90
    ratio: float | None  # the median over passes of each pass's ratio
    ratio_range: tuple[float, float] | None
    medians_all_passes: list[float]
    send_ms: float  # medians over every step of every pass
    first_ms: float
    client_cpu_ms: float  # means over every step of every pass
    server_cpu_ms: float | None
    other_cpu_ms: float | None
    reconnects: int


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _mean(xs: list[float]) -> float:
    # CPU times come from /proc in clock ticks (10 ms): a mean over many steps, not a median
    return statistics.fmean(xs) if xs else math.nan


def summarize(passes: list[Pass]) -> list[Summary]:
    groups: dict[tuple[str, int, str], list[SideResult]] = {}
    for p in passes:
        for s in p.sides:
            groups.setdefault((s.database, s.ranks, s.side), []).append(s)
    out = []
    for (database, ranks, side), results in groups.items():
        ratios = [s.ratio for s in results if s.ratio is not None]
        server = [x for s in results for x in s.server_cpu_ms]
        other = [x for s in results for x in s.other_cpu_ms]
        client = [x for s in results for x in s.client_cpu_ms]
        out.append(
            Summary(
                database=database,
                side=side,
                ranks=ranks,
                passes=len(results),
                median_ms=_median([s.median_ms for s in results]),
                p90_ms=_median([s.p90_ms for s in results]),
                ratio=_median(ratios) if ratios else None,
                ratio_range=(min(ratios), max(ratios)) if ratios else None,
                medians_all_passes=[s.median_ms for s in results],
                send_ms=_median([x for s in results for x in s.send_ms]),
                first_ms=_median([x for s in results for x in s.first_ms]),
                client_cpu_ms=_mean(client),
                server_cpu_ms=_mean(server) if server else None,
                other_cpu_ms=_mean(other) if other else None,
                reconnects=sum(s.reconnects for s in results),
            )
        )
    return sorted(out, key=lambda s: (s.database != "sqlite", s.ranks, SIDES.index(s.side)))


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}"


def print_table(summaries: list[Summary], database: str, repeat: int) -> None:
    rows = [s for s in summaries if s.database == database]
    where = "SQLite" if database == "sqlite" else "PostgreSQL"
    title = (
        f"An aggregated step vs W concurrent trivial requests: {where}, one worker; "
        f"median of {repeat} pass(es) (each the median of its steps)"
    )
    table = Table(title=title)
    columns = ("W", "side", "median ms", "p90 ms", "ratio", "ratio range", "send ms",
               "1st answer ms", "server CPU ms", "client CPU ms", "other CPU ms",
               "median range")  # fmt: skip
    for name in columns:
        left = name == "side"
        table.add_column(name, justify="left" if left else "right", no_wrap=left or name == "W")
    for s in rows:
        ratio = _num(s.ratio, ".2f")
        if s.side == "aggregated" and s.ratio is not None:
            ratio = f"[bold {'green' if s.ratio <= 2 else 'red'}]{ratio}[/]"
        spread, medians, ref = s.ratio_range, s.medians_all_passes, s.side == REFERENCE
        table.add_row(
            str(s.ranks),
            s.side,
            _num(s.median_ms),
            _num(s.p90_ms),
            ratio,
            f"{spread[0]:.2f}-{spread[1]:.2f}" if spread and s.passes > 1 and not ref else "-",
            _num(s.send_ms, ".2f"),
            _num(s.first_ms),
            _num(s.server_cpu_ms),
            _num(s.client_cpu_ms),
            _num(s.other_cpu_ms),
            f"{min(medians):.0f}-{max(medians):.0f}" if s.passes > 1 else "-",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="64,256", help="world sizes W, comma-separated")
    parser.add_argument("--steps", type=int, default=24, help="measured rounds a W")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--repeat", type=int, default=1, help="passes, each on fresh servers")
    parser.add_argument(
        "--pause-ms", type=float, default=20.0, help="idle time after each side's step"
    )
    parser.add_argument(
        "--postgres-url", "--postgres", dest="postgres_url", metavar="URL",
        default=os.environ.get("LRPILOT_TEST_POSTGRES_URL"),
        help="also measure on PostgreSQL (its public schema is DROPPED every pass); "
        "default: $LRPILOT_TEST_POSTGRES_URL",
    )  # fmt: skip
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    args.ranks = [int(x) for x in args.ranks.split(",") if x.strip()]
    if not args.ranks or min(args.ranks) < 1 or args.steps < 1 or args.repeat < 1:
        parser.error("--ranks, --steps and --repeat must be >= 1")
    if args.warmup < 0 or args.pause_ms < 0:
        parser.error("--warmup and --pause-ms must be >= 0")
    if args.postgres_url and not args.postgres_url.startswith("postgresql"):
        parser.error("--postgres-url takes a PostgreSQL URL")
    databases = [] if args.no_sqlite else ["sqlite"]
    if args.postgres_url:
        databases.append("postgresql")
    if not databases:
        parser.error("--no-sqlite needs --postgres-url")
    out: Path = args.out or result_path("aggregate")

    info = machine_info()
    server = servers_line(info)
    # the service's code as the servers import it (PYTHONPATH=<an export>/service measures
    # another tree than the working one; the servers inherit the environment)
    info["lrpilot_source"] = str(Path(lrpilot.__file__).resolve().parent)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print_header(info, f"load average {load}; {server}; lrpilot from {info['lrpilot_source']}")
    passes: list[Pass] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lrpilot-bench-aggregate-") as tmp:
        for repeat in range(args.repeat):
            for database in databases:
                passes.append(run_pass(repeat, database, args, Path(tmp)))
    elapsed = time.monotonic() - t0
    info["loadavg_at_end"] = list(os.getloadavg())

    summaries = summarize(passes)
    for database in databases:
        print_table(summaries, database, args.repeat)
    if reconnected := [s for s in summaries if s.reconnects]:
        console.print(
            "[yellow]connections the servers closed between rounds (reopened, untimed): "
            + ", ".join(f"{s.database} W={s.ranks} {s.side}: {s.reconnects}" for s in reconnected)
            + "[/]"
        )
    for p in passes:
        if p.server_log:
            console.print(f"[bold yellow]server log, {p.database} pass {p.repeat + 1}:[/]")
            console.print(p.server_log, markup=False)
    failed = [p for p in passes if p.errors]
    if failed:
        console.rule("[bold red]ERRORS[/]")
        for p in failed:
            console.print(f"[bold red]{p.database} pass {p.repeat + 1}: {len(p.errors)} errors[/]")
            for error in p.errors[:MAX_ERROR_SAMPLES]:
                console.print(f"    {error}", markup=False)
    console.print(
        f"total {elapsed:.0f} s; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in info['loadavg_at_end'])}"
    )

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "postgres_url")}
    settings["databases"] = databases  # never the URL: it may hold a password
    result = {
        "command": command_line("bench_aggregate.py", argv, args.postgres_url),
        "settings": {**settings, "run_spec": {**RUN_SPEC, "aggregate": AGGREGATE}},
        "machine": info,
        "elapsed_s": elapsed,
        "summary": [asdict(s) for s in summaries],
        "passes": [asdict(p) for p in passes],
        "ok": not failed,
    }
    write_result(out, "aggregate", result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
