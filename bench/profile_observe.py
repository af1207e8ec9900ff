"""The cost of one decision without HTTP: ``Store.observe`` in process, on a fresh SQLite file.

    python bench/profile_observe.py [--decisions 3000] [--profile 25]

Times new decisions (steps 1, 2, 3, ... with bench_decisions' metric stream) and retries of
already decided steps (the replay path every rank but one takes in the one-run scenario), in
wall and CPU time a call; ``--profile N`` prints the N costliest functions (cProfile, by own
time) of a second batch of new decisions. Set against bench_decisions' ``trivial-sync`` cell
(HTTP + FastAPI + thread pool) it says how a decision request's server time splits.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RUN_SPEC, metric_value
from lrpilot.store.db import upgrade
from lrpilot.store.runs import RunSpec, Store


def timed(store: Store, steps: range) -> tuple[float, float]:
    """Wall and CPU microseconds a call of store.observe over ``steps``."""
    w0, c0 = time.perf_counter(), time.process_time()
    for step in steps:
        store.observe("bench", step, metric_value(0, step))
    w1, c1 = time.perf_counter(), time.process_time()
    return (w1 - w0) / len(steps) * 1e6, (c1 - c0) / len(steps) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=3000, help="calls a batch")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    args = parser.parse_args(argv)
    n = args.decisions

    with tempfile.TemporaryDirectory(prefix="lrpilot-observe-") as tmp:
        url = f"sqlite:///{tmp}/observe.db"
        upgrade(url)
        store = Store(url)
        try:
            policy = RUN_SPEC["policy"]
            spec = RunSpec(
                policy=policy["name"],
                version=policy["version"],
                params=policy["params"],
                base_lrs=tuple(RUN_SPEC["base_lrs"]),
                metric=RUN_SPEC["metric"],
                labels={},
            )
            store.put_run("bench", spec)
            timed(store, range(1, 201))  # warm caches (compiled statements, resolved params)
            wall, cpu = timed(store, range(201, 201 + n))
            print(f"new decision   {wall:7.0f} us wall  {cpu:7.0f} us CPU  ({n} calls)")
            wall, cpu = timed(store, range(201, 201 + n))
            print(f"retry (replay) {wall:7.0f} us wall  {cpu:7.0f} us CPU  ({n} calls)")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                timed(store, range(201 + n, 201 + 2 * n))
                profiler.disable()
                stats = pstats.Stats(profiler)
                stats.sort_stats("tottime").print_stats(args.profile)
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
