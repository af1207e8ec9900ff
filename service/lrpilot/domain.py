"""Observation -> decision: resolve the run's policy, step it, seal the decision into the chain.

No SQL and no HTTP here. The pure functions (``new_run``, ``decide``, ``retried``) are what
offline tools (verify, replay, import) share with the service; ``Decisions`` runs them for the
api over the store, one group-committed transaction a batch of concurrent observations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from lrpilot.aggregate import reason_with, weighted_mean
from lrpilot.canonical import canonical_json, parse_float, same_float, sha256_hex
from lrpilot.chain import GENESIS, seal
from lrpilot.group_commit import GroupCommit, Inline, Threaded, WaitTimeout
from lrpilot.policies import Frozen, Observation, Policy, State, get_policy, policy_id
from lrpilot.scaling import SCALE, InForce, entry_fields, scaled
from lrpilot.scaling import note as scale_note
from lrpilot.scaling import reason as scale_reason
from lrpilot.settings import Settings
from lrpilot.store.errors import Busy, Conflict, Invalid, RunBusy, RunNotFound, Unavailable
from lrpilot.store.records import NewDecision, NewRun, Report, RunHead
from lrpilot.store.runs import Store, WriteTx

MAX_LRS_VALUES = 200_000  # numbers in one GET /lrs answer (steps x param groups): ~4 MiB
WAIT_POLL_S = 0.2  # how often a waiting reader looks for other replicas' decisions


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
    # aggregated mode: {"timeout_s": float, "on_timeout": "decide" | "refuse"}; None: leader mode
    aggregate: dict[str, Any] | None = None
    # elastic jobs: {"rule": "linear" | "sqrt", "by": "world_size" | "batch_size", "base": int}
    scaling: dict[str, Any] | None = None


@lru_cache(maxsize=4096)
def resolved(policy_key: str, params_json: str, base_lrs_json: str) -> tuple[Policy, Frozen]:
    """A stored run's policy and params; they were validated at creation: parse once a process."""
    name, version = policy_key.split("@")
    policy = get_policy(name, int(version))
    base_lrs = tuple(parse_float(x) for x in json.loads(base_lrs_json))
    return policy, policy.resolve(json.loads(params_json), base_lrs)


def new_run(run_id: str, spec: RunSpec, created_at: str) -> NewRun:
    """The run to store: params resolved (PolicyError if invalid), initial state, config hash."""
    policy = get_policy(spec.policy, spec.version)
    params = policy.resolve(spec.params, spec.base_lrs)
    pid = policy_id(policy.name, policy.version)
    params_doc = params.model_dump()
    initial = policy.init(params, spec.base_lrs)
    config_hash = sha256_hex(
        canonical_json({"policy": pid, "params": params_doc, "base_lrs": list(spec.base_lrs)})
    )
    return NewRun(
        run_id=run_id,
        policy=pid,
        params=canonical_json(params_doc),
        base_lrs=canonical_json(list(spec.base_lrs)),
        metric=spec.metric,
        labels=spec.labels,
        config_hash=config_hash,
        state=canonical_json(initial.model_dump()),
        lrs=canonical_json(list(initial.lrs)),
        head_hash=GENESIS,
        created_at=created_at,
        aggregate=None if spec.aggregate is None else canonical_json(spec.aggregate),
        scaling=None if spec.scaling is None else canonical_json(spec.scaling),
    )


def check_same_spec(stored: dict[str, Any], run: NewRun) -> None:
    """A run's spec never changes: creating it again must ask for the same one."""
    aggregate, scaling = stored.get("aggregate"), stored.get("scaling")
    stored_aggregate = None if aggregate is None else canonical_json(aggregate)
    stored_scaling = None if scaling is None else canonical_json(scaling)
    same = (
        stored["config_hash"] == run.config_hash
        and stored["metric"] == run.metric
        and stored["labels"] == run.labels
        and stored_aggregate == run.aggregate
        and stored_scaling == run.scaling
    )
    if not same:
        raise Conflict(
            f"run {run.run_id!r} exists with another spec (config_hash "
            f"{stored['config_hash'][:12]}…, metric {stored['metric']!r}, labels "
            f"{canonical_json(stored['labels'])}, aggregate {stored_aggregate or 'none'}, "
            f"scaling {stored_scaling or 'none'}); a run's spec never changes: use a new run_id"
        )


