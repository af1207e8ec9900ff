"""Thousands of requests waiting on one replica for one decision: long-poll readers, and the
ranks of one aggregated step.

    python bench/bench_waiters.py [--waiters 4096] [--mode reference,longpoll,aggregated]
        [--postgres-url URL] [--out FILE]

Issue 14: 4,096 long-poll waiters on one replica, and 4,096 ranks reporting one aggregated
step, on each database: no errors, the decision reaches every waiter within a second of its
commit, and ``/healthz`` p99 stays within 2x of idle.

One server, ``lrpilot serve`` under tests.harness.LiveServer (default settings), on a fresh
database (a new SQLite file; with ``--postgres-url``, that database's public schema DROPPED and
migrated again). A thread probes ``GET /healthz`` on a kept connection every 10 ms throughout;
its p99 and max are reported for each phase: idle (``--idle`` s before any waiter), then the
phases of the mode.

longpoll     a run in leader mode holds a decision at step 10; W connections each send
             ``GET /v1/runs/lp/lr?step=20&wait=60``. Phases: arrival (from the first request
             written until the server's CPU is quiet: every request parsed, routed and
             waiting; or ``--settle`` s, for a server whose waiters never let it rest),
             waiting (``--hold`` s of W waiters; the server's CPU share then is reported),
             wake (one more connection posts the observation of step 20; until the last
             waiter's answer). Latency: from the moment
             that POST was written (before its commit: an upper bound) to each waiter's answer;
             the server's CPU time of the wake phase. Checked: every answer a 200, ``certain``
             true, the seq of the decision posted, none answered before it.
reference    the reference, measured in the same run: the same shape as longpoll against
             bench/trivial_app.py (HTTP, FastAPI and uvicorn alone): W connections send
             ``GET /hold``, which waits until one more connection posts ``/release``. What
             the service adds to the arrival and the wake of W requests is the difference.
aggregated   a run in aggregated mode; W connections, one a rank, report step 1 with
             ``world_size`` W. Phases as for longpoll: arrival (W-1 ranks post at once,
             until the server's CPU is quiet), waiting (``--hold`` s of W-1 ranks waiting),
             wake (the last rank posts: its report decides the step; until the last rank's
             answer). Latency: from the moment the last report was written (before the
             commit: an upper bound) to each rank's answer; the CPU time of the server and
             of this process from the first answer to the last. Each rank asks for gzip, as
             httpx does: all W get the same compressed bytes, which are checked equal, and
             one is decompressed to check the decision. A 503 (a bounded wait for the
             database ran out) is posted again after its Retry-After, at most 10 times, as
             lrpilot_client does; the retries are counted. Checked: every answer a 200, none
             before the last report, all W the same bytes, W ranks in the decision.

The load generator is this process (asyncio streams, requests pre-built as bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from common import (
    RUN_SPEC,
    TRIVIAL_TARGET,
    all_descriptors,
    command_line,
    console,
    cpu_seconds,
    figures_table,
    fresh_database,
    machine_info,
    percentile,
    print_header,
    write_result,
)
from tests.harness import LiveServer

PHASES = ("idle", "arrival", "waiting", "wake")  # the /healthz columns
LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
MAX_RETRIES = 10  # a rank posts again at most this often after a 503


class HealthProbe:
    """``GET /healthz`` on a kept connection every ``every_s``, on a thread: (when, seconds)."""

    def __init__(self, url: str, every_s: float = 0.01) -> None:
        self.url, self.every_s = url, every_s
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    ok = http.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.samples.append((started, time.monotonic() - started))
                self.failures += not ok
                time.sleep(self.every_s)

    def start(self) -> HealthProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def p99_ms(self, start: float, end: float) -> float:
        return 1e3 * percentile(self._within(start, end), 0.99)

    def max_ms(self, start: float, end: float) -> float:
        """The longest probe: a stall of the loop is one probe however long it lasts (the
        probes are sequential), so a short stall in a long phase is in the max, not the p99."""
        return 1e3 * max(self._within(start, end), default=float("nan"))

    def _within(self, start: float, end: float) -> list[float]:
        return [s for at, s in self.samples if start <= at <= end]


def request(
    method: str, path: str, body: dict[str, Any] | None = None, gzip_ok: bool = False
) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(data)}\r\n"
    if gzip_ok:  # as httpx (and so lrpilot_client) asks by default
        head += "accept-encoding: gzip, deflate\r\n"
    if body is not None:
        head += "content-type: application/json\r\n"
    return (head + "\r\n").encode() + data


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes, float]:
    head = await reader.readuntil(b"\r\n\r\n")
    match = LENGTH.search(head)
    body = await reader.readexactly(int(match.group(1)) if match else 0)
    return int(head[9:12]), body, time.monotonic()


async def connect(n: int, port: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for at in range(0, n, 512):  # in batches: the listen backlog is finite
        conns += await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(512, n - at)))
        )
    return conns


async def quiet(pid: int) -> None:
    """Until the server's CPU rests (under 10 % over half a second): every request is in."""
    for _ in range(240):
        before = cpu_seconds(pid) or 0.0
        await asyncio.sleep(0.5)
        if (cpu_seconds(pid) or 0.0) - before < 0.05:
            return


