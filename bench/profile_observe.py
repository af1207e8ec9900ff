"""The cost of one decision without HTTP: the domain layer and the store, in process, on SQLite.

    python bench/profile_observe.py [--decisions 3000] [--batch 1] [--profile 25]

Times ``decide_batch`` (what the group commit's writer thread runs for the requests
it has queued) on a fresh SQLite file: new decisions (steps 1, 2, 3, ... with the bench's
metric stream) and retries of already decided steps (what every rank but one gets in the
decision-one scenario), in wall and CPU µs a decision, ``--batch`` observations a transaction.
``--profile N`` prints the N costliest functions (cProfile, by own time) of a second batch of
new decisions. Set against bench_decisions' ``trivial`` cell it says how a decision request's
server time splits.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time

from common import metric_value, run_spec
from lrpilot.app import group_commit
from lrpilot.domain.aggregated import Posted
from lrpilot.domain.decisions import Decisions, decide_batch
from lrpilot.settings import Settings
from lrpilot.store.db import upgrade
from lrpilot.store.records import RunKey
from lrpilot.store.runs import Store


def timed(decisions: Decisions, steps: range, batch: int) -> tuple[float, float]:
    """Wall and CPU µs a decision over ``steps``, ``batch`` steps a transaction."""
    w0, c0 = time.perf_counter(), time.process_time()
    for first in range(steps.start, steps.stop, batch):
        run = RunKey("default", "bench")
        items = [Posted(run, s, metric_value(0, s)) for s in range(first, first + batch)]
        for result in decide_batch(decisions.store, items):
            if isinstance(result, Exception):
                raise result
    w1, c1 = time.perf_counter(), time.process_time()
    return (w1 - w0) / len(steps) * 1e6, (c1 - c0) / len(steps) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=3000, help="decisions a measurement")
    parser.add_argument("--batch", type=int, default=1, help="decisions a transaction")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    args = parser.parse_args(argv)
    n = args.decisions - args.decisions % args.batch

    with tempfile.TemporaryDirectory(prefix="lrpilot-observe-") as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/observe.db")
        upgrade(settings.database_url)
        store = Store(settings)
        decisions = Decisions(store, settings, group_commit(store))
        try:
            decisions.create_run("bench", run_spec())
            timed(decisions, range(1, 201), 1)  # warm caches (resolved params, statements)
            measured = range(201, 201 + n)
            wall, cpu = timed(decisions, measured, args.batch)
            print(f"new decision   {wall:7.0f} us wall  {cpu:7.0f} us CPU  ({n} decisions)")
            wall, cpu = timed(decisions, measured, args.batch)
            print(f"retry (replay) {wall:7.0f} us wall  {cpu:7.0f} us CPU  ({n} decisions)")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                timed(decisions, range(201 + n, 201 + 2 * n), args.batch)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
        finally:
            decisions.close()
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