# The states this process wrote last, by their canonical JSON: the next decision of a run reads
# back the very text its previous decision stored, and need not parse and validate it again.
# States are frozen, so sharing them is safe; the bound only caps memory.
_STATES: dict[tuple[str, str], State] = {}
_STATES_MAX = 4096


def _load_state(policy: Policy, head: RunHead) -> State:
    key = (head.policy, head.state)
    state = _STATES.get(key)
    if state is None:
        state = policy.load_state(json.loads(head.state))
    return state


def _remember_state(policy_key: str, state_json: str, state: State) -> None:
    if len(_STATES) >= _STATES_MAX:
        _STATES.clear()
    _STATES[(policy_key, state_json)] = state


def decide(
    head: RunHead,
    step: int,
    value: float,
    created_at: str,
    client: dict[str, Any] | None = None,
    aggregated: dict[str, Any] | None = None,
) -> NewDecision:
    """The decision for a new step (above ``head.last_step``), sealed onto the chain;
    ``client`` is who posted the observation, as it declared itself (host, process, rank);
    ``aggregated`` (aggregated mode) the fields that say which ranks' reports ``value`` is the
    weighted mean of: ``ranks``, and for a decision taken at the timeout without some ranks
    ``missing_ranks`` and ``timeout_s`` (the reason then names them)."""
    policy, params = resolved(head.policy, head.params, head.base_lrs)
    state = _load_state(policy, head)
    outcome, new_state = policy.step(
        params, state, Observation(step=step, value=value, metric=head.metric or "metric")
    )
    seq = head.last_seq + 1
    state_doc = new_state.model_dump()
    by = scale_factor(head)
    decision: dict[str, Any] = {
        "run_id": head.run_id,
        "seq": seq,
        "step": step,
        "value": value,
        "lrs": scaled(outcome.lrs, by),
        "previous_lrs": scaled(state.lrs, by),  # a policy's state carries the lrs in force
        "action": outcome.action,
        "reason": outcome.reason,
        "policy": head.policy,
        "config_hash": head.config_hash,
        "state": state_doc,
        "prev_hash": head.head_hash,
        "created_at": created_at,
    }
    if client:  # only when declared: decisions without it keep the shape they always had
        decision["client"] = client
    if aggregated:  # only in aggregated mode: other decisions keep their shape and hash
        decision.update(aggregated)
        decision["reason"] = reason_with(outcome.reason, decision)
    if by != 1.0:  # only while a scaling rule scales: other decisions keep their shape
        decision[SCALE] = by
        force = in_force(head)
        assert force is not None and head.scaling is not None
        note = scale_note(json.loads(head.scaling), force, decision["lrs"])
        decision["reason"] = f"{decision['reason']}; {note}"
    body = seal(decision)
    state_json = canonical_json(state_doc)
    _remember_state(head.policy, state_json, new_state)
    return NewDecision(
        run_id=head.run_id,
        seq=seq,
        step=step,
        action=outcome.action,
        hash=decision["hash"],
        body=body,
        state=state_json,
        lrs=canonical_json(decision["lrs"]),
        last_step=step,
        reductions=1 if outcome.reduced else 0,
        scale=head.scale,
    )


def scale_factor(head: RunHead) -> float:
    """The factor a run's scaling rule puts on its lrs now (1.0 without one)."""
    return 1.0 if head.scale is None else parse_float(json.loads(head.scale)["factor"])


def in_force(head: RunHead) -> InForce | None:
    """The run's scale in force (None: the run has no scaling rule)."""
    scale = None if head.scale is None else json.loads(head.scale)
    return InForce.of(None if head.scaling is None else json.loads(head.scaling), scale)


