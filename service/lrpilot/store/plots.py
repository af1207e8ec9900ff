"""A run's plot at a screen's resolution (GET /v1/runs/{run_id}/plot): the database reduces the
log to buckets of steps, so that what leaves it is O(points), never the whole log.

Per bucket of steps of the live branch: the min and max of each param group's lr (the lrs in
force after each entry) and of the metric (finite values only); per superseded branch (a run
of consecutive seqs that a rewind superseded), the same over its own steps; and every entry
that changed something, whole (the markers): every entry but ``hold``, except that a phase
repeating its action step after step (warmup, decay, a stopped run's every stop) is one
marker where it begins. A reduce is a marker each time, and so are rewinds and resizes.

The reduction is SQL over the ``(project, run_id, superseded, step)`` index: it reads each
entry of the range once, in the database, with its JSON functions (SQLite's json1,
PostgreSQL's jsonb); its cost grows with the entries in the range (bench/bench_plot.py
measures it), the answer's with ``points`` alone. The buckets' floats are the database's
reading of the stored numbers; the markers are the entries themselves, parsed here.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from lrpilot.canonical import parse_float
from lrpilot.entries import NOT_DECISIONS
from lrpilot.store.records import RunKey
from lrpilot.store.runs import _RUN, _param

MAX_GROUPS = 64  # param groups a plot draws (a run may have up to 1,024: the first 64)
MAX_BRANCHES = 20  # superseded branches drawn (the newest)
# an action that is a marker every time it comes, even twice in a row
_ALWAYS = ("reduce", *NOT_DECISIONS)


def _columns(conn: sa.Connection, groups: int) -> tuple[str, str]:
    """The per-entry select list (each group's lr as lr0.., the metric as metric) and the
    source it reads (a WHERE clause to fill in)."""
    if conn.dialect.name == "postgresql":
        lrs = [f"(j -> 'lrs' ->> {i})::float8" for i in range(groups)]
        metric = "CASE WHEN jsonb_typeof(j -> 'value') = 'number' THEN (j ->> 'value')::float8 END"
        source = "(SELECT seq, step, superseded, body::jsonb AS j FROM decisions WHERE {where}) e"
    else:
        lrs = [f"json_extract(body, '$.lrs[{i}]')" for i in range(groups)]
        metric = (
            "CASE WHEN json_type(body, '$.value') IN ('real', 'integer') "
            "THEN json_extract(body, '$.value') END"
        )
        source = "(SELECT seq, step, superseded, body FROM decisions WHERE {where}) e"
    named = [f"{e} AS lr{i}" for i, e in enumerate(lrs)]
    return ", ".join([*named, f"{metric} AS metric"]), source


def _bucket_doc(row: Any, groups: int, first: int) -> dict[str, Any]:
    # row: (bucket, [island,] step_lo, step_hi, count, lr_min.., lr_max.., metric_min, metric_max)
    values = row[first:]
    return {
        "step_lo": int(values[0]),
        "step_hi": int(values[1]),
        "count": int(values[2]),
        "lr_min": [float(v) for v in values[3 : 3 + groups]],
        "lr_max": [float(v) for v in values[3 + groups : 3 + 2 * groups]],
        "metric_min": None if values[3 + 2 * groups] is None else float(values[3 + 2 * groups]),
        "metric_max": None if values[4 + 2 * groups] is None else float(values[4 + 2 * groups]),
    }


def extent(conn: sa.Connection, run: RunKey) -> tuple[int | None, int | None]:
    """The lowest and highest step of the run's entries, either branch (four index probes)."""
    one = "(SELECT {f}(step) FROM decisions WHERE " + _RUN + " AND superseded = ?)"
    statement = "SELECT " + ", ".join(
        one.format(f=f) for f in ("min", "min", "max", "max")
    )  # one aggregate a subquery: each is an index probe on both databases
    params = (*run, False, *run, True, *run, False, *run, True)
    row = conn.exec_driver_sql(_param(conn, statement), params).one()
    lows = [v for v in row[:2] if v is not None]
    highs = [v for v in row[2:] if v is not None]
    return (min(lows) if lows else None, max(highs) if highs else None)


def plot(
    conn: sa.Connection,
    run: RunKey,
    groups: int,
    points: int,
    first: int,
    last: int,
    max_events: int,
) -> dict[str, Any]:
    """The plot of steps ``first``..``last`` in at most ``points`` buckets a branch."""
    groups = min(groups, MAX_GROUPS)
    width = max(1, -(-(last - first + 1) // points))  # ceil: at most ``points`` buckets
    values, source = _columns(conn, groups)
    aggregates = ", ".join(
        [
            "min(step)",
            "max(step)",
            "count(*)",
            *(f"min(lr{i})" for i in range(groups)),
            *(f"max(lr{i})" for i in range(groups)),
            "min(metric)",
            "max(metric)",
        ]
    )
    names = ", ".join([*(f"lr{i}" for i in range(groups)), "metric"])
    where = f"{_RUN} AND superseded = ? AND step >= ? AND step <= ?"
    inner = source.format(where=where)
    live = conn.exec_driver_sql(
        _param(
            conn,
            f"SELECT b, {aggregates} FROM (SELECT (step - ?) / ? AS b, step, {names} FROM "
            f"(SELECT step, {values} FROM {inner}) v) w "
            "GROUP BY b ORDER BY b",
        ),
        (first, width, *run, False, first, last),
    ).all()
    # superseded branches: runs of consecutive seqs (seq - its rank among them is constant)
    branches = conn.exec_driver_sql(
        _param(
            conn,
            f"SELECT island, b, {aggregates}, min(seq), max(seq) FROM (SELECT seq - "
            "ROW_NUMBER() OVER (ORDER BY seq) AS island, (step - ?) / ? AS b, seq, step, "
            f"{names} FROM (SELECT seq, step, {values} FROM {inner}) v) w "
            "GROUP BY island, b ORDER BY island, b",
        ),
        (first, width, *run, True, first, last),
    ).all()
    superseded: dict[int, dict[str, Any]] = {}
    for row in branches:
        branch = superseded.setdefault(
            int(row[0]), {"from_seq": int(row[-2]), "to_seq": int(row[-1]), "buckets": []}
        )
        branch["from_seq"] = min(branch["from_seq"], int(row[-2]))
        branch["to_seq"] = max(branch["to_seq"], int(row[-1]))
        branch["buckets"].append(_bucket_doc(row[:-2], groups, 2))
    kept = sorted(superseded.values(), key=lambda b: b["from_seq"])
    events, truncated = _events(conn, run, first, last, max_events)
    return {
        "run_id": run.run_id,
        "from_step": first,
        "to_step": last,
        "bucket_steps": width,
        "groups": groups,
        "buckets": [_bucket_doc(row, groups, 1) for row in live],
        "events": events,
        "truncated_events": truncated,
        "superseded": kept[-MAX_BRANCHES:],
        "truncated_superseded": len(kept) > MAX_BRANCHES,
    }


def _events(
    conn: sa.Connection, run: RunKey, first: int, last: int, max_events: int
) -> tuple[list[dict[str, Any]], bool]:
    """The live branch's markers in the range, oldest first, at most ``max_events``."""
    always = ", ".join("?" for _ in _ALWAYS)
    rows = conn.exec_driver_sql(
        _param(
            conn,
            "SELECT d.body FROM (SELECT seq, action, LAG(action) OVER (ORDER BY seq) AS prev "
            f"FROM decisions WHERE {_RUN} AND superseded = ? AND step >= ? AND step <= ?) t "
            f"JOIN decisions d ON d.project = ? AND d.run_id = ? AND d.seq = t.seq "
            f"WHERE t.action <> 'hold' AND (t.prev IS NULL OR t.action <> t.prev "
            f"OR t.action IN ({always})) ORDER BY t.seq LIMIT ?",
        ),
        (*run, False, first, last, *run, *_ALWAYS, max_events + 1),
    ).all()
    events = [_event(json.loads(body)) for (body,) in rows[:max_events]]
    return events, len(rows) > max_events


def _event(doc: dict[str, Any]) -> dict[str, Any]:
    value = doc.get("value")
    event = {
        "seq": doc["seq"],
        "step": doc["step"],
        "action": doc["action"],
        "reason": doc["reason"],
        "lrs": doc["lrs"],
        "previous_lrs": doc["previous_lrs"],
        "metric": None if value is None else parse_float(value),
    }
    for extra in ("resize", "rewind"):  # a resize's sizes (world size), a rewind's target
        if extra in doc:
            event[extra] = doc[extra]
    return event
