"""Runs and their decision logs: the only code that reads or writes them.

Every decision is made inside one transaction that holds the run's lock (row lock on
PostgreSQL, the write lock on SQLite), loads the run's stored state (O(1), whatever the
run's length), asks the pure policy, appends the decision to the hash chain and saves the
new state.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from lrpilot.canonical import canonical_json, parse_float, same_float, sha256_hex
from lrpilot.policies import Frozen, Observation, Policy, get_policy
from lrpilot.store.db import make_engine, write_lock, writer
from lrpilot.store.errors import Conflict, RunNotFound, Unavailable
from lrpilot.store.tables import DecisionRow, RunLabelRow, RunRow

GENESIS = "0" * 64  # prev_hash of a run's first decision


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RunSpec:
    """What a client asks for when it creates a run (already shape-checked by the api)."""

    policy: str
    version: int
    params: dict[str, Any]
    base_lrs: tuple[float, ...]
    metric: str | None
    labels: dict[str, str]


@dataclass(frozen=True)
class Page:
    """One page of a list: canonical JSON documents and the cursor of the next page."""

    items: list[str]
    next: int | str | None


@lru_cache(maxsize=4096)
def _resolved(policy_key: str, params_json: str, base_lrs_json: str) -> tuple[Policy, Frozen]:
    # A run's params were validated when it was created; parse them once per process.
    name, version = policy_key.split("@")
    policy = get_policy(name, int(version))
    base_lrs = tuple(parse_float(x) for x in json.loads(base_lrs_json))
    return policy, policy.resolve(json.loads(params_json), base_lrs)


def run_document(row: RunRow) -> dict[str, Any]:
    name, version = row.policy.split("@")
    return {
        "run_id": row.run_id,
        "policy": {"name": name, "version": int(version), "params": json.loads(row.params)},
        "base_lrs": json.loads(row.base_lrs),
        "metric": row.metric,
        "labels": json.loads(row.labels),
        "config_hash": row.config_hash,
        "lrs": json.loads(row.lrs),
        "last_step": row.last_step,
        "last_seq": row.last_seq,
        "counts": {"decisions": row.last_seq, "reductions": row.reductions},
        "status": row.status,
        "created_at": row.created_at,
    }


def decision_hash(decision: dict[str, Any]) -> str:
    """SHA-256 of the canonical decision without its own hash (prev_hash included)."""
    return sha256_hex(canonical_json({k: v for k, v in decision.items() if k != "hash"}))


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self._writer = writer(self.engine)
        self._lock = write_lock(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        lock = self._lock or contextlib.nullcontext()
        with lock, _unavailable_on_db_error(), Session(self._writer) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with _unavailable_on_db_error(), Session(self.engine) as session:
            yield session

    def ping(self) -> None:
        with self._read() as s:
            s.exec(select(sa.literal(1))).one()

    # -- runs ------------------------------------------------------------------------------

    def put_run(self, run_id: str, spec: RunSpec) -> tuple[dict[str, Any], bool]:
        """Create the run (True) or return the stored one if its spec is the same (False)."""
        policy = get_policy(spec.policy, spec.version)
        params = policy.resolve(spec.params, spec.base_lrs)  # PolicyError -> 422
        pid = f"{policy.name}@{policy.version}"
        params_doc = params.model_dump()
        initial = policy.init(params, spec.base_lrs)
        config_hash = sha256_hex(
            canonical_json({"policy": pid, "params": params_doc, "base_lrs": list(spec.base_lrs)})
        )
        row = RunRow(
            run_id=run_id,
            policy=pid,
            params=canonical_json(params_doc),
            base_lrs=canonical_json(list(spec.base_lrs)),
            metric=spec.metric,
            labels=canonical_json(spec.labels),
            config_hash=config_hash,
            state=canonical_json(initial.model_dump()),
            lrs=canonical_json(list(initial.lrs)),
            head_hash=GENESIS,
            created_at=now(),
        )
        with self._write() as s:
            existing = s.get(RunRow, run_id)
            if existing is not None:
                same = (
                    existing.config_hash == row.config_hash
                    and existing.metric == row.metric
                    and existing.labels == row.labels
                )
                if not same:
                    raise Conflict(
                        f"run {run_id!r} exists with another spec (config_hash "
                        f"{existing.config_hash[:12]}…, metric {existing.metric!r}, labels "
                        f"{existing.labels}); a run's spec never changes: use a new run_id"
                    )
                return run_document(existing), False
            s.add(row)
            s.flush()  # the run before its labels: the foreign key needs it
            for key, value in spec.labels.items():
                s.add(RunLabelRow(run_id=run_id, key=key, value=value))
            s.flush()
            return run_document(row), True

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self._read() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise RunNotFound(f"run {run_id!r} not found")
            return run_document(row)

    def list_runs(self, labels: dict[str, str], after: str | None, limit: int) -> Page:
        with self._read() as s:
            q = select(RunRow).order_by(col(RunRow.run_id)).limit(limit + 1)
            if after is not None:
                q = q.where(col(RunRow.run_id) > after)
            for key, value in sorted(labels.items()):
                labelled = select(RunLabelRow.run_id).where(
                    RunLabelRow.key == key, RunLabelRow.value == value
                )
                q = q.where(col(RunRow.run_id).in_(labelled))
            rows = list(s.exec(q))
            more = len(rows) > limit
            rows = rows[:limit]
            return Page(
                items=[canonical_json(run_document(r)) for r in rows],
                next=rows[-1].run_id if more else None,
            )

    # -- decisions -------------------------------------------------------------------------

    def observe(self, run_id: str, step: int, value: float) -> str:
        """Decide for (step, value) and return the decision's canonical JSON.

        A step that was already decided returns that decision if the value is the same (a
        retry is never counted twice) and is a Conflict otherwise.
        """
        with self._write() as s:
            run = s.exec(
                select(RunRow).where(RunRow.run_id == run_id).with_for_update()
            ).one_or_none()
            if run is None:
                raise RunNotFound(f"run {run_id!r} not found")
            if run.last_step is not None and step <= run.last_step:
                return self._replay(s, run, step, value)

            policy, params = _resolved(run.policy, run.params, run.base_lrs)
            state = policy.load_state(json.loads(run.state))
            outcome, new_state = policy.step(
                params, state, Observation(step=step, value=value, metric=run.metric or "metric")
            )
            seq = run.last_seq + 1
            decision: dict[str, Any] = {
                "run_id": run_id,
                "seq": seq,
                "step": step,
                "value": value,
                "lrs": list(outcome.lrs),
                "previous_lrs": json.loads(run.lrs),
                "action": outcome.action,
                "reason": outcome.reason,
                "policy": run.policy,
                "config_hash": run.config_hash,
                "state": new_state.model_dump(),
                "prev_hash": run.head_hash,
                "created_at": now(),
            }
            decision["hash"] = decision_hash(decision)
            body = canonical_json(decision)
            s.add(
                DecisionRow(
                    run_id=run_id,
                    seq=seq,
                    step=step,
                    action=outcome.action,
                    hash=decision["hash"],
                    body=body,
                )
            )
            run.last_seq = seq
            run.last_step = step
            run.head_hash = decision["hash"]
            run.state = canonical_json(decision["state"])
            run.lrs = canonical_json(decision["lrs"])
            if outcome.action == "reduce":
                run.reductions += 1
            s.add(run)
            return body

    def _replay(self, s: Session, run: RunRow, step: int, value: float) -> str:
        row = s.exec(
            select(DecisionRow).where(
                DecisionRow.run_id == run.run_id,
                DecisionRow.step == step,
                col(DecisionRow.superseded).is_(False),
            )
        ).first()
        if row is None:
            raise Conflict(
                f"step {step} is below the last decided step {run.last_step} of run "
                f"{run.run_id!r} and was never decided: steps must not go backwards "
                "(a job resumed from an older checkpoint should rewind the run first)"
            )
        stored = parse_float(json.loads(row.body)["value"])
        if not same_float(stored, value):
            raise Conflict(
                f"step {step} of run {run.run_id!r} was already decided (seq {row.seq}) with "
                f"value {stored!r}; this request says {value!r}: a step's value cannot change"
            )
        return row.body

    def lr_at(self, run_id: str, step: int | None) -> dict[str, Any]:
        """The lrs in force at training step ``step``: set by the last decision at or before it."""
        with self._read() as s:
            run = s.get(RunRow, run_id)
            if run is None:
                raise RunNotFound(f"run {run_id!r} not found")
            if step is None:
                lrs, seq, at = json.loads(run.lrs), run.last_seq or None, run.last_step
            else:
                row = s.exec(
                    select(DecisionRow)
                    .where(
                        DecisionRow.run_id == run_id,
                        DecisionRow.step <= step,
                        col(DecisionRow.superseded).is_(False),
                    )
                    .order_by(col(DecisionRow.seq).desc())
                    .limit(1)
                ).first()
                if row is None:  # before the first decision: the policy's initial lrs
                    policy, params = _resolved(run.policy, run.params, run.base_lrs)
                    initial = policy.init(
                        params, tuple(parse_float(x) for x in json.loads(run.base_lrs))
                    )
                    lrs, seq, at = list(initial.lrs), None, None
                else:
                    lrs, seq, at = json.loads(row.body)["lrs"], row.seq, row.step
            return {"run_id": run_id, "step": step, "lrs": lrs, "seq": seq, "decided_at_step": at}

    def list_decisions(
        self, run_id: str, after: int, limit: int, action: str | None = None
    ) -> Page:
        with self._read() as s:
            if s.get(RunRow, run_id) is None:
                raise RunNotFound(f"run {run_id!r} not found")
            q = (
                select(DecisionRow.seq, DecisionRow.body)
                .where(DecisionRow.run_id == run_id, DecisionRow.seq > after)
                .order_by(col(DecisionRow.seq))
                .limit(limit + 1)
            )
            if action is not None:
                q = q.where(DecisionRow.action == action)
            rows = list(s.exec(q))
            more = len(rows) > limit
            rows = rows[:limit]
            return Page(items=[body for _, body in rows], next=rows[-1][0] if more else None)


@contextlib.contextmanager
def _unavailable_on_db_error() -> Iterator[None]:
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise Unavailable(f"database unavailable: {exc.orig}") from exc