def scale_entry(
    head: RunHead, step: int, size: int, created_at: str, client: dict[str, Any] | None = None
) -> NewDecision:
    """The entry that rescales the run's lrs for a new ``size`` from ``step`` on: the policy's
    state stays as it is, the lrs it serves change by the scaling rule's factor."""
    assert head.scaling is not None
    spec = json.loads(head.scaling)
    was = in_force(head)
    assert was is not None
    policy, _ = resolved(head.policy, head.params, head.base_lrs)
    state = _load_state(policy, head)
    fields = entry_fields(spec, was, size)
    previous = scaled(state.lrs, was.factor)
    lrs = scaled(state.lrs, fields[SCALE])
    # the lrs in force, and the base lrs a schedule may climb back to (a warmup, a restart)
    base_lrs = [parse_float(x) for x in json.loads(head.base_lrs)]
    for now_lrs in (list(state.lrs), base_lrs):
        pairs = zip(scaled(now_lrs, fields[SCALE]), now_lrs, strict=True)
        if any(math.isinf(lr) and not math.isinf(was) for lr, was in pairs):
            raise Conflict(
                f"{spec['by']} {size} would scale the lrs of run {head.run_id!r} by "
                f"{fields[SCALE]!r} past the largest float ({now_lrs} x "
                f"{fields[SCALE]!r}): not rescaled"
            )
    entry: dict[str, Any] = {
        "run_id": head.run_id,
        "seq": head.last_seq + 1,
        "step": step,
        "value": None,
        "lrs": lrs,
        "previous_lrs": previous,
        "action": SCALE,
        "reason": scale_reason(spec, was.size, size, previous, lrs),
        "policy": head.policy,
        "config_hash": head.config_hash,
        "state": json.loads(head.state),
        "prev_hash": head.head_hash,
        "created_at": created_at,
        **fields,
    }
    if client:
        entry["client"] = client
    body = seal(entry)
    return NewDecision(
        run_id=head.run_id,
        seq=entry["seq"],
        step=step,
        action=SCALE,
        hash=entry["hash"],
        body=body,
        state=head.state,
        lrs=canonical_json(lrs),
        last_step=head.last_step,
        reductions=0,
        scale=canonical_json(InForce(size, fields[SCALE], step).doc()),
    )


def unsettled_from(head: RunHead) -> int | None:
    """The first step whose lrs a resize may still change (a run with a scaling rule: a resize
    may apply from its last decided step, or from its last resize's step, on); None without a
    scaling rule."""
    force = in_force(head)
    if force is None:
        return None
    return max(head.last_step or 0, force.step or 0)


def check_resize_step(head: RunHead, step: int, what: str) -> None:
    """A step may not go below the step the run's last resize applies from."""
    force = in_force(head)
    if force is not None and force.step is not None and step < force.step:
        raise Conflict(
            f"{what} {step} is below step {force.step} of run {head.run_id!r}, where its "
            f"{json.loads(head.scaling or '{}').get('by', 'size')} {force.size} applies from: "
            "steps must not go backwards (a job resumed from an older checkpoint should rewind "
            "the run first)"
        )


def _initial(head: RunHead) -> State:
    policy, params = resolved(head.policy, head.params, head.base_lrs)
    return policy.init(params, tuple(parse_float(x) for x in json.loads(head.base_lrs)))


def _in_force(policy: Policy, head: RunHead, body: str | None) -> tuple[State, float]:
    """The policy state a stored entry left and the scaling rule's factor on its lrs (1.0 when
    it carries none); before the first entry (None), the initial state."""
    if body is None:
        return _initial(head), 1.0
    doc = json.loads(body)
    return policy.load_state(doc["state"]), parse_float(doc.get(SCALE, 1.0))