async def longpoll(
    port: int, pid: int, waiters: int, hold_s: float, settle_s: float | None, reference: bool
) -> dict[str, Any]:
    """The long-poll mode; ``reference``: the same shape against the trivial app."""
    readers = await connect(waiters, port)
    ask = request("GET", "/hold" if reference else "/v1/runs/lp/lr?step=20&wait=60")
    phases = {"arrival": time.monotonic()}
    for _, writer in readers:
        writer.write(ask)
    pending = [asyncio.ensure_future(answer(reader)) for reader, _ in readers]
    if settle_s is None:
        await quiet(pid)
    else:
        await asyncio.sleep(settle_s)
    phases["waiting"] = time.monotonic()
    cpu_waiting = cpu_seconds(pid)
    await asyncio.sleep(hold_s)
    early = sum(p.done() for p in pending)
    cpu_at_decision = cpu_seconds(pid)
    # (connected now: a connection silent for the header timeout is closed)
    poster_r, poster_w = await asyncio.open_connection("127.0.0.1", port)
    phases["wake"] = posted_at = time.monotonic()
    if reference:
        poster_w.write(request("POST", "/release", {}))
    else:
        poster_w.write(request("POST", "/v1/runs/lp/observations", {"step": 20, "value": 0.4}))
    status, body, _ = await answer(poster_r)
    assert status == 200, body
    seq = None if reference else json.loads(body)["seq"]
    answers = await asyncio.gather(*pending)
    phases["end"] = time.monotonic()
    cpu_waking = (cpu_seconds(pid) or 0) - (cpu_at_decision or 0)
    errors = [
        (s, b[:200])
        for s, b, _ in answers
        if s != 200
        or (not reference and (not json.loads(b)["certain"] or json.loads(b)["seq"] != seq))
    ]
    for _, writer in [*readers, (poster_r, poster_w)]:
        writer.close()
    return {
        "phases": phases,
        "answered_before_the_decision": early,
        "server_cpu_wake_s": cpu_waking,
        "server_cpu_share_waiting": ((cpu_at_decision or 0) - (cpu_waiting or 0)) / hold_s,
        "errors": len(errors) + early,
        "error_samples": [repr(e) for e in errors[:3]],
        "latencies": [at - posted_at for _, _, at in answers],
    }


