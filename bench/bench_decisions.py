"""Decision endpoint vs a trivial FastAPI endpoint, same run, same machine, same uvicorn settings.

    python bench/bench_decisions.py [--seconds 5] [--warmup 1] [--concurrency 1,16,64]
                                    [--scenarios trivial,trivial-sync,decision-many,decision-one]
                                    [--client raw|httpx] [--out bench/results/<name>.json]

Every (scenario, concurrency) cell gets a fresh server (and, for the service, a fresh SQLite
database migrated with ``lrpilot db upgrade``), started as a subprocess with the same command:
``python -m uvicorn ... --host 127.0.0.1 --port P --log-level warning --no-access-log
--workers 1``. The load comes from this process (not the server's: no shared GIL): asyncio and
``c`` workers, each a loop of requests on its own keep-alive connection. After ``--warmup``
seconds, every request that completes in the next ``--seconds`` seconds is counted and its
latency recorded; the CPU time of the server, of this process and of the rest of the machine
over that window is recorded too (another process busy during a cell makes it noise).

The default load generator is a minimal HTTP/1.1 client on asyncio streams: httpx spends about
five times the trivial server's CPU a request (~1 ms) on the reference machine, so with it the
bench measured httpx (``--client httpx`` keeps that mode: one AsyncClient, a pool of c).

Scenarios:
  trivial        POST /echo of bench/trivial_app.py (``async def``): HTTP + FastAPI + pydantic
  trivial-sync   POST /echo-sync, the same as a plain ``def`` (FastAPI's thread pool, like the
                 service's routes); informative, the ratio is always against ``trivial``
  decision-many  POST /v1/runs/bench-many-<i>/observations: worker i owns its run and posts
                 steps 1, 2, 3, ... with a deterministic pseudo-random metric (real decisions,
                 reductions included)
  decision-one   POST /v1/runs/bench-one/observations from all c workers, like the c ranks of one
                 data-parallel job: each walks steps 1, 2, 3, ... with the same value for a step,
                 so one request a step decides and the c-1 others are retries answered with the
                 same decision

Any non-2xx answer or transport error is an error; errors are printed loudly and make the exit
status 1. The ratio (decision req/s / trivial req/s at the same concurrency) is what compares
across machines and runs: the load generator is Python too and shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SCENARIOS = ("trivial", "trivial-sync", "decision-many", "decision-one")
RUN_SPEC: dict[str, Any] = {
    "policy": {"name": "plateau", "version": 1, "params": {"patience": 5}},
    "base_lrs": [0.1],
    "metric": "val_loss",
}
REQUEST_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0
ERROR_SAMPLES = 5
NOISY_PCT = 10.0  # other processes busier than this (% of one core) make a cell suspect

console = Console(width=max(140, Console().width))


# -- the metric stream -----------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def metric_value(seed: int, step: int) -> float:
    """A validation loss that falls slowly under 3 % noise: plateaus, hence reductions, happen.

    A pure function of (seed, step), so every rank of the one-run scenario sends the same value
    for a step, and every run of the bench sends the same stream.
    """
    noise = _splitmix64((seed << 40) ^ step) / 2.0**64
    return (1.0 / (1.0 + 0.002 * step)) * (1.0 + 0.03 * noise)


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def uvicorn_command(target: list[str], port: int) -> list[str]:
    """The one uvicorn command line every server of the bench runs under."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        *target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        "1",
    ]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def serve(target: list[str], env: dict[str, str], workdir: Path) -> Iterator[Server]:
    """A uvicorn subprocess, ready (GET /healthz is 200) on entry, always stopped on exit."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            uvicorn_command(target, port),
            env=env,
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed with all its children
        )
    server = Server(proc=proc, base_url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(base_url=server.base_url, timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {proc.returncode}:\n{server.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server not ready in {READY_TIMEOUT_S} s:\n{server.log_tail()}"
                    )
                time.sleep(0.05)
        yield server
    finally:
        _stop(proc)


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", "db", "upgrade", "--database-url", database_url],
        check=True,
        cwd=REPO_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# -- load ------------------------------------------------------------------------------------

# (worker index, step) -> (path, JSON body)
RequestFor = Callable[[int, int], tuple[str, dict[str, Any]]]


@dataclass
class Cell:
    scenario: str
    concurrency: int
    seconds: float
    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_pct: float | None = None  # % of one core over the measured window
    client_cpu_pct: float | None = None
    # the rest of the machine's busy time in the window (other processes: noise), % of one core
    other_cpu_pct: float | None = None
    server_cpu_us_per_request: float | None = None  # the server's CPU time a request
    ratio: float | None = None  # rps / trivial rps at the same concurrency
    repeat: int = 0  # which pass of --repeat measured this cell
    rps_all_repeats: list[float] = field(default_factory=list)  # set on the median cell
    errors_all_repeats: int = 0  # set on the median cell
    statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    run_counts: dict[str, int] = field(default_factory=dict)  # decision scenarios: from the runs
    server_log: str = ""  # what the server wrote at --log-level warning (should be nothing)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class RawHTTPConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the default load generator.

    httpx costs ~1 ms of client CPU a request on the reference machine and its pool's cost grows
    with the number of connections (encode/httpcore#924, #1035): with it, the bench measured the
    client. This speaks just what the bench needs: POST a JSON body, read a Content-Length or
    chunked answer, reconnect when the server closes.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (path.encode(), self.host.encode(), self.port, len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        if b"content-length" in headers:
            payload = await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            chunks = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append((await reader.readexactly(size + 2))[:-2])
            await reader.readuntil(b"\r\n")  # no trailers from the servers of the bench
            payload = b"".join(chunks)
        else:
            raise ValueError(f"answer without a length: {head!r}")
        if headers.get(b"connection") == b"close":
            await self.close()
        return status, payload

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # TimeoutError included
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def drive(
    base_url: str,
    concurrency: int,
    request_for: RequestFor,
    warmup: float,
    seconds: float,
    server_pid: int,
    cell: Cell,
    client_kind: str = "raw",
) -> None:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    samples: list[str] = []
    url = httpx.URL(base_url)
    assert url.port is not None
    conns = [RawHTTPConnection(url.host, url.port) for _ in range(concurrency)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        t_start = time.perf_counter() + warmup
        t_end = t_start + seconds

        async def post(i: int, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
            if client_kind == "httpx":
                r = await client.post(path, json=body)
                return r.status_code, r.content
            try:
                return await asyncio.wait_for(
                    conns[i].post(path, json.dumps(body).encode()), REQUEST_TIMEOUT_S
                )
            except BaseException:
                await conns[i].close()  # a half-read answer: never reuse the connection
                raise

        async def worker(i: int) -> None:
            step = 0
            while time.perf_counter() < t_end:
                step += 1
                path, body = request_for(i, step)
                t0 = time.perf_counter()
                try:
                    code, payload = await post(i, path, body)
                    status, ok = str(code), 200 <= code < 300
                    detail = "" if ok else f"{path} {body} -> {code} {payload[:300]!r}"
                except (
                    httpx.HTTPError,
                    OSError,  # TimeoutError included
                    ValueError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                ) as exc:
                    status, ok = type(exc).__name__, False
                    detail = f"{path} {body} -> {type(exc).__name__}: {exc}"
                t1 = time.perf_counter()
                if t_start <= t1 <= t_end:
                    statuses[status] += 1
                    if ok:
                        latencies.append(t1 - t0)
                    elif len(samples) < ERROR_SAMPLES:
                        samples.append(detail)
            await conns[i].close()

        async def window_cpu() -> list[float | None]:
            """Server, client and whole-machine CPU seconds spent in the measured window."""
            await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
            s0, c0, m0 = cpu_seconds(server_pid), time.process_time(), machine_busy_seconds()
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            s1, c1, m1 = cpu_seconds(server_pid), time.process_time(), machine_busy_seconds()
            return [
                None if s0 is None or s1 is None else s1 - s0,
                c1 - c0,
                None if m0 is None or m1 is None else m1 - m0,
            ]

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        cpu_task = asyncio.create_task(window_cpu())
        bound = warmup + seconds + REQUEST_TIMEOUT_S + 5.0
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=bound)
        finally:
            for t in tasks:
                t.cancel()
            for conn in conns:
                await conn.close()
        server_cpu, client_cpu, machine_cpu = await asyncio.wait_for(cpu_task, timeout=bound)

    latencies.sort()
    cell.requests = len(latencies)
    cell.errors = sum(n for s, n in statuses.items() if not s.startswith("2"))
    cell.rps = cell.requests / seconds
    cell.p50_ms = percentile(latencies, 50) * 1e3
    cell.p99_ms = percentile(latencies, 99) * 1e3
    cell.mean_ms = (sum(latencies) / len(latencies) * 1e3) if latencies else float("nan")
    cell.max_ms = latencies[-1] * 1e3 if latencies else float("nan")
    cell.statuses = dict(sorted(statuses.items()))
    cell.error_samples = samples
    if server_cpu is not None:
        cell.server_cpu_pct = 100.0 * server_cpu / seconds
        if cell.requests:
            cell.server_cpu_us_per_request = 1e6 * server_cpu / cell.requests
    if client_cpu is not None:
        cell.client_cpu_pct = 100.0 * client_cpu / seconds
    if machine_cpu is not None and server_cpu is not None and client_cpu is not None:
        cell.other_cpu_pct = max(0.0, 100.0 * (machine_cpu - server_cpu - client_cpu) / seconds)


# -- scenarios -------------------------------------------------------------------------------


def trivial_request(path: str) -> RequestFor:
    def request_for(i: int, step: int) -> tuple[str, dict[str, Any]]:
        return path, {"step": step, "value": metric_value(i, step)}

    return request_for


def many_runs_request(i: int, step: int) -> tuple[str, dict[str, Any]]:
    return f"/v1/runs/bench-many-{i}/observations", {"step": step, "value": metric_value(i, step)}


def one_run_request(concurrency: int) -> RequestFor:
    def request_for(i: int, step: int) -> tuple[str, dict[str, Any]]:
        body = {"step": step, "value": metric_value(0, step), "rank": i, "world_size": concurrency}
        return "/v1/runs/bench-one/observations", body

    return request_for


def run_cell(
    scenario: str,
    concurrency: int,
    warmup: float,
    seconds: float,
    workdir: Path,
    client_kind: str,
) -> Cell:
    cell = Cell(scenario=scenario, concurrency=concurrency, seconds=seconds)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_ids: list[str] = []
    if scenario.startswith("trivial"):
        target = ["--app-dir", str(BENCH_DIR), "trivial_app:app"]
        request_for = trivial_request("/echo" if scenario == "trivial" else "/echo-sync")
    else:
        db_path = workdir / f"bench-{scenario}-c{concurrency}.db"
        database_url = f"sqlite:///{db_path}"
        migrate(database_url)
        env["LRPILOT_DATABASE_URL"] = database_url
        target = ["--factory", "lrpilot.app:create_app"]
        if scenario == "decision-many":
            run_ids = [f"bench-many-{i}" for i in range(concurrency)]
            request_for = many_runs_request
        else:
            run_ids = ["bench-one"]
            request_for = one_run_request(concurrency)

    with serve(target, env, workdir) as server:
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            for run_id in run_ids:
                r = client.put(f"/v1/runs/{run_id}", json=RUN_SPEC)
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"PUT /v1/runs/{run_id} -> {r.status_code} {r.text}")
        asyncio.run(
            drive(
                server.base_url,
                concurrency,
                request_for,
                warmup,
                seconds,
                server.proc.pid,
                cell,
                client_kind,
            )
        )
        if run_ids:
            counts: Counter[str] = Counter()
            with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as client:
                for run_id in run_ids:
                    r = client.get(f"/v1/runs/{run_id}")
                    if r.status_code != 200:
                        cell.error_samples.append(f"GET /v1/runs/{run_id} -> {r.status_code}")
                        continue
                    doc = r.json()
                    counts["decisions"] += doc["counts"]["decisions"]
                    counts["reductions"] += doc["counts"]["reductions"]
            cell.run_counts = dict(counts)
        if server.proc.poll() is not None:
            cell.error_samples.append(f"server died:\n{server.log_tail()}")
        cell.server_log = server.log_tail().strip() if server.log_path.stat().st_size else ""
    return cell


# -- report ----------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    cpu_model = None
    mem_total_kib = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_kib = int(line.split()[1])
                break
    dirty = _git("status", "--porcelain", "--", "service", "migrations")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "mem_total_gib": round(mem_total_kib / 2**20, 1) if mem_total_kib else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "git_commit": _git("rev-parse", "HEAD"),
        "service_tree_dirty": bool(dirty) if dirty is not None else None,
        "versions": {
            d: _version(d)
            for d in (
                "lrpilot",
                "fastapi",
                "starlette",
                "uvicorn",
                "pydantic",
                "sqlalchemy",
                "httpx",
                "anyio",
            )
        },
        "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
        "httptools_installed": importlib.util.find_spec("httptools") is not None,
        "uvicorn_command": " ".join(uvicorn_command(["<app>"], 0)).replace("port 0", "port P"),
    }


def median_cells(cells: list[Cell]) -> list[Cell]:
    """For each (scenario, concurrency), the pass with the median req/s (the lower of two)."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.scenario, cell.concurrency), []).append(cell)
    chosen = []
    for group in groups.values():
        ranked = sorted(group, key=lambda cell: cell.rps)
        median = ranked[(len(ranked) - 1) // 2]
        median.rps_all_repeats = [cell.rps for cell in group]
        median.errors_all_repeats = sum(cell.errors for cell in group)
        chosen.append(median)
    return chosen


def _other(pct: float | None) -> str:
    if pct is None:
        return "-"
    return f"[bold yellow]{pct:.0f} %[/]" if pct >= NOISY_PCT else f"{pct:.0f} %"


def print_table(cells: list[Cell], repeat: int) -> None:
    title = "lrpilot: decision endpoint vs trivial FastAPI endpoint"
    if repeat > 1:
        title += f" (median of {repeat} passes; errors: all passes)"
    table = Table(title=title)
    for name, justify in (
        ("scenario", "left"),
        ("c", "right"),
        ("req/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("ratio", "right"),
        ("req/s range", "right"),
        ("errors", "right"),
        ("server CPU", "right"),
        ("server µs/req", "right"),
        ("client CPU", "right"),
        ("other CPU", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in cells:
        table.add_row(
            c.scenario,
            str(c.concurrency),
            f"{c.rps:,.0f}",
            f"{c.p50_ms:.2f}",
            f"{c.p99_ms:.2f}",
            f"{c.ratio:.2f}" if c.ratio is not None else "-",
            (
                f"{min(c.rps_all_repeats):,.0f}-{max(c.rps_all_repeats):,.0f}"
                if len(c.rps_all_repeats) > 1
                else "-"
            ),
            f"[bold red]{c.errors_all_repeats}[/]" if c.errors_all_repeats else "0",
            f"{c.server_cpu_pct:.0f} %" if c.server_cpu_pct is not None else "-",
            (
                f"{c.server_cpu_us_per_request:,.0f}"
                if c.server_cpu_us_per_request is not None
                else "-"
            ),
            f"{c.client_cpu_pct:.0f} %" if c.client_cpu_pct is not None else "-",
            _other(c.other_cpu_pct),
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds a cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: one raw asyncio HTTP/1.1 connection a worker (default), or one "
        "httpx.AsyncClient with a pool of c connections (much slower: it measures itself)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure the whole matrix N times and report, for each cell, the pass with the "
        "median req/s (the run-to-run spread on a small VM is 10-20 %%)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)

    concurrencies = [int(x) for x in args.concurrency.split(",") if x.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not concurrencies or min(concurrencies) < 1 or args.repeat < 1:
        parser.error(f"unknown scenarios {unknown} or bad concurrency {args.concurrency!r}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or BENCH_DIR / "results" / f"decisions-{stamp}.json"

    info = machine_info()
    console.print(
        f"[bold]{info['date']}[/] {info['cpu_model']} x{info['cpu_count']}, "
        f"{info['mem_total_gib']} GiB, Python {info['python']}, {info['platform']}"
    )
    console.print(f"server: {info['uvicorn_command']}; load generator: {args.client}")
    all_cells: list[Cell] = []
    t0 = time.monotonic()
    # Concurrency outside, scenarios inside: the cells a ratio compares run close in time.
    with tempfile.TemporaryDirectory(prefix="lrpilot-bench-") as tmp:
        for repeat in range(args.repeat):
            for c in concurrencies:
                for scenario in scenarios:
                    console.print(f"  [{repeat + 1}] {scenario:<14} c={c:<3} ...", end=" ")
                    cell = run_cell(scenario, c, args.warmup, args.seconds, Path(tmp), args.client)
                    cell.repeat = repeat
                    console.print(
                        f"{cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} ms, "
                        f"p99 {cell.p99_ms:.2f} ms"
                        + (f" [bold red]{cell.errors} ERRORS[/]" if cell.errors else "")
                    )
                    all_cells.append(cell)

    cells = median_cells(all_cells)
    trivial = {c.concurrency: c.rps for c in cells if c.scenario == "trivial"}
    for cell in cells:
        if trivial.get(cell.concurrency):
            cell.ratio = cell.rps / trivial[cell.concurrency]

    cells.sort(key=lambda cell: (scenarios.index(cell.scenario), cell.concurrency))
    print_table(cells, args.repeat)
    noisy = [c for c in all_cells if c.other_cpu_pct is not None and c.other_cpu_pct >= NOISY_PCT]
    if noisy:
        console.print(
            f"[bold yellow]other processes used >= {NOISY_PCT:.0f} % of a core during "
            f"{len(noisy)} cell(s): those figures are not a clean baseline; rerun on a quiet "
            "machine[/]"
        )
    for cell in cells:
        if cell.run_counts:
            console.print(
                f"  {cell.scenario} c={cell.concurrency}: "
                f"{cell.run_counts.get('decisions', 0)} decisions stored, "
                f"{cell.run_counts.get('reductions', 0)} reductions"
            )
    for cell in all_cells:
        if cell.server_log:
            console.print(
                f"[bold yellow]server log, {cell.scenario} c={cell.concurrency} "
                f"(pass {cell.repeat + 1}):[/]"
            )
            console.print(cell.server_log, markup=False)
    console.print(f"total {time.monotonic() - t0:.0f} s")

    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["python", "bench/bench_decisions.py", *(argv or sys.argv[1:])]),
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": concurrencies,
            "scenarios": scenarios,
            "client": args.client,
            "repeat": args.repeat,
            "run_spec": RUN_SPEC,
        },
        "machine": info,
        "cells": [asdict(c) for c in cells],  # the median pass of each cell
        "all_cells": [asdict(c) for c in all_cells],
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"results: {out}")

    failed = [c for c in all_cells if c.errors or c.error_samples]
    if failed:
        console.rule("[bold red]ERRORS[/]")
        for cell in failed:
            console.print(
                f"[bold red]{cell.scenario} c={cell.concurrency} (pass {cell.repeat + 1}): "
                f"{cell.errors} errors, "
                f"statuses {cell.statuses}[/]"
            )
            for sample in cell.error_samples:
                console.print(f"    {sample}", markup=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
