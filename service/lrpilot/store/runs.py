"""Runs and their decision logs: the only code that reads or writes them.

The store owns transactions and locks, and nothing else: it hands the domain layer a run's
head (its spec and latest state, O(1) whatever the run's length) under the run's lock, and
appends the decisions the domain made. Write transactions retry a bounded number of times when
another writer won a race (a unique violation, a deadlock, a serialization failure), then give
up with ``Unavailable``; every wait for the database is bounded by ``Settings.db_timeout_s``:
each call of the store runs inside ``db.bounded`` (see there), and a call that passes its
deadline is ``Unavailable``, whatever the database did (a lock held elsewhere, no answer at all).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from lrpilot.canonical import canonical_json, parse_float
from lrpilot.domain.errors import Busy, Conflict, Invalid, RunNotFound, Unavailable
from lrpilot.entries import NOT_DECISIONS, Kind, run_genesis
from lrpilot.settings import Settings
from lrpilot.spec import (
    PUBLIC_ORDER,
    AggregateSpec,
    Clock,
    GuardSpec,
    InForce,
    PolicyRef,
    RunStored,
    ScalingSpec,
)
from lrpilot.store.db import (
    DatabaseTimeout,
    bounded,
    make_engine,
    remaining,
    renew,
    same_file,
    sqlite_path,
    writer,
)
from lrpilot.store.records import (
    Imported,
    LogEnd,
    LogRow,
    NewDecision,
    NewRun,
    Page,
    Report,
    RunHead,
    RunKey,
    RunRowRead,
    Stored,
    Tally,
)
from lrpilot.store.tables import DecisionRow, RunLabelRow, RunRow

if TYPE_CHECKING:
    from lrpilot.store import plots

T = TypeVar("T")
log = logging.getLogger("lrpilot.store")

_HEAD_COLUMNS = (
    "run_id, policy, params, base_lrs, metric, labels, config_hash, created_at, aggregate, "
    "scaling, clock, guard, state, lrs, last_seq, last_step, head_hash, scale, project"
)
# every statement that names a run names it by its key (RunKey: project, then run_id)
_RUN = "project = ? AND run_id = ?"
STOP = "stop"  # a run whose last entry is this action has stopped (the run list's state)
_REPORT_COLUMNS = "rank, world_size, value, weight, created_at, client, by"
# the run is locked while its tallies change: the values written are the step's whole tally
_UPSERT_TALLY = (
    "INSERT INTO report_tallies (project, run_id, step, world_size, reported, first_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project, run_id, step) "
    "DO UPDATE SET reported = excluded.reported, first_at = excluded.first_at"
)
# "the live entry of step N" is a decision's: a rewind entry shares the step it rewound to, a
# scale entry the step it applies from
_INSERT_DECISION = (
    "INSERT INTO decisions (project, run_id, seq, step, action, superseded, hash, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DECISIONS_ONLY = "AND action NOT IN (" + ", ".join(f"'{a}'" for a in NOT_DECISIONS) + ")"
# the entries whose state is the state as of their step: a checkpoint's is the state in force
# when it was declared, which may be later (a checkpoint declared late)
_STATES = f"AND action <> '{Kind.CHECKPOINT.value}' "


def _last_live(columns: str, bound: str, only: str = _STATES) -> str:
    """The query of ``columns`` of a run's last live entry (among ``only``'s actions) whose
    step is ``bound`` ("<=" or "<") the one given: of the largest step, and of those the last
    logged (a scale entry may share its step with a decision: the later one holds). Its
    parameters: (*run, False, step)."""
    return (
        f"SELECT {columns} FROM decisions WHERE {_RUN} AND superseded = ? AND step {bound} ? "
        f"{only}ORDER BY step DESC, seq DESC LIMIT 1"
    )


# An import writes its log this many rows a statement; on SQLite, in transactions of at most
# IMPORT_SLICE_S each (or a quarter of the timeout, if less), so that every other writer gets
# the database between two of them well within its own timeout.
IMPORT_BATCH = 500
IMPORT_SLICE_S = 0.2
# ... and leaves the database free this long after each: the other writers of this process
# poll for it (the observation path every 50 ms at most, never waiting), SQLite's busy handler
# of other processes every 100 ms at most. Without the gap the import takes it back at once.
IMPORT_GAP_S = 0.1
# How long a PostgreSQL batch waits in line for its runs' row locks before it leaves the held
# ones for later: far longer than a batch holds them, far shorter than a request may wait.
LOCK_WAIT_MS = 100
_LOCK_NOT_AVAILABLE = "55P03"
# PostgreSQL SQLSTATEs after which the whole transaction is simply tried again:
# serialization_failure, deadlock_detected, unique_violation (a lost insert race)
_RETRY_PGCODES = {"40001", "40P01", "23505"}


@functools.lru_cache(maxsize=4096)
def _spec(
    run_id: str,
    policy: str,
    params: str,
    base_lrs: str,
    metric: str | None,
    labels: str,
    config_hash: str,
    created_at: str,
    aggregate: str | None,
    scaling: str | None,
    clock: str | None,
    guard: str | None = None,
) -> RunStored:
    """A stored run's spec, parsed once a process (a run's spec never changes)."""
    # Written by this service, so not validated again: a row an older version stored beyond
    # today's rules (a longer created_at, say) must still be readable, never a 500.
    name, version = policy.split("@")
    return RunStored.model_construct(
        run_id=run_id,
        policy=PolicyRef.model_construct(
            name=name, version=int(version), params=json.loads(params)
        ),
        base_lrs=json.loads(base_lrs),
        metric=metric,
        labels=json.loads(labels),
        config_hash=config_hash,
        created_at=created_at,
        aggregate=None
        if aggregate is None
        else AggregateSpec.model_construct(**json.loads(aggregate)),
        scaling=None if scaling is None else ScalingSpec.model_construct(**json.loads(scaling)),
        clock=cast(Clock, clock or "steps"),  # NULL: steps (every run made before clocks)
        # validated again (not constructed): its spike rule is a union, and it is parsed once
        guard=None if guard is None else GuardSpec.model_validate_json(guard),
    )


def _head(row: Sequence[Any]) -> RunHead:
    """A run's head from its row's ``_HEAD_COLUMNS``."""
    spec = _spec(*row[:12])
    state, lrs, last_seq, last_step, head_hash, scale, project = row[12:]
    force = None
    if spec.scaling is not None:
        force = InForce.of(spec.scaling.model_dump(), None if scale is None else json.loads(scale))
    return RunHead(spec, Stored(state), Stored(lrs), last_seq, last_step, head_hash, force, project)


def _not_found(run: RunKey) -> RunNotFound:
    """Another project's run of that id is exactly as missing as no run at all."""
    return RunNotFound(f"run {run.run_id!r} not found")


def _read_head(conn: sa.Connection, run: RunKey) -> RunHead:
    row = conn.exec_driver_sql(
        _param(conn, f"SELECT {_HEAD_COLUMNS} FROM runs WHERE {_RUN}"), run
    ).first()
    if row is None:
        raise _not_found(run)
    return _head(row)


def _scale_text(force: InForce | None) -> str | None:
    """The scale column: NULL while the base size is in force since the start."""
    return None if force is None or force.step is None else canonical_json(force.doc())