async def aggregated(
    port: int, pid: int, ranks: int, hold_s: float, settle_s: float | None
) -> dict[str, Any]:
    conns = await connect(ranks, port)
    posts = [
        request(
            "POST",
            "/v1/runs/agg/observations",
            {"step": 1, "value": 1.0 + r / ranks, "rank": r, "world_size": ranks},
            gzip_ok=True,
        )
        for r in range(ranks)
    ]
    last = ranks - 1  # the rank whose report decides the step, posted after the others wait
    retried = [0] * ranks
    woke: list[float] = []  # at the first answer: the server's CPU time, then this process's

    async def rank(r: int) -> tuple[int, bytes, float]:
        """Rank r's answer; a 503 (a bounded wait ran out) is posted again after its
        Retry-After, as lrpilot_client does: the report counts once."""
        reader, writer = conns[r]
        writer.write(posts[r])
        while True:
            status, body, at = await answer(reader)
            if not woke:
                woke.extend((cpu_seconds(pid) or 0.0, time.process_time()))
            if status != 503 or retried[r] == MAX_RETRIES:
                return status, body, at
            retried[r] += 1
            await asyncio.sleep(1.0)
            writer.write(posts[r])

    phases = {"arrival": time.monotonic()}
    pending = [asyncio.ensure_future(rank(r)) for r in range(last)]
    if settle_s is None:
        await quiet(pid)
    else:
        await asyncio.sleep(settle_s)
    phases["waiting"] = time.monotonic()
    await asyncio.sleep(hold_s)
    early = sum(p.done() for p in pending)
    phases["wake"] = posted_at = time.monotonic()
    answers = await asyncio.gather(rank(last), *pending)
    phases["end"] = time.monotonic()
    woken = ((cpu_seconds(pid) or 0.0) - woke[0], time.process_time() - woke[1])
    bodies = {b for _, b, _ in answers}
    errors = [(s, b[:200]) for s, b, _ in answers if s != 200]
    decision = json.loads(gzip.decompress(answers[0][1])) if not errors else {}
    if not errors and (len(bodies) != 1 or len(decision["ranks"]) != ranks):
        errors.append((0, b"the ranks got different answers, or not every rank counted"))
    for _, writer in conns:
        writer.close()
    return {
        "phases": phases,
        "answered_before_the_decision": early,
        "retried_503": sum(retried),
        "ranks_retried": sum(n > 0 for n in retried),
        "errors": len(errors) + early,
        "error_samples": [repr(e) for e in errors[:3]],
        "latencies": [at - posted_at for _, _, at in answers],
        "answer_bytes": len(answers[0][1]),  # as sent: gzipped
        "decision_bytes": len(json.dumps(decision, separators=(",", ":"))),
        # from the first answer to the last: what answering them cost each side
        "wake_server_cpu_s": woken[0],
        "wake_bench_cpu_s": woken[1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=4096)
    parser.add_argument("--mode", default="reference,longpoll,aggregated")
    parser.add_argument("--hold", type=float, default=5.0, help="s of waiting waiters")
    parser.add_argument(
        "--settle", type=float, default=None, help="s of arrival (default: until CPU rests)"
    )
    parser.add_argument("--idle", type=float, default=5.0, help="s of idle /healthz probes")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    all_descriptors()  # this process holds every connection of the load it makes
    info = machine_info()
    print_header(info, "server: lrpilot serve (default settings)")
    database = "PostgreSQL" if args.postgres_url else "SQLite"
    table = figures_table(
        f"{args.waiters} waiters, one decision ({database}): latency to every waiter; "
        "/healthz p99 and longest probe (ms) by phase",
        ["mode", "errors", "p50 ms", "p99 ms", "max ms", *(f"{p} p99/max" for p in PHASES)],
    )
    results: dict[str, Any] = {}
    for mode in args.mode.split(","):
        target = TRIVIAL_TARGET if mode == "reference" else None
        db_file = Path(tempfile.mkdtemp()) / "bench.db"
        url = None if target else fresh_database(args.postgres_url, db_file)
        with (
            LiveServer(url, target=target) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            if mode == "reference":
                work = longpoll(server.port, server.pid, args.waiters, args.hold, args.settle, True)
            elif mode == "longpoll":
                assert http.put("/v1/runs/lp", json=RUN_SPEC).status_code == 201
                first = http.post("/v1/runs/lp/observations", json={"step": 10, "value": 0.5})
                assert first.status_code == 200
                work = longpoll(
                    server.port, server.pid, args.waiters, args.hold, args.settle, False
                )
            else:
                spec = {**RUN_SPEC, "aggregate": {"timeout_s": 600, "on_timeout": "refuse"}}
                assert http.put("/v1/runs/agg", json=spec).status_code == 201
                work = aggregated(server.port, server.pid, args.waiters, args.hold, args.settle)
            probe = HealthProbe(server.url).start()
            time.sleep(args.idle)
            idle_end = time.monotonic()
            cpu0 = cpu_seconds(server.pid)
            figures = asyncio.run(work)
            cpu1 = cpu_seconds(server.pid)
            probe.stop()
        lat = figures.pop("latencies")
        marks = sorted(figures.pop("phases").items(), key=lambda item: item[1])
        spans = [("idle", 0.0, idle_end)]
        spans += [(phase, start, end) for (phase, start), (_, end) in itertools.pairwise(marks)]
        healthz = {phase: probe.p99_ms(start, end) for phase, start, end in spans}
        longest = {phase: probe.max_ms(start, end) for phase, start, end in spans}
        figures.update(
            p50_ms=1e3 * statistics.median(lat),
            p99_ms=1e3 * percentile(lat, 0.99),
            max_ms=1e3 * max(lat),
            healthz_p99_ms=healthz,
            healthz_max_ms=longest,
            healthz_failures=probe.failures,
            server_cpu_s=(cpu1 or 0) - (cpu0 or 0),
        )
        results[mode] = figures
        by_phase = [f"{healthz[p]:.0f}/{longest[p]:.0f}" if p in healthz else "-" for p in PHASES]
        table.add_row(
            mode, f"{figures['errors']} ({figures.get('retried_503', 0)} 503 retried)",
            f"{figures['p50_ms']:.0f}", f"{figures['p99_ms']:.0f}",
            f"{figures['max_ms']:.0f}", *by_phase,
        )  # fmt: skip
        console.print(mode, figures)
    console.print(table)
    result = {
        "command": command_line("bench_waiters.py", argv, args.postgres_url),
        "machine": info,
        "database": database,
        "waiters": args.waiters,
        "results": results,
    }
    write_result(args.out, "waiters", result)
    failed = any(r["errors"] or r["healthz_failures"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
