"""The decision path of the service: observations in, sealed and stored decisions out.

``Decisions`` is what the api calls. Observations go through a group commit (``commit``; which
one, ``lrpilot.app`` chooses for its database): one transaction, ``decide_batch``, a batch of
concurrent observations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

from lrpilot.domain import agreement, guarding, ranges, scaling, waiting
from lrpilot.domain.aggregated import Pending, Posted, aggregate_in, check_world
from lrpilot.domain.commit import GroupCommit, WaitTimeout
from lrpilot.domain.deciding import check_same_spec, decide, new_run, now, retried
from lrpilot.domain.errors import Conflict, RunBusy, RunNotFound, Unavailable
from lrpilot.entries import NOBODY, Asker, Kind
from lrpilot.settings import Settings
from lrpilot.spec import RunSpec, RunStored
from lrpilot.store.acks import Acks
from lrpilot.store.records import Ack, RunHead, RunKey
from lrpilot.store.runs import Store, WriteTx


class Decisions:
    """The decision path of the service, over the store."""

    def __init__(self, store: Store, settings: Settings, writer: GroupCommit[Posted, str]) -> None:
        self.store = store
        # however long the database is locked or slow, a request waits this long at the most
        self._timeout = settings.db_timeout_s
        self._max_world = settings.max_world_size
        self._writer = writer
        self.waiters = waiting.Waiters()
        self.acks = Acks(store)

    def close(self) -> None:
        self._writer.close()

    async def observe(self, posted: Posted, applied: tuple[int, int, str] | None = None) -> bytes:
        """The decision of the ``posted`` observation, as canonical JSON (UTF-8), acknowledged
        only once it is committed. In an
        aggregated run, a rank whose report does not complete its step waits (holding no
        thread and no connection) for the step's decision, which every rank gets alike.

        ``applied`` (step, seq, hash): the rank's acknowledgement of the lrs it applied at an
        earlier step (docs/agreement.md), checked and kept before the observation; then the
        answer lists the run's disagreeing ranks, if any (and so does every waiting rank's)."""
        run, step, rank, world_size = posted.run, posted.step, posted.rank, posted.world_size
        check_world(rank, world_size, self._max_world)
        if applied is not None:
            assert rank is not None and world_size is not None  # (ObservationIn checks it)
            await asyncio.to_thread(self._acknowledge_quietly, run, rank, world_size, *applied)
        try:
            body = await self._submit(posted)
        except Pending as pending:
            return await self.waiters.step_decided(
                run,
                step,
                pending.deadline,
                self._submit,
                functools.partial(self._decided_step, run, step, applied is not None),
            )
        answer = body.encode()
        if applied is not None:
            flagged = await asyncio.to_thread(self.acks.disagreements, run)
            answer = agreement.flagged(answer, flagged)
        self.waiters.decided(run, step, answer)
        return answer

    def _decided_step(self, run: RunKey, step: int, flag: bool) -> str | None:
        """The step's decision as another replica (or this one, a moment before its waiters
        were handed it) committed it; with ``flag``, the run's disagreements added, as the
        deciding rank's answer has them."""
        body = self.store.decided_step(run, step)
        if body is None or not flag:
            return body
        return agreement.flagged(body.encode(), self.acks.disagreements(run)).decode()

    def _acknowledge_quietly(
        self, run: RunKey, rank: int, world_size: int, step: int, seq: int, got: str
    ) -> None:
        """An acknowledgement sent with an observation: one of a step not decided yet proves
        nothing and is not kept, but the observation goes on (a training loop never fails for
        its acknowledgement)."""
        with contextlib.suppress(Conflict):
            agreement.acknowledge(self.store, self.acks, run, rank, world_size, step, seq, got)

    def acknowledge(
        self, run: RunKey, rank: int, world_size: int, step: int, seq: int, got: str
    ) -> tuple[Ack, list[dict[str, Any]]]:
        """A rank's acknowledgement on its own (leader mode: the ranks that only read), and the
        run's disagreeing ranks after it."""
        check_world(rank, world_size, self._max_world)
        ack = agreement.acknowledge(self.store, self.acks, run, rank, world_size, step, seq, got)
        return ack, self.acks.disagreements(run)

    async def _submit(self, posted: Posted) -> str:
        try:
            return await self._writer.submit(posted, self._timeout)
        except WaitTimeout:
            self.store.stats.refused("timeout")  # the bounded wait, spent in the commit's queue
            raise Unavailable(
                "the database did not answer in time; retry later (a retry never counts twice)"
            ) from None

    def create_run(
        self, run_id: str, spec: RunSpec, project: str = "default"
    ) -> tuple[dict[str, Any], bool]:
        """The run created in ``project`` (True), or the stored one if it has the same spec
        (False); another project's run of that id is another run, never looked at."""
        run = new_run(run_id, spec, now(), project)
        stored, created = self.store.create_run(run)
        if not created:
            check_same_spec(RunStored.model_validate(_stored_fields(stored)), run)
        return stored, created

    def lr_at(self, run: RunKey, step: int | None) -> dict[str, Any]:
        """The lrs in force at training step ``step`` (and the run's disagreeing ranks, if any:
        docs/agreement.md)."""
        return self._read_lr(run, step)[0]

    def _read_lr(self, run: RunKey, step: int | None) -> tuple[dict[str, Any], bool]:
        doc, decided = ranges.lr_at(self.store, run, step)
        disagreements = self.acks.disagreements(run)
        if disagreements:
            doc["disagreements"] = disagreements
        return doc, decided

    async def lr_when_decided(self, run: RunKey, step: int, wait_s: float) -> dict[str, Any]:
        """``lr_at(step)`` once the run is decided through ``step`` (a decision at or after it
        exists: the lrs at ``step`` are then certain), waiting up to ``wait_s``: leader mode,
        where one rank posts and the others read."""
        read = functools.partial(self._read_lr, run, step)
        return await self.waiters.run_decided(run, step, wait_s, read)

    def lrs_range(self, run: RunKey, first: int, count: int, every: int = 1) -> dict[str, Any]:
        return ranges.lrs_range(self.store, run, first, count, every)

    def resize(
        self,
        run: RunKey,
        step: int,
        by: str,
        size: int,
        asker: Asker = NOBODY,
    ) -> dict[str, Any]:
        # (runs on a worker thread: waiting readers are not woken from here, they poll)
        if by == "world_size":
            check_world(None, size, self._max_world)
        return scaling.resize(self.store, run, step, by, size, asker)