def run_document(row: RunRow) -> dict[str, Any]:
    """The run as GET /v1/runs/{run_id} serves it (``lrpilot.spec.RunPublic``)."""
    spec = _spec(
        row.run_id,
        row.policy,
        row.params,
        row.base_lrs,
        row.metric,
        row.labels,
        row.config_hash,
        row.created_at,
        row.aggregate,
        row.scaling,
        row.clock,
        row.guard,
    )
    doc = spec.header_doc()
    doc.update(
        head_hash=row.head_hash,
        lrs=json.loads(row.lrs),
        last_step=row.last_step,
        last_seq=row.last_seq,
        last_action=row.last_action,
        last_decision_at=row.last_at if row.last_seq else None,
        counts={"decisions": row.last_seq, "reductions": row.reductions},
        status="active",
        clock=spec.clock,  # said by every run, "steps" too (its spec documents omit that)
    )
    if spec.scaling is not None:
        # the size in force, its factor and the step it applies from (none: the base size)
        base = {"size": spec.scaling.base, "factor": 1.0, "step": None}
        doc["scale"] = json.loads(row.scale) if row.scale is not None else base
    return {k: doc[k] for k in PUBLIC_ORDER if k in doc}


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """Which entries of a run's log a read keeps (GET /decisions' filters): those of one
    ``action``, at the steps ``from_step``..``to_step`` (both included), of one branch
    (``superseded`` False: the live one; None: both). The default keeps every entry."""

    action: str | None = None
    from_step: int | None = None
    to_step: int | None = None
    superseded: bool | None = None

    def where(self, run: RunKey) -> list[Any]:
        """The conditions on the decision rows of ``run`` that this filter keeps."""
        where = [*_is(DecisionRow, run)]
        if self.action is not None:
            where.append(DecisionRow.action == self.action)
        if self.from_step is not None:
            where.append(DecisionRow.step >= self.from_step)
        if self.to_step is not None:
            where.append(DecisionRow.step <= self.to_step)
        if self.superseded is not None:
            where.append(DecisionRow.superseded == self.superseded)
        return where


EVERY_ENTRY = DecisionFilter()
_CHECKPOINTS = DecisionFilter(action=Kind.CHECKPOINT.value)
_LIVE_CHECKPOINTS = DecisionFilter(action=Kind.CHECKPOINT.value, superseded=False)


