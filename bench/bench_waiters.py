"""Thousands of requests waiting on one replica for one decision: long-poll readers, and the
ranks of one aggregated step.

    python bench/bench_waiters.py [--waiters 4096] [--mode longpoll,aggregated]
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
aggregated   a run in aggregated mode; W connections, one a rank, post step 1 with
             ``world_size`` W, all written at once; the last report in decides. One phase,
             reporting, from the first request written to the last answer. Latency: from the
             first answer read (the decision is committed by then) to each other answer.
             A 503 (a bounded wait for the database ran out) is posted again after its
             Retry-After, at most 10 times, as lrpilot_client does; the retries are counted.
             Checked: every answer a 200, all W the same bytes, W ranks in the decision.

The load generator is this process (asyncio streams, requests pre-built as bytes).
"""

from __future__ import annotations

import argparse
import asyncio
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


def request(method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(data)}\r\n"
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
    port: int, pid: int, waiters: int, hold_s: float, settle_s: float | None
) -> dict[str, Any]:
    readers = await connect(waiters, port)
    ask = request("GET", "/v1/runs/lp/lr?step=20&wait=60")
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
    poster_w.write(request("POST", "/v1/runs/lp/observations", {"step": 20, "value": 0.4}))
    status, body, _ = await answer(poster_r)
    assert status == 200, body
    seq = json.loads(body)["seq"]
    answers = await asyncio.gather(*pending)
    phases["end"] = time.monotonic()
    cpu_waking = (cpu_seconds(pid) or 0) - (cpu_at_decision or 0)
    errors = [
        (s, b[:200])
        for s, b, _ in answers
        if s != 200 or not json.loads(b)["certain"] or json.loads(b)["seq"] != seq
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


async def aggregated(port: int, ranks: int) -> dict[str, Any]:
    conns = await connect(ranks, port)
    posts = [
        request(
            "POST",
            "/v1/runs/agg/observations",
            {"step": 1, "value": 1.0 + r / ranks, "rank": r, "world_size": ranks},
        )
        for r in range(ranks)
    ]
    phases = {"reporting": time.monotonic()}
    for (_, writer), post in zip(conns, posts, strict=True):
        writer.write(post)
    retried = [0] * ranks

    async def rank(r: int) -> tuple[int, bytes, float]:
        """Rank r's answer; a 503 (a bounded wait ran out) is posted again after its
        Retry-After, as lrpilot_client does: the report counts once."""
        reader, writer = conns[r]
        while True:
            status, body, at = await answer(reader)
            if status != 503 or retried[r] == MAX_RETRIES:
                return status, body, at
            retried[r] += 1
            await asyncio.sleep(1.0)
            writer.write(posts[r])

    answers = await asyncio.gather(*(rank(r) for r in range(ranks)))
    phases["end"] = time.monotonic()
    first = min(at for _, _, at in answers)
    bodies = {b for _, b, _ in answers}
    errors = [(s, b[:200]) for s, b, _ in answers if s != 200]
    if not errors and (len(bodies) != 1 or len(json.loads(answers[0][1])["ranks"]) != ranks):
        errors.append((0, b"the ranks got different answers, or not every rank counted"))
    for _, writer in conns:
        writer.close()
    return {
        "phases": phases,
        "retried_503": sum(retried),
        "ranks_retried": sum(n > 0 for n in retried),
        "errors": len(errors),
        "error_samples": [repr(e) for e in errors[:3]],
        "latencies": [at - first for _, _, at in answers],
        "answer_bytes": len(answers[0][1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=4096)
    parser.add_argument("--mode", default="longpoll,aggregated")
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
        "/healthz p99 by phase, its ratio to idle, and the longest probe",
        ["mode", "errors", "p50 ms", "p99 ms", "max ms", "healthz p99 ms by phase"],
    )
    results: dict[str, Any] = {}
    for mode in args.mode.split(","):
        url = fresh_database(args.postgres_url, Path(tempfile.mkdtemp()) / "bench.db")
        with LiveServer(url) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            if mode == "longpoll":
                assert http.put("/v1/runs/lp", json=RUN_SPEC).status_code == 201
                first = http.post("/v1/runs/lp/observations", json={"step": 10, "value": 0.5})
                assert first.status_code == 200
                work = longpoll(server.port, server.pid, args.waiters, args.hold, args.settle)
            else:
                spec = {**RUN_SPEC, "aggregate": {"timeout_s": 600, "on_timeout": "refuse"}}
                assert http.put("/v1/runs/agg", json=spec).status_code == 201
                work = aggregated(server.port, args.waiters)
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
        by_phase = ", ".join(
            f"{phase} {ms:.0f} ({ms / healthz['idle']:.1f}x; max {longest[phase]:.0f})"
            for phase, ms in healthz.items()
        )
        table.add_row(
            mode, f"{figures['errors']} ({figures.get('retried_503', 0)} 503 retried)",
            f"{figures['p50_ms']:.0f}", f"{figures['p99_ms']:.0f}",
            f"{figures['max_ms']:.0f}", by_phase,
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
