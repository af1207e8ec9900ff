"""Offline verify of a bundle against the floor: reading each line, ``json.loads`` and one SHA-256.

    python bench/bench_verify.py [--decisions 1000000] [--repeat 3] [--out FILE.json]

Builds a bundle of ``--decisions`` decisions of one run (plateau@1, created and read back
through the service's store as an export reads it; the bench's metric stream, decided by the
service's own ``domain.decide``, so every line is what the service would have stored), then,
``--repeat`` times in alternation:

  floor   for each line: read it, ``json.loads`` it, SHA-256 of its bytes (the least any check
          that reads every decision must do)
  verify  ``lrpilot.audit.verify.check_bundle``: ``lrpilot verify -j 1 BUNDLE``, one process
          (both passes: the rewinds, then every link and every decision replayed through the
          policy)
  verify -j  ``lrpilot.audit.parallel.check_bundle_file`` with ``--workers`` processes (default:
          what ``lrpilot verify BUNDLE`` uses, this machine's cores), each checking a region

and reports decisions a second, the median of the passes, and verify's rate against the
floor's (issue 6 asks for >= 0.5). Peak memory: ``lrpilot verify`` is run as a child process on
the bundle and on its first tenth, and their peak RSS compared (flat in the bundle's size).
"""

from __future__ import annotations

import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from common import (
    console,
    fresh_database,
    machine_info,
    metric_value,
    run_spec,
    timed_bench_parser,
    write_result,
)
from lrpilot.audit.bundle import header_line, trailer_line
from lrpilot.audit.parallel import check_bundle_file, default_workers
from lrpilot.domain.deciding import decide, new_run, now
from lrpilot.settings import Settings
from lrpilot.store.records import RunHead
from lrpilot.store.runs import Store

STEP_EVERY = 100


def start(database: Path) -> tuple[dict[str, Any], RunHead]:
    """A new run, created and read back through the service's store (a fresh SQLite file): its
    document, as an export's header takes it, and the head its first decision starts from."""
    store = Store(Settings(database_url=fresh_database(None, database)))
    try:
        run = new_run("bench-verify", run_spec(), now())
        store.create_run(run)
        return store.head(run.key)
    finally:
        store.close()


def build(path: Path, count: int, document: dict[str, Any], head: RunHead) -> str:
    """Write a bundle of ``count`` decisions of the run ``start`` gave; its head hash."""
    with path.open("w") as out, Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"building {count:,} decisions", total=count)
        header = header_line(head.spec)
        out.write(header + "\n")
        for k in range(1, count + 1):
            decision = decide(head, STEP_EVERY * k, metric_value(0, k))
            out.write(decision.body + "\n")
            head = head.after(decision)
            if k % 10_000 == 0:
                progress.advance(task, 10_000)
        out.write(trailer_line(header, count, head.head_hash) + "\n")
    return head.head_hash


def floor(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        for raw in f:
            json.loads(raw)
            hashlib.sha256(raw).hexdigest()
            n += 1
    return n


def verify(path: Path, head: str, workers: int = 1) -> int:
    checked = check_bundle_file(path, head, workers=workers)
    if not checked.ok:
        raise SystemExit(f"the bench bundle does not verify: {checked.report.mismatch}")
    return checked.report.count


def peak_rss_mib(path: Path) -> float:
    """Peak RSS of ``lrpilot verify PATH`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", "verify", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = timed_bench_parser(__doc__, repeat=3)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes of the `verify -j` pass (default: lrpilot verify's, this machine's cores)",
    )
    args = parser.parse_args(argv)
    console.print(machine_info())

    with tempfile.TemporaryDirectory(prefix="lrpilot-verify-") as tmp:
        big, small = Path(tmp) / "big.ndjson", Path(tmp) / "small.ndjson"
        document, first = start(Path(tmp) / "run.db")
        t0 = time.perf_counter()
        head = build(big, args.decisions, document, first)
        build_s = time.perf_counter() - t0
        build(small, max(1, args.decisions // 10), document, first)
        size_mib = big.stat().st_size / 2**20
        console.print(
            f"bundle: {args.decisions:,} decisions, {size_mib:,.0f} MiB, built in {build_s:.0f} s"
        )

        passes = ("floor", "verify", "verify -j")
        rates: dict[str, list[float]] = {name: [] for name in passes}
        for i in range(args.repeat):
            for name in passes if i % 2 == 0 else passes[::-1]:
                t0 = time.perf_counter()
                if name == "floor":
                    n = floor(big) - 2
                else:
                    n = verify(big, head, args.workers if name == "verify -j" else 1)
                seconds = time.perf_counter() - t0
                rates[name].append(n / seconds)
                console.print(
                    f"  [{i + 1}] {name:6} {n / seconds:12,.0f} decisions/s ({seconds:.1f} s)"
                )

        rss_small, rss_big = peak_rss_mib(small), peak_rss_mib(big)

    table = Table(
        title=f"offline verify of a {args.decisions:,}-decision bundle (median of {args.repeat})"
    )
    for column in ("pass", "decisions/s", "µs/decision", "ratio to floor"):
        table.add_column(column, justify="right")
    median = {k: statistics.median(v) for k, v in rates.items()}
    for name in passes:
        table.add_row(
            name if name != "verify -j" else f"verify -j {args.workers}",
            f"{median[name]:,.0f}",
            f"{1e6 / median[name]:.1f}",
            f"{median[name] / median['floor']:.2f}",
        )
    console.print(table)
    console.print(
        f"peak RSS of `lrpilot verify`: {rss_small:.0f} MiB on {args.decisions // 10:,} "
        f"decisions, {rss_big:.0f} MiB on {args.decisions:,} ({rss_big / rss_small:.2f}x)"
    )
    result = {
        "machine": machine_info(),
        "decisions": args.decisions,
        "bundle_mib": size_mib,
        "rates": rates,
        "median": median,
        "ratio": median["verify"] / median["floor"],
        "workers": args.workers,
        "ratio_workers": median["verify -j"] / median["floor"],
        "peak_rss_mib": {"tenth": rss_small, "whole": rss_big},
    }
    write_result(args.out, "verify", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
