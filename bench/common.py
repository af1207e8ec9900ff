"""What the bench scripts share: the workload, fresh databases, process and machine figures.

Importing it puts the repository root on ``sys.path``, so that the bench runs its servers with
the tests' harness (``tests.harness.LiveServer``) and not a copy of it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# the reference server: HTTP, FastAPI, pydantic and uvicorn alone (bench/trivial_app.py)
TRIVIAL_TARGET = ("--app-dir", str(BENCH_DIR), "trivial_app:app")
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.harness import UVICORN_SETTINGS  # noqa: E402

if TYPE_CHECKING:
    from lrpilot.spec import RunSpec

console = Console(width=max(140, Console().width))

RUN_SPEC: dict[str, Any] = {
    "policy": {"name": "plateau", "version": 1, "params": {"patience": 5}},
    "base_lrs": [0.1],
    "metric": "val_loss",
}
# The service under the same uvicorn command line as the trivial app (tests.harness adds the
# address and the settings); it does not migrate, the bench does, once a database.
SERVICE_TARGET = ("--factory", "lrpilot.app:create_app")


def run_spec(labels: dict[str, str] | None = None) -> RunSpec:
    """RUN_SPEC for the scripts that build runs in process (bench_decisions never does)."""
    from lrpilot.spec import RunSpec

    return RunSpec.model_validate({**RUN_SPEC, "labels": labels or {}})


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def metric_value(seed: int, step: int) -> float:
    """A validation loss that falls slowly under 3 % noise: plateaus, hence reductions, happen.

    A pure function of (seed, step), so every rank of one run sends the same value for a step
    and every bench sends the same stream; bench/wrk/common.lua computes the same doubles.
    """
    noise = (_splitmix64((seed << 40) ^ step) >> 11) / 2.0**53  # 53 bits: exact in any double
    return (1.0 / (1.0 + 0.002 * step)) * (1.0 + 0.03 * noise)


# -- databases --------------------------------------------------------------------------------


def migrate(database_url: str) -> None:
    """``lrpilot db upgrade``, in a subprocess, as an operator migrates."""
    subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", "db", "upgrade", "--database-url", database_url],
        check=True,
        cwd=REPO_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )


def fresh_database(postgres_url: str | None, sqlite_path: Path) -> str:
    """A migrated, empty database: a new SQLite file, or PostgreSQL's public schema recreated."""
    if postgres_url is None:
        sqlite_path.unlink(missing_ok=True)
        url = f"sqlite:///{sqlite_path}"
    else:
        engine = sa.create_engine(postgres_url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
        finally:
            engine.dispose()
        url = postgres_url
    migrate(url)
    return url


# -- processes and the machine (Linux /proc; None elsewhere) ----------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process now."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def all_descriptors() -> None:
    """This process may open as many files as its hard limit allows (a load generator holds
    thousands of sockets). Not lrpilot.server's: the bench also runs against older trees."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user
    except (OSError, ValueError, IndexError):
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
    """Enough to tell whether two result files are comparable."""
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("lrpilot", "fastapi", "starlette", "uvicorn", "pydantic", "sqlalchemy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    dirty = _git("status", "--porcelain", "--", "service", "migrations")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD"),
        "service_tree_dirty": bool(dirty) if dirty is not None else None,
        "versions": versions,
    }


def result_path(name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return BENCH_DIR / "results" / f"{name}-{stamp}.json"


# -- what every bench prints and writes -------------------------------------------------------


def timed_bench_parser(doc: str, repeat: int) -> argparse.ArgumentParser:
    """The command line of a bench that times passes in process: its own options, then these."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=repeat, help="timed passes; medians reported")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    return parser


def print_header(info: dict[str, Any], rest: str) -> None:
    """The line a bench starts with: when, on which CPU and Python; ``rest`` says with what else
    (torch's version, the servers' command line), so two outputs can be told comparable."""
    console.print(
        f"[bold]{info['date']}[/] {info['cpu_model']} x{info['cpu_count']}, Python "
        f"{info['python']}, {rest}"
    )


def servers_line(info: dict[str, Any]) -> str:
    """The servers' command line, recorded in ``info`` and said in the header."""
    info["uvicorn_settings"] = " ".join(UVICORN_SETTINGS)
    return f"servers: python -m uvicorn <app> {info['uvicorn_settings']}"


def command_line(script: str, argv: list[str] | None, url: str | None = None) -> str:
    """How the bench was run, for its result file; a database URL (it may hold a password)
    written as URL."""
    command = " ".join(["python", f"bench/{script}", *(argv or sys.argv[1:])])
    return command.replace(url, "URL") if url else command


def write_result(out: Path | None, name: str, result: dict[str, Any]) -> None:
    """The JSON result file (``out``, or a new one named after the bench), and the line that
    says where it is."""
    out = out or result_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"results: {out}")


def figures_table(title: str, columns: Sequence[str], names: int = 1) -> Table:
    """A table whose first ``names`` columns name a row (left) and the others hold figures."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < names else "right", no_wrap=True)
    return table


def ratio_cell(ratio: float) -> str:
    """A ratio theirs / ours: green where lrpilot is at least as fast, red where it is slower."""
    return f"[bold {'green' if ratio >= 1 else 'red'}]{ratio:.2f}[/]"


def per_call_us(seconds: list[float], calls: int) -> tuple[float, float, float]:
    """µs a call, from the seconds each pass of ``calls`` calls took: the median pass's, the
    fastest's and the slowest's."""
    median, low, high = statistics.median(seconds), min(seconds), max(seconds)
    return 1e6 * median / calls, 1e6 * low / calls, 1e6 * high / calls


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; NaN for none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spread_cell(low: float, high: float, passes: int) -> str:
    """The range over the passes ("-" for one pass)."""
    return f"{low:.3f}-{high:.3f}" if passes > 1 else "-"