class StoreStats:
    """What the store counts, for the metrics (``lrpilot.api.metrics`` reads it at each scrape):
    plain integers under a lock, a few hundred nanoseconds a transaction, no dependency on how
    they are exported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0  # write transactions run again after losing a race
        self.unavailable: dict[str, int] = {}  # 503s the store raised, by cause
        self.entries: dict[tuple[str, str], int] = {}  # committed entries by (policy, action)

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def refused(self, cause: str) -> None:
        with self._lock:
            self.unavailable[cause] = self.unavailable.get(cause, 0) + 1

    def committed(self, tx: WriteTx) -> None:
        if not tx.appended:
            return
        with self._lock:
            for decision in tx.appended:
                key = (tx.policies.get(decision.key, "?"), decision.action)
                self.entries[key] = self.entries.get(key, 0) + 1

    def snapshot(self) -> tuple[int, dict[str, int], dict[tuple[str, str], int]]:
        with self._lock:
            return self.retries, dict(self.unavailable), dict(self.entries)


class WriteTx:
    """One write transaction: lock runs, read decisions, append decisions.

    The hot path of every observation, so it speaks SQL to the driver's cursor directly, inside
    the transaction SQLAlchemy began (no ORM unit of work, no per-statement engine events): a
    decision is one INSERT, and each run it touches one UPDATE when the transaction ends.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        self._cursor = dbapi.cursor()
        if not self._postgres:  # the progress handler's statement deadline (see db.py)
            conn.info["deadline"][0] = time.monotonic() + conn.info["timeout_s"]
        # entries appended in this transaction, written at once by flush(), and the decisions
        # among them by step (a scale entry may share its step with the decision after it)
        self._appended: list[NewDecision] = []
        # the metrics' view: the policy of each run locked, and every entry appended (flush()
        # empties the list of those still to write)
        self.policies: dict[RunKey, str] = {}
        self.appended: list[NewDecision] = []
        self._decided: dict[tuple[RunKey, int], NewDecision] = {}
        # aggregated steps: the tallies read or changed in this transaction (the run is locked:
        # only this transaction changes them), the reports it added, and the rows and tallies
        # that flush() writes at once
        self._tallies: dict[tuple[RunKey, int], Tally | None] = {}
        self._added: dict[tuple[RunKey, int], dict[int, Report]] = {}
        self._new_reports: list[tuple[Any, ...]] = []
        self._changed_tallies: set[tuple[RunKey, int]] = set()

    def _locked(self, heads: dict[RunKey, RunHead]) -> dict[RunKey, RunHead]:
        for key, head in heads.items():
            ref = head.spec.policy
            self.policies[key] = f"{ref.name}@{ref.version}"
        return heads

    def session(self) -> Session:
        """An ORM session inside this transaction, for the paths that are not hot."""
        return Session(bind=self._conn)

    def _execute(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        self._cursor.execute(_param(self._conn, statement), params)
        return self._cursor

    def lock_runs(self, runs: set[RunKey]) -> tuple[dict[RunKey, RunHead], set[RunKey]]:
        """The heads of these runs, locked until the transaction ends, and the runs that
        another transaction holds locked (missing runs are in neither).

        SQLite's BEGIN IMMEDIATE holds the database's write lock already. PostgreSQL locks the
        rows in key order (no deadlock between batches), waiting in line behind other
        writers of the same runs, as a lock does, but only for ``LOCK_WAIT``: a run held longer
        (a stuck client, a frozen replica) must not stall the other runs of the batch, so then
        the batch takes the rows it can and leaves the held ones for the caller to try again.
        """
        ordered = sorted(runs)
        select = f"SELECT {_HEAD_COLUMNS} FROM runs WHERE {_keys_in(len(ordered))}"
        keys = _flat(ordered)
        if not self._postgres:
            rows = self._execute(select, keys).fetchall()
            return self._locked(_by_key(rows)), set()
        self._execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'; SAVEPOINT lock_runs")
        try:
            rows = self._execute(f"{select} ORDER BY project, run_id FOR UPDATE", keys).fetchall()
            return self._locked(_by_key(rows)), set()
        except Exception as exc:
            if getattr(exc, "pgcode", None) != _LOCK_NOT_AVAILABLE:
                raise
            self._execute("ROLLBACK TO SAVEPOINT lock_runs")
        rows = self._execute(f"{select} FOR UPDATE SKIP LOCKED", keys).fetchall()
        heads = self._locked(_by_key(rows))
        skipped = [r for r in ordered if r not in heads]
        if not skipped:
            return heads, set()
        exist = self._execute(
            f"SELECT project, run_id FROM runs WHERE {_keys_in(len(skipped))}", _flat(skipped)
        )
        return heads, {RunKey(*row) for row in exist.fetchall()}

    def lock_run(self, run: RunKey) -> RunHead | None:
        """One run's head, locked until the transaction ends, waiting for the lock as long as
        the statement may (the paths that are not hot: rewind, import); None if no such run."""
        select = f"SELECT {_HEAD_COLUMNS} FROM runs WHERE {_RUN}"
        if self._postgres:
            select += " FOR UPDATE"
        row = self._execute(select, run).fetchone()
        if row is None:
            return None
        head = _head(row)
        self._locked({run: head})
        return head

    def decision_at_step(self, run: RunKey, step: int) -> Stored | None:
        """The run's live (not superseded) decision for ``step``, if any."""
        pending = self._decided.get((run, step))
        if pending is not None:
            return Stored(pending.body)
        row = self._execute(
            f"SELECT body FROM decisions WHERE {_RUN} AND superseded = ? AND step = ? "
            + _DECISIONS_ONLY,
            (*run, False, step),
        ).fetchone()
        return None if row is None else Stored(str(row[0]))

    def tally(self, run: RunKey, step: int) -> Tally | None:
        """What the reports of the run's ``step`` add up to (aggregated mode); None before the
        first. One row, whatever the world size: a report costs O(1)."""
        key = (run, step)
        if key not in self._tallies:
            row = self._execute(
                "SELECT world_size, reported, first_at FROM report_tallies "
                f"WHERE {_RUN} AND step = ?",
                (*run, step),
            ).fetchone()
            self._tallies[key] = None if row is None else Tally(int(row[0]), int(row[1]), row[2])
        return self._tallies[key]

    def report_of(self, run: RunKey, step: int, rank: int) -> Report | None:
        """The report of ``rank`` for the run's ``step``, if it reported (aggregated mode)."""
        added = self._added.get((run, step))
        if added is not None and rank in added:
            return added[rank]
        row = self._execute(
            f"SELECT {_REPORT_COLUMNS} FROM reports WHERE {_RUN} AND step = ? AND rank = ?",
            (*run, step, rank),
        ).fetchone()
        return None if row is None else _report(row)

    def reports_at(self, run: RunKey, step: int) -> list[Report]:
        """Every report of the run's ``step`` (aggregated mode), in rank order: read once, when
        the step is decided or refused."""
        rows = self._execute(
            f"SELECT {_REPORT_COLUMNS} FROM reports WHERE {_RUN} AND step = ? ORDER BY rank",
            (*run, step),
        ).fetchall()
        reports = [_report(r) for r in rows]
        added = self._added.get((run, step))
        if added:
            reports = sorted([*reports, *added.values()], key=lambda r: r.rank)
        return reports

    def add_report(self, run: RunKey, step: int, report: Report) -> Tally:
        """Store a rank's report of a step (the run is locked: no other writer adds it) and
        answer the step's new tally. Both are written by ``flush``, with the batch's others; a
        step decided in this transaction never writes its reports at all."""
        key = (run, step)
        was = self.tally(run, step)
        tally = Tally(report.world_size, 1, report.created_at) if was is None else was.plus(report)
        self._tallies[key] = tally
        self._changed_tallies.add(key)
        self._added.setdefault(key, {})[report.rank] = report
        self._new_reports.append(
            (
                *run,
                step,
                report.rank,
                report.world_size,
                canonical_json(report.value),
                report.weight,
                None if report.client is None else canonical_json(report.client),
                report.created_at,
                None if report.by is None else canonical_json(report.by),
            )
        )
        return tally

    def drop_reports(self, run: RunKey, step: int) -> None:
        """Forget a decided step's reports: its decision lists them."""
        self._drop_reports(run, "step = ?", step, lambda s: s == step)

    def drop_reports_after(self, run: RunKey, step: int) -> None:
        """Forget the reports of the steps after ``step`` (a rewind: they will come again)."""
        self._drop_reports(run, "step > ?", step, lambda s: s > step)

    def _drop_reports(
        self, run: RunKey, where: str, step: int, dropped: Callable[[int], bool]
    ) -> None:
        for table in ("reports", "report_tallies"):
            self._execute(f"DELETE FROM {table} WHERE {_RUN} AND {where}", (*run, step))
        for key in [k for k in self._tallies if k[0] == run and dropped(k[1])]:
            self._tallies[key] = None
            self._added.pop(key, None)
            self._changed_tallies.discard(key)
        self._new_reports = [r for r in self._new_reports if r[:2] != run or not dropped(r[2])]

    def live_at_or_before(self, run: RunKey, step: int) -> tuple[int, dict[str, Any]] | None:
        """(seq, entry) of the run's last live entry at or before ``step``, if any."""
        row = self._execute(_last_live("seq, body", "<="), (*run, False, step)).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def live_checkpoint_before(
        self, run: RunKey, step: int
    ) -> tuple[int, int, dict[str, Any]] | None:
        """(seq, step, entry) of the run's newest live checkpoint below ``step``, if any (of
        the largest step; of those, the last declared)."""
        self.flush()
        row = self._execute(
            _last_live("seq, step, body", "<", f"AND action = '{Kind.CHECKPOINT.value}' "),
            (*run, False, step),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), json.loads(row[2]))

    def live_checkpoint(self, run: RunKey, step: int, ref: str) -> Stored | None:
        """The run's live checkpoint entry of ``step`` whose ref is ``ref``, if any."""
        rows = self._execute(
            f"SELECT body FROM decisions WHERE {_RUN} AND superseded = ? AND step = ? "
            f"AND action = '{Kind.CHECKPOINT.value}' ORDER BY seq",
            (*run, False, step),
        ).fetchall()
        for (body,) in rows:
            stored = Stored(str(body))
            if stored.value["checkpoint"]["ref"] == ref:
                return stored
        return None

    def entry_at_seq(self, run: RunKey, seq: int, action: str) -> Stored | None:
        """The run's entry ``seq``, if it is one of ``action``."""
        self.flush()
        row = self._execute(
            f"SELECT body FROM decisions WHERE {_RUN} AND seq = ? AND action = ?",
            (*run, seq, action),
        ).fetchone()
        return None if row is None else Stored(str(row[0]))

    def live_scale_at_or_before(self, run: RunKey, step: int) -> dict[str, Any] | None:
        """The run's last live scale entry at or before ``step``, if any."""
        row = self._execute(
            _last_live("body", "<=", f"AND action = '{Kind.SCALE.value}' "), (*run, False, step)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def run_exists(self, run: RunKey) -> bool:
        return self._execute(f"SELECT 1 FROM runs WHERE {_RUN}", run).fetchone() is not None

    def has_log(self, run: RunKey) -> bool:
        """Whether decision rows of the run exist (without a run row: an import under way)."""
        found = self._execute(f"SELECT 1 FROM decisions WHERE {_RUN} LIMIT 1", run)
        return found.fetchone() is not None

    def insert_log(self, run: RunKey, rows: Sequence[LogRow]) -> None:
        """Rows of an imported log, as they are (one statement)."""
        self._cursor.executemany(
            _param(self._conn, _INSERT_DECISION),
            [(*run, r.seq, r.step, r.action, r.superseded, r.hash, r.body) for r in rows],
        )
        self._fold(run, [(r.seq, r.body) for r in rows])
        renew()  # a batch written: a long import goes on while the database keeps answering

    def _fold(self, run: RunKey, written: Sequence[tuple[int, str]]) -> None:
        """The plot's tiles of the run in the database take each CHUNK of seqs that an entry
        just written completes (store/plots.py; ``written``: (seq, body) in seq order)."""
        from lrpilot.store import plots  # it builds on this module's statement helpers

        for seq, body in written:
            if seq % plots.CHUNK == 0:
                plots.fold(self._conn, run, seq, len(json.loads(body)["lrs"]))

    def set_end(self, run: RunKey, end: LogEnd) -> None:
        """An imported run's head: where its log ends."""
        self._execute(
            "UPDATE runs SET last_seq = ?, head_hash = ?, state = ?, lrs = ?, last_step = ?, "
            f"scale = ?, reductions = ?, imported = ?, last_action = ?, last_at = ? "
            f"WHERE {_RUN}",
            (
                end.last_seq,
                end.head_hash,
                end.state,
                end.lrs,
                end.last_step,
                end.scale,
                end.reductions,
                end.imported.text(),
                end.last_action,
                end.last_at,
                *run,
            ),
        )

    def drop_orphans(self, run: RunKey, limit: int) -> int:
        """Delete up to ``limit`` decision rows of the run if it has no run row (what an
        import that did not finish left); how many."""
        cursor = self._execute(
            f"DELETE FROM decisions WHERE {_RUN} AND seq IN (SELECT seq FROM decisions "
            f"WHERE {_RUN} LIMIT ?) AND NOT EXISTS (SELECT 1 FROM runs WHERE {_RUN})",
            (*run, *run, limit, *run),
        )
        dropped = int(cursor.rowcount)
        if dropped < limit and not self.run_exists(run):
            from lrpilot.store import plots

            plots.drop_tiles(self._conn, run)
        return dropped

    def supersede_after(self, run: RunKey, step: int) -> int:
        """Mark the run's live entries above ``step`` superseded (never deleted); how many.
        The plot's tiles in the database are cut back to the step with them."""
        from lrpilot.store import plots

        self.flush()  # entries appended in this transaction are in the table first
        cursor = self._execute(
            f"UPDATE decisions SET superseded = ? WHERE {_RUN} AND superseded = ? AND step > ?",
            (True, *run, False, step),
        )
        plots.cut(self._conn, run, step)
        return int(cursor.rowcount)

    def insert_run(self, run: NewRun) -> None:
        """A new run's row and labels (import: the head is written by ``flush``)."""
        with self.session() as session:
            session.add(_run_row(run))
            session.flush()  # the run before its labels: the foreign key needs it
            session.add_all(_label_rows(run))
            session.flush()

    def append_decision(self, decision: NewDecision) -> None:
        """Append the decision; it is written, with its run's new head, by ``flush``."""
        self._appended.append(decision)
        self.appended.append(decision)
        if decision.action not in NOT_DECISIONS:
            self._decided[(decision.key, decision.step)] = decision

    def flush(self) -> None:
        """Write the reports added (one statement) and the appended decisions (one
        statement), then move each run's head to its last decision (one UPDATE a run)."""
        renew()  # the database answered so far: a long transaction (an import) goes on
        if self._new_reports:
            self._cursor.executemany(
                _param(
                    self._conn,
                    "INSERT INTO reports (project, run_id, step, rank, world_size, value, weight, "
                    "client, created_at, by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ),
                self._new_reports,
            )
            self._new_reports = []
        if self._changed_tallies:
            self._cursor.executemany(
                _param(self._conn, _UPSERT_TALLY),
                [
                    (*run, step, t.world_size, t.reported, t.first_at)
                    for (run, step) in self._changed_tallies
                    if (t := self._tallies[(run, step)]) is not None
                ],
            )
            self._changed_tallies = set()
        if not self._appended:
            return
        decisions = self._appended
        self._cursor.executemany(
            _param(self._conn, _INSERT_DECISION),
            [(*d.key, d.seq, d.step, d.action, False, d.hash, d.body) for d in decisions],
        )
        heads: dict[RunKey, NewDecision] = {}
        reductions: dict[RunKey, int] = {}
        for d in decisions:  # in the order they were decided: the last one is the head
            heads[d.key] = d
            reductions[d.key] = reductions.get(d.key, 0) + d.reductions
        self._cursor.executemany(
            _param(
                self._conn,
                "UPDATE runs SET last_seq = ?, last_step = ?, head_hash = ?, state = ?, lrs = ?, "
                f"scale = ?, reductions = reductions + ?, last_action = ?, last_at = ? "
                f"WHERE {_RUN}",
            ),
            [
                (
                    d.seq,
                    d.last_step,
                    d.hash,
                    d.state,
                    d.lrs,
                    _scale_text(d.scale),
                    reductions[run],
                    d.action,
                    d.created_at,
                    *run,
                )
                for run, d in heads.items()
            ],
        )
        self._appended = []
        self._decided.clear()
        for d in decisions:  # each CHUNK of seqs completed: into the plot's tiles
            self._fold(d.key, [(d.seq, d.body)])


class Snapshot:
    """Reads that all see one state of the database, whatever commits meanwhile: one read
    transaction (SQLite: one BEGIN, whose first read fixes what the WAL shows it; PostgreSQL:
    REPEATABLE READ). Verify reads through it, so that a rewind or a decision committed halfway
    through a check can never look like tampering."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def _rows(self, statement: str, params: tuple[Any, ...]) -> Sequence[Any]:
        rows = self._conn.exec_driver_sql(_param(self._conn, statement), params).all()
        renew()
        return rows

    def run(self, run: RunKey) -> RunRowRead:
        found = self._rows(
            f"SELECT {_HEAD_COLUMNS}, reductions, imported, last_action, last_at FROM runs "
            f"WHERE {_RUN}",
            run,
        )
        if not found:
            raise _not_found(run)
        labels = self._rows(f"SELECT key, value FROM run_labels WHERE {_RUN}", run)
        *head, reductions, imported, last_action, last_at = found[0]
        return RunRowRead(
            _head(head),
            int(reductions),
            {str(k): str(v) for k, v in labels},
            Imported.of(imported),
            last_action,
            last_at,
        )

    def log(self, run: RunKey, action: str | None = None, page: int = 1000) -> Iterator[LogRow]:
        """Every decision row of the run (none left out: not only those up to its last_seq),
        or those of one action, in seq order, a page at a time: constant memory, and every
        statement short (one action's rows are looked for ``page`` x 10 seqs a statement, not
        across a whole log that may have none)."""
        select = "SELECT seq, step, action, superseded, hash, body FROM decisions "
        after = 0
        if action is None:
            while True:
                rows = self._rows(
                    f"{select} WHERE {_RUN} AND seq > ? ORDER BY seq LIMIT {int(page)}",
                    (*run, after),
                )
                yield from _log_rows(rows)
                if len(rows) < page:
                    return
                after = int(rows[-1][0])
        last = self._rows(f"SELECT max(seq) FROM decisions WHERE {_RUN}", run)[0][0]
        while last is not None and after < last:
            rows = self._rows(
                f"{select} WHERE {_RUN} AND seq > ? AND seq <= ? AND action = ? ORDER BY seq",
                (*run, after, after + 10 * page, action),
            )
            yield from _log_rows(rows)
            after += 10 * page


class Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = make_engine(settings)
        self._writer = writer(self.engine)
        # SQLite admits one writer at a time: queueing this process's writers on a lock avoids
        # SQLite's busy-wait sleeps (up to 100 ms each). Correctness does not rest on it
        # (BEGIN IMMEDIATE serialises writers across processes), and the wait is bounded.
        self._lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        self._own: sa.Connection | None = None  # begin_now's connection
        self._path = sqlite_path(self.engine)
        self._driver_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        self.stats = StoreStats()
        self._tiles: plots.Tiles | None = None  # made on the first plot

    def close(self) -> None:
        self._drop_own_connection()
        self.engine.dispose()

    # -- transactions ----------------------------------------------------------------------

    @property
    def database_file(self) -> str | None:
        """The SQLite database's file (None for memory or PostgreSQL)."""
        return self._path

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def transact(self, work: Callable[[WriteTx], T]) -> T:
        """Run ``work`` in one write transaction and commit; try again, a bounded number of
        times, when another writer won a race; ``Unavailable`` when the database is not there
        or stays locked past the timeout."""
        retries = self.settings.db_retries
        with bounded(self.settings.db_timeout_s):  # the retries included
            for attempt in range(retries + 1):
                try:
                    with self._write_lock(), self._db_errors(), self._writer.connect() as conn:
                        return _commit(conn, work, self.stats)
                except _LostRace as exc:
                    if attempt == retries:
                        log.warning("write failed after %d attempts: %s", attempt + 1, exc)
                        self.stats.refused("retries")
                        raise Unavailable(
                            "the database could not complete the write (another writer kept "
                            "winning); retry later"
                        ) from exc
                    self.stats.retried()
                    time.sleep(random.uniform(0.0, 0.01 * 2**attempt))  # let the winner finish
        raise AssertionError("unreachable")

    def begin_now(self, work: Callable[[WriteTx], T]) -> tuple[T, Callable[[], None]]:
        """The first half of ``transact``, on SQLite, for a caller that must never wait (the
        event loop): begin, run ``work``, and return its result with the function that commits
        it. When the write lock is held elsewhere, or another writer won a race, raise ``Busy``
        at once, having done nothing.

        The commit, where SQLite waits for the disk (fsync), may run on another thread while
        the loop goes on; the next ``begin_now`` must wait until it returned. One caller at a
        time: it keeps its own connection, and drives its transactions on the driver itself
        (SQLAlchemy's begin and commit cost more than the rest of a one-decision batch).
        """
        if self._lock is not None and not self._lock.acquire(blocking=False):
            raise Busy("another writer of this process holds the database")
        try:
            with self._db_errors():
                conn = self._own_connection()
            driver: sqlite3.Connection | None = conn.connection.driver_connection
            assert driver is not None
            try:
                driver.execute("BEGIN IMMEDIATE")
                try:
                    tx = WriteTx(conn)
                    result = work(tx)
                    tx.flush()
                except BaseException:
                    driver.rollback()
                    raise
            except sqlite3.Error as exc:
                if _is_busy(exc) or _is_lost_race(exc):
                    raise Busy("another writer holds the database") from exc
                self._drop_own_connection()
                raise self._unavailable(exc) from exc
        except BaseException:
            self._release()
            raise

        def commit() -> None:
            try:
                driver.commit()
            except sqlite3.Error as exc:
                self._drop_own_connection()
                raise self._unavailable(exc) from exc
            finally:
                self._release()
            self.stats.committed(tx)

        return result, commit

    @contextlib.contextmanager
    def _db_errors(self) -> Iterator[None]:
        """A database that is gone, locked or too slow is a 503; a lost race is ``_LostRace``,
        for ``transact`` to try again. What exactly went wrong (host, port, user) goes to the
        server log, never to the client. The hot path speaks to the driver directly, so its
        own errors are caught as well as SQLAlchemy's wrapping of them."""
        try:
            yield
        except (sa.exc.DBAPIError, self._driver_error) as exc:
            orig = (exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc) or exc
            if _is_lost_race(orig):
                raise _LostRace(str(orig)) from exc
            raise self._unavailable(orig) from exc
        except sa.exc.TimeoutError as exc:  # no pooled connection came free in time
            log.warning("database unavailable: %s", exc)
            self.stats.refused("pool")
            raise Unavailable("no database connection came free in time; retry later") from exc

    def _unavailable(self, orig: BaseException) -> Unavailable:
        cause, reason = _cause(orig)
        log.warning("database unavailable: %s", orig)
        self.stats.refused(cause)
        return Unavailable(f"{reason}; retry later")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _own_connection(self) -> sa.Connection:
        own, path = self._own, self._path
        if own is not None and path is not None and not same_file(path, own.info.get("file_id")):
            self._drop_own_connection()  # moved, deleted or replaced: never write to an orphan
        if self._own is None:
            conn = self.engine.connect()  # begin_now issues BEGIN IMMEDIATE itself
            driver = conn.connection.driver_connection
            assert driver is not None
            # never wait for the lock, not even here: Busy instead, retried by the caller
            driver.execute("PRAGMA busy_timeout=0")
            self._own = conn
        return self._own

    def _drop_own_connection(self) -> None:
        if self._own is not None:
            with contextlib.suppress(Exception):
                self._own.invalidate()
                self._own.close()
            self._own = None

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        left = remaining()
        if not self._lock.acquire(timeout=self.settings.db_timeout_s if left is None else left):
            self.stats.refused("locked")
            raise Unavailable(
                f"the database stayed locked for {self.settings.db_timeout_s} s; retry later"
            )
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _read(self, timeout_s: float | None = None) -> Iterator[Session]:
        """A session for one read call, every wait of which ends within ``timeout_s``
        (``db_timeout_s`` by default): pool checkout, connect, lock, statement, answer."""
        with (
            bounded(self.settings.db_timeout_s if timeout_s is None else timeout_s),
            self._db_errors(),
            Session(self.engine) as session,
        ):
            yield session

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session for the tables that are not runs' (tokens): the same bounded waits."""
        with self._read() as session:
            yield session

    def ping(self) -> None:
        """The database answers, and holds lrpilot's schema, within ``ready_timeout_s`` (the
        probe gives up then: its thread must not stay behind on a frozen database) or
        ``db_timeout_s``, whichever is shorter (no route waits longer than that)."""
        with self._read(min(self.settings.ready_timeout_s, self.settings.db_timeout_s)) as s:
            s.connection().exec_driver_sql("SELECT version_num FROM alembic_version").all()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """One read transaction (``Snapshot``), ended when the block ends."""
        # bounded like every call; each page read renews the deadline (Snapshot._rows), so a
        # long log is read as long as the database keeps answering
        with self._snapshot_conn() as conn:
            yield Snapshot(conn)

    @contextlib.contextmanager
    def _snapshot_conn(self) -> Iterator[sa.Connection]:
        """A connection in one read transaction (PostgreSQL: REPEATABLE READ; SQLite's BEGIN
        is one snapshot already), bounded like every call."""
        engine = self.engine
        if not self.is_sqlite:
            engine = engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with (
            bounded(self.settings.db_timeout_s),
            self._db_errors(),
            engine.connect() as conn,
            conn.begin(),
        ):
            yield conn

    # -- runs ------------------------------------------------------------------------------

    def create_run(self, run: NewRun) -> tuple[dict[str, Any], bool]:
        """Insert the run (True), or return the stored one (False): a lost insert race is
        another writer that won, and the retry reads what it wrote."""

        def work(tx: WriteTx) -> tuple[dict[str, Any], bool]:
            with tx.session() as session:
                return insert(session)

        def insert(session: Session) -> tuple[dict[str, Any], bool]:
            existing = session.get(RunRow, _pk(run.key))
            if existing is not None:
                return run_document(existing), False
            imported = select(DecisionRow.seq).where(*_is(DecisionRow, run.key)).limit(1)
            if session.exec(imported).first() is not None:  # its log, before its run row
                raise Conflict(f"run {run.run_id!r} is being imported; retry when it ends")
            row = _run_row(run)
            session.add(row)
            session.flush()  # the run before its labels: the foreign key needs it
            session.add_all(_label_rows(run))
            session.flush()
            return run_document(row), True

        return self.transact(work)

    def get_run(self, run: RunKey) -> dict[str, Any]:
        with self._read() as s:
            row = s.get(RunRow, _pk(run))
            if row is None:
                raise _not_found(run)
            return run_document(row)

    def list_runs(
        self,
        labels: dict[str, str],
        after: str | None,
        limit: int,
        project: str = "default",
        policy: str | None = None,
        stopped: bool | None = None,
        by_activity: bool = False,
    ) -> Page:
        """A page of the project's runs: in run_id order, or by last activity (the newest
        first, ``by_activity``); ``policy`` a family (``plateau``) or a version
        (``plateau@2``); ``stopped`` True: the runs whose last entry is a stop, False: the
        others. ``after`` is the last run_id of the previous page, whichever the order."""
        with self._read() as s:
            q = select(RunRow).where(RunRow.project == project).limit(limit + 1)
            if by_activity:  # the index (project, last_at, run_id), walked backwards
                q = q.order_by(col(RunRow.last_at).desc(), col(RunRow.run_id).desc())
            else:
                q = q.order_by(col(RunRow.run_id))
            if after is not None and by_activity:
                last_at = s.exec(
                    select(RunRow.last_at).where(RunRow.project == project, RunRow.run_id == after)
                ).first()
                if last_at is None:
                    raise Invalid(
                        ["query", "after"], f"after: no run {after!r} (the `next` of a page)"
                    )
                q = q.where(
                    sa.or_(
                        col(RunRow.last_at) < last_at,
                        sa.and_(col(RunRow.last_at) == last_at, col(RunRow.run_id) < after),
                    )
                )
            elif after is not None:
                q = q.where(col(RunRow.run_id) > after)
            if policy is not None:
                q = q.where(
                    col(RunRow.policy) == policy
                    if "@" in policy
                    else col(RunRow.policy).startswith(f"{policy}@", autoescape=True)
                )
            if stopped is True:
                q = q.where(col(RunRow.last_action) == STOP)
            elif stopped is False:
                q = q.where(
                    sa.or_(col(RunRow.last_action).is_(None), col(RunRow.last_action) != STOP)
                )
            for key, value in sorted(labels.items()):
                labelled = select(RunLabelRow.run_id).where(
                    RunLabelRow.project == project,
                    RunLabelRow.key == key,
                    RunLabelRow.value == value,
                )
                q = q.where(col(RunRow.run_id).in_(labelled))
            rows = list(s.exec(q))
            more = len(rows) > limit
            rows = rows[:limit]
            return Page(
                items=[canonical_json(run_document(r)) for r in rows],
                next=rows[-1].run_id if more else None,
            )

    # -- imports ---------------------------------------------------------------------------

    def import_run(self, run: NewRun, rows: Callable[[], Iterator[LogRow]], end: LogEnd) -> bool:
        """Store an imported run and its log (True); False, with nothing written, when a run
        of that id exists in its project (another project's run of that id is another run).
        ``rows`` gives the log afresh at each call (a retry reads it again).

        PostgreSQL: one transaction (it locks the new run's row alone). SQLite has one writer
        for the whole database, so the log is written in slices of at most ``IMPORT_SLICE_S``,
        other writers going between them, before the run row, which is written last, in a
        short transaction of its own: until then every read (they all look the run up first)
        sees nothing of the import, and creating a run of that id in that project is refused.
        An import that fails removes what it wrote; one killed halfway leaves rows without a
        run row, which ``drop_import`` removes (the service does at startup).
        """
        if not self.is_sqlite:

            def work(tx: WriteTx) -> bool:
                if tx.lock_run(run.key) is not None:
                    return False
                tx.insert_run(run)
                for batch in _batches(rows()):
                    tx.insert_log(run.key, batch)
                tx.set_end(run.key, end)
                return True

            return self.transact(work)
        return self._import_sqlite(run, rows(), end)

    def _import_sqlite(self, run: NewRun, rows: Iterator[LogRow], end: LogEnd) -> bool:
        slice_s = min(IMPORT_SLICE_S, self.settings.db_timeout_s / 4)
        with self._db_errors():
            conn = self._writer.connect()
        wrote = False
        try:
            driver = conn.connection.driver_connection
            assert driver is not None
            # the log goes in before its run row (see import_run); this connection is
            # discarded afterwards, never pooled with the check off
            driver.execute("PRAGMA foreign_keys=OFF")
            batches = _batches(rows)
            left = True
            while left:
                with self._write_lock(), self._db_errors(), conn.begin():
                    tx = WriteTx(conn)
                    if not wrote:
                        if tx.run_exists(run.key):
                            return False
                        if tx.has_log(run.key):
                            raise Conflict(
                                f"run {run.run_id!r} is being imported by another request; "
                                "retry when it ends"
                            )
                    wrote = True
                    until = time.monotonic() + slice_s
                    while time.monotonic() < until:
                        batch = next(batches, None)
                        if batch is None:
                            left = False
                            break
                        tx.insert_log(run.key, batch)
                time.sleep(IMPORT_GAP_S)
            with self._write_lock(), self._db_errors(), conn.begin():
                tx = WriteTx(conn)
                tx.insert_run(run)
                tx.set_end(run.key, end)
            return True
        except BaseException:
            if wrote:
                with contextlib.suppress(Unavailable):
                    self.drop_import(run.key)
            raise
        finally:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def drop_import(self, run: RunKey, limit: int = 5000) -> int:
        """Remove what an unfinished import of the run wrote: its rows, while it has no run
        row (a short transaction a slice); how many."""
        dropped = 0
        while True:
            n = self.transact(lambda tx: tx.drop_orphans(run, limit))
            dropped += n
            if n < limit:
                return dropped

    # -- decisions -------------------------------------------------------------------------

    def decision_at_or_before(
        self, run: RunKey, step: int | None
    ) -> tuple[RunHead, tuple[int, int, dict[str, Any]] | None]:
        """The run's head, and (seq, step, entry) of its last live entry at or before
        ``step`` (None when there is none, or when ``step`` is None).

        Live decisions have increasing steps, so the last one at or before ``step`` is the one
        with the largest step: one descent of the (project, run_id, superseded, step) index,
        whatever the run's length.
        """
        with self._read() as s:
            conn = s.connection()
            head = _read_head(conn, run)
            if step is None:
                return head, None
            found = conn.exec_driver_sql(
                _param(conn, _last_live("seq, step, body", "<=")), (*run, False, step)
            ).first()
            if found is None:
                return head, None
            return head, (int(found[0]), int(found[1]), json.loads(found[2]))

    def decided_step(self, run: RunKey, step: int) -> str | None:
        """The body of the run's live decision of ``step``, if any (a short read: aggregated
        ranks waiting for a step look for it with this)."""
        with self._read() as s:
            conn = s.connection()
            row = conn.exec_driver_sql(
                _param(
                    conn,
                    f"SELECT body FROM decisions WHERE {_RUN} AND superseded = ? AND step = ? "
                    + _DECISIONS_ONLY,
                ),
                (*run, False, step),
            ).first()
            return None if row is None else str(row[0])

    def decisions_between(
        self, run: RunKey, first: int, last: int, every: int = 1
    ) -> tuple[RunHead, dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]:
        """The run's head, its last live entry before step ``first`` (None if none), and
        (step, entry) of its live entries from ``first`` to ``last``, in step order: the
        states in force over that range. With ``every`` > 1 (the range read at every
        ``every``-th step from ``first``), only the last entry before each step read: a
        stride over a long range loads as many entries as it reads steps, not the range's."""
        with self._read() as s:
            conn = s.connection()
            head = _read_head(conn, run)
            before = conn.exec_driver_sql(
                _param(conn, _last_live("body", "<")), (*run, False, first)
            ).first()
            between = (
                f"FROM decisions WHERE {_RUN} AND superseded = ? AND step >= ? AND step <= ? "
                f"{_STATES}ORDER BY step, seq"
            )
            if every == 1:
                within = conn.exec_driver_sql(
                    _param(conn, f"SELECT step, body {between}"), (*run, False, first, last)
                ).all()
            else:
                keys = conn.exec_driver_sql(
                    _param(conn, f"SELECT step, seq {between}"), (*run, False, first, last)
                ).all()
                # the last entry of each stretch between two steps read is the one in force
                wanted: dict[int, int] = {}  # stretch -> seq
                for step, seq in keys:
                    wanted[-((first - int(step)) // every)] = int(seq)
                within = []
                seqs = sorted(wanted.values())
                for i in range(0, len(seqs), 500):
                    part = seqs[i : i + 500]
                    within += conn.exec_driver_sql(
                        _param(
                            conn,
                            f"SELECT step, body FROM decisions WHERE {_RUN} AND seq IN "
                            f"({', '.join('?' * len(part))}) ORDER BY step, seq",
                        ),
                        (*run, *part),
                    ).all()
            return (
                head,
                None if before is None else json.loads(before[0]),
                [(int(step), json.loads(body)) for step, body in within],
            )

    def list_decisions(
        self,
        run: RunKey,
        after: int,
        limit: int,
        kept: DecisionFilter = EVERY_ENTRY,
        max_chars: int | None = None,
    ) -> Page:
        """A page of the entries of the run's log that ``kept`` keeps, in seq order;
        ``max_chars``: see ``_sized_page``."""
        with self._read() as s:
            if s.get(RunRow, _pk(run)) is None:
                raise _not_found(run)
            where = [*kept.where(run), DecisionRow.seq > after]
            rows, after_last = _sized_page(s, run, where, limit, max_chars)
            return Page(items=[body for body, _ in rows], next=after_last)

    def checkpoint_page(
        self, run: RunKey, up_to_seq: int, after: int, limit: int, max_chars: int | None = None
    ) -> tuple[list[tuple[str, bool]], int | None]:
        """A page of the run's checkpoint entries up to ``up_to_seq`` (both branches), each
        with its superseded flag, and the seq the next page starts after (None: the last),
        bounded as ``list_decisions`` bounds its pages."""
        with self._read() as s:
            where = [
                *_CHECKPOINTS.where(run),
                DecisionRow.seq > after,
                DecisionRow.seq <= up_to_seq,
            ]
            return _sized_page(s, run, where, limit, max_chars)

    def newest_checkpoints(self, run: RunKey, up_to_seq: int, most: int) -> tuple[list[str], int]:
        """The live branch's last ``most`` checkpoint entries up to ``up_to_seq`` (oldest
        first), and how many it has in all (counted by the database, none loaded)."""
        live = [*_LIVE_CHECKPOINTS.where(run), DecisionRow.seq <= up_to_seq]
        with self._read() as s:
            total = int(s.exec(select(sa.func.count()).where(*live)).one())
            newest = select(DecisionRow.body).where(*live).order_by(col(DecisionRow.seq).desc())
            bodies = list(s.exec(newest.limit(most)))
        return bodies[::-1], total

    def head(self, run: RunKey) -> tuple[dict[str, Any], RunHead]:
        """The run's document and its head, read together."""
        with self._read() as s:
            row = s.get(RunRow, _pk(run))
            if row is None:
                raise _not_found(run)
            columns = [c.strip() for c in _HEAD_COLUMNS.split(",")]
            return run_document(row), _head([getattr(row, c) for c in columns])

    def imported(self, run: RunKey) -> Imported | None:
        """What an imported run came with (None: a run this service created)."""
        with self._read() as s:
            conn = s.connection()
            text = conn.exec_driver_sql(
                _param(conn, f"SELECT imported FROM runs WHERE {_RUN}"), run
            ).scalar()
            return Imported.of(text)

    def entries(
        self, run: RunKey, up_to_seq: int, superseded: bool | None = None
    ) -> Iterator[dict[str, Any]]:
        """``bodies``, parsed."""
        for body in self.bodies(run, up_to_seq, superseded=superseded):
            yield json.loads(body)

    def bodies(self, run: RunKey, up_to_seq: int, superseded: bool | None = None) -> Iterator[str]:
        """The run's decisions up to ``up_to_seq``, in seq order, a page of short statements at
        a time (``flagged``): constant memory, and no statement runs long enough to meet the
        timeout."""
        for body, _ in self.flagged(run, up_to_seq, DecisionFilter(superseded=superseded)):
            yield body

    def flagged(
        self, run: RunKey, up_to_seq: int, kept: DecisionFilter = EVERY_ENTRY, page: int = 1000
    ) -> Iterator[tuple[str, bool]]:
        """The entries up to ``up_to_seq`` that ``kept`` keeps, as ``bodies`` reads them, each
        with its superseded flag."""
        after = 0
        while True:
            with self._read() as s:
                q = (
                    select(DecisionRow.seq, DecisionRow.body, DecisionRow.superseded)
                    .where(
                        *kept.where(run),
                        DecisionRow.seq > after,
                        DecisionRow.seq <= up_to_seq,
                    )
                    .order_by(col(DecisionRow.seq))
                    .limit(page)
                )
                rows = list(s.exec(q))
            yield from ((body, bool(flag)) for _, body, flag in rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def superseded_count(self, run: RunKey) -> int:
        with self._read() as s:
            q = select(sa.func.count()).where(
                *_is(DecisionRow, run),
                DecisionRow.superseded == True,  # noqa: E712
            )
            return int(s.exec(q).one())

    def plot(
        self,
        run: RunKey,
        points: int,
        first: int | None,
        last: int | None,
        max_events: int,
    ) -> dict[str, Any]:
        """The run's plot over steps ``first``..``last`` (omitted: where its log begins, ends)
        in at most ``points`` buckets a branch (``store.plots``), in one snapshot: the head
        and the database's tiles of the same moment (a picture of a log that may be growing,
        never a proof)."""
        from lrpilot.store import plots  # it builds on this module's statement helpers

        with self._snapshot_conn() as conn:
            head = _read_head(conn, run)
            low, high = plots.extent(conn, run)
            first = (low or 0) if first is None else first
            last = (high if high is not None else first) if last is None else last
            if self._tiles is None:
                self._tiles = plots.Tiles()
            log = plots.Plotted(run, len(head.spec.base_lrs), head.last_seq, (low or 0, high or 0))
            return self._tiles.plot(conn, log, points, first, max(first, last), max_events)


def _run_row(run: NewRun) -> RunRow:
    spec = run.spec
    return RunRow(
        run_id=spec.run_id,
        project=run.project,
        policy=spec.policy.id,
        params=canonical_json(spec.policy.params),
        base_lrs=canonical_json(list(spec.base_lrs)),
        metric=spec.metric,
        labels=canonical_json(spec.labels),
        config_hash=spec.config_hash,
        state=run.state,
        lrs=run.lrs,
        head_hash=run_genesis(spec.header_doc()),
        created_at=spec.created_at,
        last_at=spec.created_at,
        aggregate=None if spec.aggregate is None else canonical_json(spec.aggregate.model_dump()),
        scaling=None if spec.scaling is None else canonical_json(spec.scaling.model_dump()),
        clock=None if spec.clock == "steps" else spec.clock,
        guard=None
        if spec.guard is None
        else canonical_json(spec.guard.model_dump(exclude_none=True)),
    )


def _label_rows(run: NewRun) -> list[RunLabelRow]:
    return [
        RunLabelRow(project=run.project, run_id=run.run_id, key=key, value=value)
        for key, value in run.spec.labels.items()
    ]


def _pk(run: RunKey) -> dict[str, str]:
    """The run's primary key as ``Session.get`` takes it (by name: no column order assumed)."""
    return run._asdict()


def _is(table: type[DecisionRow], run: RunKey) -> tuple[Any, ...]:
    """The ORM's ``_RUN``: the rows of this run of this project."""
    return (col(table.project) == run.project, col(table.run_id) == run.run_id)


def _keys_in(count: int) -> str:
    """``count`` runs' keys (``_flat`` gives their parameters): row values, which SQLite and
    PostgreSQL both compare with the (project, run_id) primary key's index."""
    return "(project, run_id) IN (" + ", ".join(["(?, ?)"] * count) + ")"


def _flat(runs: Sequence[RunKey]) -> tuple[str, ...]:
    return tuple(part for run in runs for part in run)


def _by_key(rows: Sequence[Any]) -> dict[RunKey, RunHead]:
    heads = (_head(row) for row in rows)
    return {head.key: head for head in heads}


def _log_rows(rows: Sequence[Any]) -> Iterator[LogRow]:
    for seq, step, action, flag, digest, body in rows:
        yield LogRow(int(seq), int(step), str(action), bool(flag), str(digest), str(body))


def _batches(rows: Iterator[LogRow]) -> Iterator[list[LogRow]]:
    while batch := list(itertools.islice(rows, IMPORT_BATCH)):
        yield batch


def _report(row: Sequence[Any]) -> Report:
    return Report(
        int(row[0]),
        int(row[1]),
        parse_float(_token(row[2])),
        float(row[3]),
        str(row[4]),
        None if row[5] is None else json.loads(row[5]),
        None if row[6] is None else json.loads(row[6]),
    )


def _sized_page(
    s: Session, run: RunKey, where: list[Any], limit: int, max_chars: int | None
) -> tuple[list[tuple[str, bool]], int | None]:
    """The first ``limit`` decision rows that match ``where`` in seq order, (body, superseded)
    each, and the seq the next page starts after (None: no row is left). With ``max_chars``,
    the page ends before the body that would take it past that many characters (it holds one
    row at least): the sizes are read first, so that no more than the page is ever loaded (1,000
    entries of a 65,536-rank step would be 6 GB)."""
    sizes = list(
        s.exec(
            select(DecisionRow.seq, sa.func.length(DecisionRow.body))
            .where(*where)
            .order_by(col(DecisionRow.seq))
            .limit(limit + 1)
        )
    )
    seqs = _within(sizes[:limit], max_chars)
    rows = s.exec(
        select(DecisionRow.body, DecisionRow.superseded)
        .where(*_is(DecisionRow, run), col(DecisionRow.seq).in_(seqs))
        .order_by(col(DecisionRow.seq))
    )
    more = len(sizes) > len(seqs)
    return [(body, bool(flag)) for body, flag in rows], seqs[-1] if more else None


def _within(sizes: Sequence[tuple[int, int]], max_chars: int | None) -> list[int]:
    """The seqs of the first (seq, size) pairs whose sizes add up to ``max_chars`` at most
    (one at least)."""
    seqs: list[int] = []
    used = 0
    for seq, size in sizes:
        used += size + 1
        if seqs and max_chars is not None and used > max_chars:
            break
        seqs.append(seq)
    return seqs


def _token(text: str) -> float | str:
    """A stored canonical float token (a JSON number, or "NaN" with its quotes) as JSON gives it."""
    parsed: float | str = json.loads(text)
    return parsed


def _param(conn: sa.Connection, statement: str) -> str:
    """The statement in the driver's placeholder style (written with ``?``, as SQLite's)."""
    return statement.replace("?", "%s") if conn.dialect.name == "postgresql" else statement


def _commit(conn: sa.Connection, work: Callable[[WriteTx], T], stats: StoreStats) -> T:
    with conn.begin():
        tx = WriteTx(conn)
        result = work(tx)
        tx.flush()
    stats.committed(tx)
    return result


class _LostRace(Exception):
    """Another writer won (a unique violation, a deadlock, a serialization failure): the
    transaction can simply run again on what the winner wrote."""


def _is_busy(exc: BaseException) -> bool:
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


def _is_lost_race(orig: BaseException) -> bool:
    if isinstance(orig, sqlite3.IntegrityError):
        return True
    return getattr(orig, "pgcode", None) in _RETRY_PGCODES


def _cause(orig: BaseException) -> tuple[str, str]:
    """Why the database is unavailable: a short cause (a metric's label) and its sentence."""
    text = str(orig).lower()
    if "disk is full" in text or "no space left" in text:
        return "disk_full", "the database's disk is full"
    if "locked" in text or "busy" in text or "lock timeout" in text:
        return "locked", "the database is locked by another writer"
    if isinstance(orig, DatabaseTimeout) or any(
        what in text for what in ("interrupted", "statement timeout", "canceling statement")
    ):
        return "timeout", "the database did not answer in time"
    return "unreachable", "the database is unreachable"