def retried(head: RunHead, step: int, value: float, stored: str | None) -> str:
    """The answer to a step at or below the last decided one: the stored decision of that step
    when the value is the same (a retry never counts twice), else a Conflict."""
    if stored is None:
        raise Conflict(
            f"step {step} is below the last decided step {head.last_step} of run "
            f"{head.run_id!r} and was never decided: steps must not go backwards "
            "(a job resumed from an older checkpoint should rewind the run first)"
        )
    decision = json.loads(stored)
    was = parse_float(decision["value"])
    if not same_float(was, value):
        raise Conflict(
            f"step {step} of run {head.run_id!r} was already decided (seq {decision['seq']}) "
            f"with value {was!r}; this request says {value!r}: a step's value cannot change"
        )
    return stored


@dataclass(frozen=True, slots=True)
class Posted:
    """One observation as posted to a run."""

    run_id: str
    step: int
    value: float
    client: dict[str, Any] | None = None  # who posted it, as it declared itself
    rank: int | None = None  # aggregated mode: which rank reports, of how many, how heavily
    world_size: int | None = None
    weight: float | None = None
    timed_out: bool = False  # aggregated mode: decide (or refuse) the step with the ranks present


class Pending(Exception):
    """Aggregated mode: the report is stored, and the step waits for the other ranks until
    ``deadline`` (seconds since the epoch); not a refusal, the caller waits for the decision."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"waiting for the other ranks until {deadline}")
        self.deadline = deadline


class _StepWait:
    """The ranks of this process waiting for one step of an aggregated run: the decision, once
    this process commits it, and the one read of the database a poll that they share."""

    def __init__(self, decided: asyncio.Future[str]) -> None:
        self.decided = decided
        self.waiters = 0
        self._read: asyncio.Future[str | None] | None = None
        self._read_at = 0.0

    async def poll(self, read: Callable[[], str | None]) -> str | None:
        """``read()`` on a thread, or the answer of the one a waiter started less than half a
        poll ago (the waiters' polls are staggered: they would read one after the other)."""
        fresh = time.monotonic() - self._read_at < WAIT_POLL_S / 2
        if self._read is None or (self._read.done() and not fresh):
            self._read = asyncio.ensure_future(asyncio.to_thread(read))
            self._read_at = time.monotonic()
        return await asyncio.shield(self._read)


class Decisions:
    """The decision path of the service: observations in, sealed and stored decisions out."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        # however long the database is locked or slow, a request waits this long at the most
        self._timeout = settings.db_timeout_s
        self._waiting: dict[str, asyncio.Event] = {}  # runs readers wait on (leader mode)
        self._steps: dict[tuple[str, int], _StepWait] = {}  # steps ranks wait on (aggregated)
        self._writer: GroupCommit[Posted, str]
        if store.is_sqlite:  # statements that never wait on the network: batches on the loop
            self._writer = Inline(self._prepare_now, busy=Busy)
        else:
            self._writer = Threaded(self.decide_batch, busy=RunBusy, name="decisions-")

    def close(self) -> None:
        self._writer.close()

    async def observe(
        self,
        run_id: str,
        step: int,
        value: float,
        client: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        weight: float | None = None,
    ) -> str:
        """The decision's canonical JSON, acknowledged only once it is committed. In an
        aggregated run, a rank whose report does not complete its step waits (holding no
        thread and no connection) for the step's decision, which every rank gets alike."""
        posted = Posted(run_id, step, value, client, rank, world_size, weight)
        try:
            body = await self._submit(posted)
        except Pending as pending:
            return await self._when_aggregated(run_id, step, pending.deadline)
        self._decided(run_id, step, body)
        return body

    async def _submit(self, posted: Posted) -> str:
        try:
            return await self._writer.submit(posted, self._timeout)
        except WaitTimeout:
            raise Unavailable(
                "the database did not answer in time; retry later (a retry never counts twice)"
            ) from None

    async def _when_aggregated(self, run_id: str, step: int, deadline: float) -> str:
        """The decision of ``step`` once the other ranks have reported (a decision in this
        process wakes the wait; it looks every ``WAIT_POLL_S`` for other replicas'), or at
        ``deadline`` what the run's ``on_timeout`` says: decide with the ranks present (whoever
        locks the run first decides; the others find that decision), or refuse.

        The ranks of one step in this process share their wait: the decision made here is
        handed to all of them as it is committed, and they share one read a poll for the
        decisions of other replicas (with hundreds of ranks, a read each was most of a step's
        time)."""
        key = (run_id, step)
        wait = self._steps.get(key)
        if wait is None:
            wait = self._steps[key] = _StepWait(asyncio.get_running_loop().create_future())
        wait.waiters += 1
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    try:
                        body = await self._submit(Posted(run_id, step, math.nan, timed_out=True))
                    except Pending as later:  # another replica's clock: wait on
                        deadline = max(later.deadline, time.time() + WAIT_POLL_S)
                        continue
                    self._decided(run_id, step, body)
                    return body
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, WAIT_POLL_S)):
                        return await asyncio.shield(wait.decided)
                decided = await wait.poll(lambda: self.store.decided_step(run_id, step))
                if decided is not None:
                    return decided
        finally:
            wait.waiters -= 1
            if not wait.waiters and self._steps.get(key) is wait:
                del self._steps[key]

    def _decided(self, run_id: str, step: int | None = None, body: str | None = None) -> None:
        """Wake the readers waiting on this run (in this process: others poll), and hand the
        decision of ``step`` (just committed, so live) to the ranks waiting for it."""
        waiting = self._waiting.pop(run_id, None)
        if waiting is not None:
            waiting.set()
        if step is not None and body is not None:
            wait = self._steps.pop((run_id, step), None)
            if wait is not None and not wait.decided.done():
                wait.decided.set_result(body)

    async def lr_when_decided(self, run_id: str, step: int, wait_s: float) -> dict[str, Any]:
        """``lr_at(step)`` once the run is decided through ``step`` (a decision at or after
        it exists: the lrs at ``step`` are then certain), waiting up to ``wait_s``: leader
        mode, where one rank posts and the others read. The wait holds no thread and no
        connection: a decision in this process wakes it, and it looks again every
        ``WAIT_POLL_S`` for decisions that other replicas made."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            answer, decided = await asyncio.to_thread(self._lr_at, run_id, step)
            left = deadline - loop.time()
            if decided or left <= 0:
                return answer
            event = self._waiting.setdefault(run_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, WAIT_POLL_S)):
                    await event.wait()

    def create_run(self, run_id: str, spec: RunSpec) -> tuple[dict[str, Any], bool]:
        """The run created (True), or the stored one if it has the same spec (False)."""
        run = new_run(run_id, spec, now())
        stored, created = self.store.create_run(run)
        if not created:
            check_same_spec(stored, run)
        return stored, created

    def lr_at(self, run_id: str, step: int | None) -> dict[str, Any]:
        """The lrs in force at training step ``step``: the policy's ``lrs_at`` from the state
        of the last decision at or before it (the initial state before the first)."""
        return self._lr_at(run_id, step)[0]

    def _lr_at(self, run_id: str, step: int | None) -> tuple[dict[str, Any], bool]:
        """``lr_at``, and whether the run is decided through ``step`` (a resize may still
        change lrs that are decided: then they are not ``certain``)."""
        head, row = self.store.decision_at_or_before(run_id, step)
        if step is None:
            lrs = json.loads(head.lrs)
            seq, at = (head.last_seq or None), head.last_step
        else:
            policy, params = resolved(head.policy, head.params, head.base_lrs)
            seq, at, body = row if row is not None else (None, None, None)
            state, by = _in_force(policy, head, body)
            lrs = scaled(policy.lrs_at(params, state, step), by)
        decided = step is None or (
            (head.last_step is not None and head.last_step >= step)
            or resolved(head.policy, head.params, head.base_lrs)[0].open_loop
        )
        settled = unsettled_from(head)
        return {
            "run_id": run_id,
            "step": step,
            "lrs": lrs,
            "seq": seq,
            "decided_at_step": at,
            # no later evaluation can change them, nor (a run with a scaling rule) a resize
            "certain": decided and (step is None or settled is None or step < settled),
        }, decided

    def lrs_between(self, run_id: str, first: int, count: int) -> dict[str, Any]:
        """The lrs of ``count`` consecutive training steps from ``first``, and the last of them
        that no later evaluation can change (None when none is certain yet). An answer holds
        at most ``MAX_LRS_VALUES`` numbers: with many param groups, fewer steps (``count``
        says how many; ask again from there)."""
        head, before, within = self.store.decisions_between(run_id, first, first + count - 1)
        groups = len(json.loads(head.base_lrs))
        count = max(1, min(count, MAX_LRS_VALUES // max(1, groups)))
        last = first + count - 1
        policy, params = resolved(head.policy, head.params, head.base_lrs)
        state, by = _in_force(policy, head, before)
        changes = iter(within)  # (step, body), in step order
        upcoming = next(changes, None)
        lrs: list[list[float]] = []
        for step in range(first, last + 1):
            while upcoming is not None and upcoming[0] <= step:
                state, by = _in_force(policy, head, upcoming[1])
                upcoming = next(changes, None)
            lrs.append(scaled(policy.lrs_at(params, state, step), by))
        if policy.open_loop:
            certain: int | None = last
        elif head.last_step is None or head.last_step < first:
            certain = None
        else:
            certain = min(last, head.last_step)
        settled = unsettled_from(head)
        if certain is not None and settled is not None:  # a resize may still change the rest
            certain = min(certain, settled - 1) if settled > first else None
        return {
            "run_id": run_id,
            "from": first,
            "count": count,
            "lrs": lrs,
            "certain_through": certain,
            "open_loop": policy.open_loop,
        }

    def resize(
        self, run_id: str, step: int, by: str, size: int, client: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """An elastic job's new world_size or global batch size from training step ``step``
        on: a scale entry rescales the lrs by the run's scaling rule (none when ``size`` is
        already in force). ``step`` may be the last decided step (a job resumed from the
        checkpoint of its last evaluation), never below it."""

        def work(tx: WriteTx) -> str | None:
            head = tx.lock_run(run_id)
            if head is None:
                raise RunNotFound(f"run {run_id!r} not found")
            if head.scaling is None:
                raise Conflict(
                    f"run {run_id!r} has no scaling rule: create the run with "
                    '"scaling": {"rule": "linear", "by": "world_size", "base": N} to rescale '
                    "its lrs when the job resizes"
                )
            measure = json.loads(head.scaling)["by"]
            if by != measure:
                raise Invalid(
                    ["body", by],
                    f"run {run_id!r} scales by {measure}: the resize must give {measure}",
                    kind="scaling",
                )
            if head.last_step is not None and step < head.last_step:
                raise Conflict(
                    f"step {step} is below the last decided step {head.last_step} of run "
                    f"{run_id!r}: a resize applies from a step not yet decided (a job resumed "
                    "from an older checkpoint should rewind the run first)"
                )
            check_resize_step(head, step, "step")
            return _resized(tx, head, step, by, size, {}, client)[1]

        # (runs on a worker thread: waiting readers are not woken from here, they poll)
        body = self.store.transact(work)
        run = self.store.get_run(run_id)
        return {
            "run_id": run_id,
            "step": step,
            "resized": body is not None,
            "lrs": run["lrs"],
            "scale": run["scale"],
            "decision": json.loads(body) if body is not None else None,
        }

    def decide_batch(self, items: Sequence[Posted]) -> list[str | Exception]:
        """Decide ``items`` in one transaction, in this thread: a body or the refusal for each
        (the group commit's writer thread calls this with whatever is queued)."""
        return self.store.transact(lambda tx: _decide_in(tx, items))

    def _prepare_now(
        self, items: Sequence[Posted]
    ) -> tuple[list[str | Exception], Callable[[], None]]:
        """``decide_batch`` up to its commit, which it returns; Busy rather than wait for the
        database's lock."""
        return self.store.begin_now(lambda tx: _decide_in(tx, items))


def _decide_in(tx: WriteTx, items: Sequence[Posted]) -> list[str | Exception]:
    """Decide every item in one transaction; one item's refusal does not abort the others."""
    heads, busy = tx.lock_runs({item.run_id for item in items})
    results: list[str | Exception] = []
    for item in items:
        head = heads.get(item.run_id)
        if head is None:
            if item.run_id in busy:
                results.append(RunBusy(f"run {item.run_id!r} is locked by another writer"))
            else:
                results.append(RunNotFound(f"run {item.run_id!r} not found"))
            continue
        try:
            if head.aggregate is not None:
                results.append(_aggregate_in(tx, head, item, heads))
            elif head.last_step is not None and item.step <= head.last_step:
                stored = tx.decision_at_step(item.run_id, item.step)
                answer = retried(head, item.step, item.value, stored)
                _resized_on_retry(tx, head, item, heads)
                results.append(answer)
            else:
                check_resize_step(head, item.step, "step")
                if item.world_size is not None:
                    head, _ = _resized(tx, head, item.step, "world_size", item.world_size, heads)
                decision = decide(head, item.step, item.value, now(), item.client)
                tx.append_decision(decision)
                heads[item.run_id] = head.after(decision)
                results.append(decision.body)
        except Conflict as exc:
            results.append(exc)
    return results


def _resized_on_retry(tx: WriteTx, head: RunHead, item: Posted, heads: dict[str, RunHead]) -> None:
    """A retry of the last decided step that says another world_size: the job resumed from
    the checkpoint of its last evaluation on another number of ranks (a resize may apply from
    that step). The answer stays the step's decision; the lrs from the step on are rescaled."""
    force = in_force(head)
    if (
        item.world_size is None
        or force is None
        or item.step != head.last_step
        or (force.step is not None and item.step < force.step)
    ):
        return
    _resized(tx, head, item.step, "world_size", item.world_size, heads, item.client)


def _resized(
    tx: WriteTx,
    head: RunHead,
    step: int,
    by: str,
    size: int,
    heads: dict[str, RunHead],
    client: dict[str, Any] | None = None,
) -> tuple[RunHead, str | None]:
    """The head after a scale entry for ``size`` at ``step`` and the entry, appended when the
    run scales by ``by`` and ``size`` is not the size in force (else the head, and None)."""
    force = in_force(head)
    if force is None or size == force.size or json.loads(head.scaling or "{}")["by"] != by:
        return head, None
    entry = scale_entry(head, step, size, now(), client)
    tx.append_decision(entry)
    heads[head.run_id] = head = head.after(entry)
    return head, entry.body


def _deadline(reports: Sequence[Report], timeout_s: float) -> float:
    """When a step's wait ends: its first report's time plus the run's timeout (epoch s)."""
    first = min(r.created_at for r in reports)
    return datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp() + timeout_s


def _listed(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _aggregate_in(
    tx: WriteTx, head: RunHead, item: Posted, heads: dict[str, RunHead]
) -> str | Exception:
    """An aggregated run's report (or its timeout): the step's decision, ``Pending`` while
    ranks are missing, or the refusal. The run is locked: one writer at a time."""
    assert head.aggregate is not None
    spec = json.loads(head.aggregate)
    timeout_s = parse_float(spec["timeout_s"])
    run_id, step = item.run_id, item.step
    if head.last_step is not None and step <= head.last_step:
        stored = tx.decision_at_step(run_id, step)
        if stored is None:
            return Conflict(
                f"step {step} is below the last decided step {head.last_step} of run "
                f"{run_id!r} and was never decided: steps must not go backwards"
            )
        if item.timed_out or item.rank is None:
            return stored
        weight = 1.0 if item.weight is None else item.weight
        for entry in json.loads(stored).get("ranks", ()):
            if entry["rank"] == item.rank:
                was, was_weight = parse_float(entry["value"]), parse_float(entry["weight"])
                if not same_float(was, item.value) or not same_float(was_weight, weight):
                    return Conflict(
                        f"rank {item.rank} reported value {was!r} (weight {was_weight!r}) for "
                        f"step {step} of run {run_id!r} (decided, seq "
                        f"{json.loads(stored)['seq']}); this request says {item.value!r} "
                        f"(weight {weight!r}): a rank's report of a step cannot change"
                    )
        _resized_on_retry(tx, head, item, heads)
        return stored  # a retry, or a rank that reported too late to count: the same decision
    check_resize_step(head, step, "step")  # a resize since the first report: never decided
    if item.timed_out:
        reports = tx.reports_at(run_id, step)
        if not reports:
            return Conflict(f"step {step} of run {run_id!r} has no report to decide from")
        deadline = _deadline(reports, timeout_s)
        if time.time() < deadline:
            return Pending(deadline)
        world = reports[0].world_size
        counted = [r.rank for r in reports]
        missing = [r for r in range(world) if r not in set(counted)]
        if spec["on_timeout"] == "refuse":
            return Conflict(
                f"step {step} of run {run_id!r} is not decided: ranks {_listed(missing)} of "
                f"{world} did not report within {timeout_s:g} s (ranks {_listed(counted)} did), "
                'and the run refuses to decide without them (aggregate.on_timeout "refuse"); '
                "the step is decided once every rank has reported"
            )
        return _decide_reports(tx, head, step, reports, missing, timeout_s, heads)
    if item.rank is None or item.world_size is None:
        return Invalid(
            ["body", "rank" if item.rank is None else "world_size"],
            f"run {run_id!r} is aggregated: every observation must say its rank and world_size",
        )
    reports = tx.reports_at(run_id, step)
    if reports and reports[0].world_size != item.world_size:
        return Conflict(
            f"world_size {item.world_size} differs from the world_size {reports[0].world_size} "
            f"the other ranks reported for step {step} of run {run_id!r}"
        )
    weight = 1.0 if item.weight is None else item.weight
    mine = next((r for r in reports if r.rank == item.rank), None)
    if mine is not None:
        if not same_float(mine.value, item.value) or not same_float(mine.weight, weight):
            return Conflict(
                f"rank {item.rank} reported value {mine.value!r} (weight {mine.weight!r}) for "
                f"step {step} of run {run_id!r}; this request says {item.value!r} (weight "
                f"{weight!r}): a rank's report of a step cannot change"
            )
    else:
        mine = Report(item.rank, item.world_size, item.value, weight, now(), item.client)
        tx.add_report(run_id, step, mine)
        reports = sorted([*reports, mine], key=lambda r: r.rank)
    if len(reports) == item.world_size:
        return _decide_reports(tx, head, step, reports, [], timeout_s, heads)
    return Pending(_deadline(reports, timeout_s))


def _rank_entry(report: Report) -> dict[str, Any]:
    """A counted rank in its step's decision: its report, and who posted it when declared."""
    entry: dict[str, Any] = {"rank": report.rank, "value": report.value, "weight": report.weight}
    if report.client:
        entry["client"] = report.client
    return entry


def _decide_reports(
    tx: WriteTx,
    head: RunHead,
    step: int,
    reports: Sequence[Report],
    missing: Sequence[int],
    timeout_s: float,
    heads: dict[str, RunHead],
) -> str:
    """The step's decision from the weighted mean of ``reports`` (in rank order); when the
    ranks report a new world_size and the run scales by it, a scale entry first."""
    head, _ = _resized(tx, head, step, "world_size", reports[0].world_size, heads)
    aggregated: dict[str, Any] = {"ranks": [_rank_entry(r) for r in reports]}
    if missing:
        aggregated["missing_ranks"] = list(missing)
        aggregated["timeout_s"] = timeout_s
    mean = weighted_mean((r.value, r.weight) for r in reports)
    decision = decide(head, step, mean, now(), aggregated=aggregated)
    tx.append_decision(decision)
    tx.drop_reports(head.run_id, step)
    heads[head.run_id] = head.after(decision)
    return decision.body
