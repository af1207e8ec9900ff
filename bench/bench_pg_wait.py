"""What bounding every PostgreSQL wait costs: libpq non-blocking with lrpilot's wait callback
against libpq's own blocking waits, same connection, same process.

    python bench/bench_pg_wait.py --postgres-url URL [--calls 2000] [--repeat 7]
        [--out bench/results/pg_wait-<time>.json]

Issue 14: with PostgreSQL frozen, every route answers 503 within ``LRPILOT_DB_TIMEOUT_S``. To
bound waits that the server never ends (no statement_timeout helps when it does not answer at
all), lrpilot runs psycopg2 in non-blocking mode with a wait callback that polls the socket up
to the call's deadline (``lrpilot.store.db._wait_for_postgres``, inside ``db.bounded``). Each
round trip then costs a few Python calls and a poll() more than libpq's blocking wait.

Two workloads, each ``--calls`` times a pass, the two modes alternating within each of
``--repeat`` passes (each mode on its own fresh connection, warmed up first):

  select 1       ``SELECT 1``: one round trip, nothing else; the overhead at its largest
  decision tx    what an observation asks of the database (domain/commit.py, store/runs.py):
                 BEGIN; SELECT ... FOR UPDATE of a run row; INSERT of a decision row; UPDATE
                 of the run row; COMMIT (in a scratch table pair, dropped at the end)

Reported: µs per call (median pass, range), and the ratio blocking / bounded (1.0: no cost;
0.9: the bounded mode takes 11 % longer). The database's public schema is left as found but
for two tables ``bench_pg_wait_runs`` and ``bench_pg_wait_log``, created and dropped.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa

from common import (
    command_line,
    console,
    figures_table,
    machine_info,
    print_header,
    ratio_cell,
    spread_cell,
    write_result,
)
from lrpilot.store.db import _bound_postgres_waits, _wait_for_postgres, bounded

MODES = ("blocking", "bounded")
BODY = '{"action":"hold","lrs":[0.1],"seq":%d,"step":%d}'


def connect(url: str) -> Any:
    u = sa.make_url(url)
    return psycopg2.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database
    )


def select_one(conn: Any, calls: int) -> None:
    with conn.cursor() as cur:
        for _ in range(calls):
            cur.execute("SELECT 1")
            cur.fetchone()


def decision_tx(conn: Any, calls: int) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(MAX(seq), 0) FROM bench_pg_wait_log")
        seq = int(cur.fetchone()[0])
        for _ in range(calls):
            seq += 1
            cur.execute("SELECT last_seq FROM bench_pg_wait_runs WHERE run_id = 'r' FOR UPDATE")
            cur.fetchone()
            cur.execute(
                "INSERT INTO bench_pg_wait_log (run_id, seq, body) VALUES ('r', %s, %s)",
                (seq, BODY % (seq, seq)),
            )
            cur.execute("UPDATE bench_pg_wait_runs SET last_seq = %s WHERE run_id = 'r'", (seq,))
            conn.commit()


WORKLOADS: dict[str, Callable[[Any, int], None]] = {
    "select 1": select_one,
    "decision tx": decision_tx,
}


def timed(mode: str, conn: Any, work: Callable[[Any, int], None], calls: int) -> float:
    """Seconds for ``calls`` of ``work`` in ``mode``."""
    psycopg2.extensions.set_wait_callback(_wait_for_postgres if mode == "bounded" else None)
    try:
        with bounded(5.0):  # as the store runs every call (no effect on blocking waits)
            started = time.perf_counter()
            work(conn, calls)
            return time.perf_counter() - started
    finally:
        psycopg2.extensions.set_wait_callback(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    info = machine_info()
    print_header(info, "PostgreSQL at " + str(sa.make_url(args.postgres_url).host))
    setup = connect(args.postgres_url)
    with setup.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_pg_wait_log, bench_pg_wait_runs")
        cur.execute("CREATE TABLE bench_pg_wait_runs (run_id TEXT PRIMARY KEY, last_seq BIGINT)")
        cur.execute(
            "CREATE TABLE bench_pg_wait_log (run_id TEXT, seq BIGINT, body TEXT, "
            "PRIMARY KEY (run_id, seq))"
        )
        cur.execute("INSERT INTO bench_pg_wait_runs VALUES ('r', 0)")
    setup.commit()
    # a connection made under the callback is asynchronous for good: one for each mode
    _bound_postgres_waits()  # as the store installs it
    conns = {"bounded": connect(args.postgres_url)}
    psycopg2.extensions.set_wait_callback(None)
    conns["blocking"] = connect(args.postgres_url)
    table = figures_table(
        f"µs per call, median of {args.repeat} passes of {args.calls} calls (range)",
        ["workload", "mode", "µs per call", "range", "ratio blocking/bounded"],
        names=2,
    )
    results: dict[str, Any] = {}
    try:
        for name, work in WORKLOADS.items():
            for mode in MODES:  # warm up
                timed(mode, conns[mode], work, max(1, args.calls // 10))
            passes: dict[str, list[float]] = {m: [] for m in MODES}
            for i in range(args.repeat):
                for mode in MODES if i % 2 == 0 else reversed(MODES):
                    seconds = timed(mode, conns[mode], work, args.calls)
                    passes[mode].append(1e6 * seconds / args.calls)
            median = {m: statistics.median(passes[m]) for m in MODES}
            ratio = median["blocking"] / median["bounded"]
            results[name] = {"us_per_call": passes, "median_us": median, "ratio": ratio}
            for mode in MODES:
                table.add_row(
                    name,
                    mode,
                    f"{median[mode]:.1f}",
                    spread_cell(min(passes[mode]), max(passes[mode]), args.repeat),
                    ratio_cell(ratio) if mode == "bounded" else "",
                )
    finally:
        for conn in conns.values():
            conn.close()
        with setup.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_pg_wait_log, bench_pg_wait_runs")
        setup.commit()
        setup.close()
    console.print(table)
    result = {
        "command": command_line("bench_pg_wait.py", argv, args.postgres_url),
        "machine": info,
        "calls": args.calls,
        "results": results,
    }
    write_result(args.out, "pg_wait", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
