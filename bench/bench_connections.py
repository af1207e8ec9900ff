"""Connections an attacker holds open, against the service as ``lrpilot serve`` runs it.

    python bench/bench_connections.py [--trickling 1000] [--idle 10000] [--seconds 30]
        [--every 1.0] [--probe-every 0.05] [--postgres-url URL] [--out FILE]

Issue 14: with 1,000 connections trickling bytes and 10,000 idle, ``/healthz`` and
observations still answer within a second.

One server, ``lrpilot serve`` under tests.harness.LiveServer with its default settings (header
timeout 10 s, body timeout 30 s, keep-alive 5 s, the connection cap), on a fresh database (a
new SQLite file; with ``--postgres-url``, that database's public schema DROPPED and migrated
again). First ``--seconds`` of probes with nothing else (idle), then
tests.harness.ConnectionFlood opens ``--trickling`` connections that send a request's headers
a line every ``--every`` seconds and ``--idle`` connections that send nothing, and the probes
run again for ``--seconds`` from the moment the flood is open. A probe, every
``--probe-every`` seconds: ``GET /healthz`` on a new connection (as a new client or a load
balancer's probe makes it), then an observation on a keep-alive connection (a training job's).

Reported: each probe's latency (p50, p99, max), idle and under the flood; the probes that
failed (not a 200, or no answer within 10 s); what the server did with the flood (closed with a
408, closed silently, refused with a 503) and how long after it opened the last trickling one
was closed; the server's open descriptors at most, its CPU time and its log's size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

import common
from tests.harness import ConnectionFlood, LiveServer

PROBE_TIMEOUT_S = 10.0


def open_fds(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


class Probes:
    """/healthz on a new connection and an observation on a kept one, every ``every_s``."""

    def __init__(self, url: str, run_id: str, every_s: float) -> None:
        self.url, self.run_id, self.every_s = url, run_id, every_s
        self.step = 0
        self.jobs = httpx.Client(base_url=url, timeout=PROBE_TIMEOUT_S)

    def run(self, seconds: float) -> dict[str, Any]:
        times: dict[str, list[float]] = {"healthz": [], "observation": []}
        failed: dict[str, list[str]] = {"healthz": [], "observation": []}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step += 1
            for name, call in (("healthz", self._healthz), ("observation", self._observe)):
                started, problem = time.monotonic(), ""
                try:
                    status = call().status_code
                except httpx.HTTPError as exc:
                    status, problem = 0, type(exc).__name__
                took = time.monotonic() - started
                times[name].append(took)
                if status != 200:
                    failed[name].append(problem if status == 0 else str(status))
            time.sleep(self.every_s)
        return {
            name: {
                "probes": len(times[name]),
                "p50_ms": 1e3 * statistics.median(times[name]),
                "p99_ms": 1e3 * common.percentile(times[name], 0.99),
                "max_ms": 1e3 * max(times[name]),
                "over_1s": sum(t > 1.0 for t in times[name]),
                "failed": len(failed[name]),
                "failures": sorted(set(failed[name]))[:5],
            }
            for name in times
        }

    def _healthz(self) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=PROBE_TIMEOUT_S) as fresh:
            return fresh.get("/healthz")

    def _observe(self) -> httpx.Response:
        body = {"step": self.step, "value": 1.0 / self.step}
        return self.jobs.post(f"/v1/runs/{self.run_id}/observations", json=body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trickling", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=30.0, help="of probes, each phase")
    parser.add_argument("--every", type=float, default=1.0, help="s between trickled lines")
    parser.add_argument("--probe-every", type=float, default=0.05)
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    common.all_descriptors()  # this process holds every connection of the load it makes
    info = common.machine_info()
    common.print_header(info, "server: lrpilot serve (default settings)")
    url = common.fresh_database(args.postgres_url, Path(tempfile.mkdtemp()) / "bench.db")
    with LiveServer(url) as server:
        with httpx.Client(base_url=server.url, timeout=PROBE_TIMEOUT_S) as http:
            assert http.put("/v1/runs/probe", json=common.RUN_SPEC).status_code == 201
        probes = Probes(server.url, "probe", args.probe_every)
        fds: list[int] = []
        sampling = True
        flood = ConnectionFlood(server.port, args.idle, args.trickling, args.every)
        opening = time.monotonic()
        last_trickling_closed: float | None = None

        def sample() -> None:
            nonlocal last_trickling_closed
            while sampling:
                n = open_fds(server.pid)
                if n is not None:
                    fds.append(n)
                done = flood.closed["trickling"] == args.trickling > 0
                if last_trickling_closed is None and done:
                    last_trickling_closed = time.monotonic() - opening
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = common.cpu_seconds(server.pid)
        idle = probes.run(args.seconds)
        opening = time.monotonic()
        flood.start()
        opened_s = time.monotonic() - opening
        under = probes.run(args.seconds)
        counts = {
            "closed": dict(flood.closed),
            "timed_out_408": flood.timed_out,
            "refused_503": flood.refused,
            "failed_to_connect": flood.failed,
            "still_open": flood.open,
        }
        flood.stop()
        sampling = False
        sampler.join()
        cpu1 = common.cpu_seconds(server.pid)
        log_bytes = server.log.stat().st_size

    table = common.figures_table(
        f"{args.trickling} trickling + {args.idle} idle connections "
        f"({'PostgreSQL' if args.postgres_url else 'SQLite'})",
        ["probe", "phase", "probes", "p50 ms", "p99 ms", "max ms", "> 1 s", "failed"],
        names=2,
    )
    for name in ("healthz", "observation"):
        for phase, figures in (("idle", idle), ("flood", under)):
            f = figures[name]
            table.add_row(
                name, phase, str(f["probes"]), f"{f['p50_ms']:.1f}", f"{f['p99_ms']:.1f}",
                f"{f['max_ms']:.1f}", str(f["over_1s"]), str(f["failed"]),
            )  # fmt: skip
    common.console.print(table)
    common.console.print(
        f"flood opened in {opened_s:.1f} s; after {args.seconds:g} s: {counts}; the last "
        f"trickling one closed within {last_trickling_closed or float('nan'):.1f} s of the "
        f"flood's start; server: {max(fds or [0])} descriptors at most, "
        f"{(cpu1 or 0) - (cpu0 or 0):.1f} CPU s, log {log_bytes} bytes"
    )
    result = {
        "command": common.command_line("bench_connections.py", argv, args.postgres_url),
        "machine": info,
        "idle": idle,
        "flood": under,
        "flood_counts": counts,
        "flood_opened_s": opened_s,
        "last_trickling_closed_within_s": last_trickling_closed,
        "server_max_fds": max(fds or [0]),
        "server_cpu_s": (cpu1 or 0) - (cpu0 or 0),
        "server_log_bytes": log_bytes,
    }
    common.write_result(args.out, "connections", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