def _stored_fields(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k in RunStored.model_fields}


def decide_batch(store: Store, items: Sequence[Posted]) -> list[str | Exception]:
    """Decide ``items`` in one transaction, in this thread: a body or the refusal for each
    (a threaded group commit's writer calls this with whatever is queued)."""
    return store.transact(lambda tx: _decide_in(tx, items))


def prepare_now(
    store: Store, items: Sequence[Posted]
) -> tuple[list[str | Exception], Callable[[], None]]:
    """``decide_batch`` up to its commit, which it returns; Busy rather than wait for the
    database's lock (an inline group commit, on the event loop)."""
    return store.begin_now(lambda tx: _decide_in(tx, items))


def _decide_in(tx: WriteTx, items: Sequence[Posted]) -> list[str | Exception]:
    """Decide every item in one transaction; one item's refusal does not abort the others."""
    heads, busy = tx.lock_runs({item.run for item in items})
    results: list[str | Exception] = []
    for item in items:
        head = heads.get(item.run)
        if head is None:
            if item.run in busy:
                results.append(RunBusy(f"run {item.run_id!r} is locked by another writer"))
            else:
                results.append(RunNotFound(f"run {item.run_id!r} not found"))
            continue
        try:
            results.append(_decide_one(tx, head, item, heads))
        except Conflict as exc:
            results.append(exc)
    return results


def _decide_one(
    tx: WriteTx, head: RunHead, item: Posted, heads: dict[RunKey, RunHead]
) -> str | Exception:
    if head.spec.aggregate is not None:
        return aggregate_in(tx, head, item, heads)
    if head.last_step is not None and item.step <= head.last_step:
        stored = tx.decision_at_step(item.run, item.step)
        answer = retried(head, item.step, item.value, stored)
        scaling.resized_on_retry(tx, head, item.step, item.world_size, heads, item.asker)
        return answer
    scaling.check_resize_step(head, item.step, "step")
    if item.world_size is not None:
        # (its scale entry names the token, not the process: the shape such entries have)
        asker = Asker(by=item.asker.by)
        head, _ = scaling.resized(tx, head, item.step, "world_size", item.world_size, heads, asker)
    find = None
    if head.spec.guard is not None:
        again = guarding.answered_rollback(tx, head, item.step, item.value)
        if again is not None:  # a retry of the step just rolled back (the run is below it)
            return again
        find = guarding.finder(tx, item.run)
    decision = decide(head, item.step, item.value, item.asker, find=find)
    tx.append_decision(decision)
    heads[item.run] = head = head.after(decision)
    if decision.action == Kind.ROLLBACK:
        heads[item.run] = guarding.rolled_back(tx, head, decision, item.asker)
    return decision.body
