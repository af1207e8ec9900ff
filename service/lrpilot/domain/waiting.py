"""Waiting readers: ranks that wait for a decision, holding no thread and no connection.

Two kinds wait: in leader mode, readers of ``GET /lr?step=N&wait=...`` until the run is decided
through step N; in aggregated mode, the ranks that reported a step until its decision (or its
timeout). A decision committed in this process wakes them at once; decisions that other
replicas made are found by polling every ``WAIT_POLL_S``. When the process shuts down
(``drain``) every wait ends at once: a reader gets its current answer (not ``certain``), a rank
a 503 (its report is stored: posted again, after the restart or to another replica, it counts
once).

However many wait for one step, one task (a ``_Watch``) polls and is woken for all of them, and
they wait on one future: thousands of waiters cost one read a poll and one read a decision,
and no timer each but their own deadline (a read and a wake-up each every poll left the
decision waiting behind the reads, and /healthz with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from lrpilot.domain.aggregated import Pending, Posted
from lrpilot.domain.errors import Unavailable
from lrpilot.store.records import RunKey

WAIT_POLL_S = 0.2  # how often a waiting reader looks for other replicas' decisions
RELEASE_BATCH = 32  # waiters woken in one turn of the event loop

T = TypeVar("T")
Answer = dict[str, Any]


def _shutting_down(run: RunKey, step: int) -> Unavailable:
    return Unavailable(
        f"the service is shutting down before step {step} of run {run.run_id!r} was decided; this "
        "rank's report is stored and counts once: post it again (to another replica, or once "
        "this one is back) for the decision"
    )


class _Watch(Generic[T]):
    """The waiters of this process for one step: ``done`` is the answer once decided (None
    when they are to stop waiting: the drain), or the error the reads met; ``latest`` is the
    newest answer read (None before the first read ends, which ``read_once`` signals).

    Once ``done``, its waiters are woken ``RELEASE_BATCH`` at a time, one batch a turn of the
    event loop: thousands woken in one turn answered thousands of requests before the loop
    looked at its sockets again, and a /healthz waited behind all of them."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[T | None] = loop.create_future()
        self.latest: Answer | None = None
        self.read_once = asyncio.Event()
        self.waiters = 0
        self.timed_out = False  # its step was decided at its deadline, by a rank waiting here
        self.task: asyncio.Task[None] | None = None
        self._queue: list[asyncio.Future[T | None]] = []
        self._releasing: asyncio.Task[None] | None = None
        self.done.add_done_callback(self._release)

    async def wait(self) -> T | None:
        """``done``'s answer (or error), in this waiter's batch."""
        if self.done.done():
            return self.done.result()
        mine: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._queue.append(mine)
        return await mine

    def _release(self, done: asyncio.Future[T | None]) -> None:
        self._releasing = asyncio.ensure_future(self._release_all())

    async def _release_all(self) -> None:
        queue, self._queue = self._queue, []
        error = self.done.exception()
        for at in range(0, len(queue), RELEASE_BATCH):
            if at:
                await asyncio.sleep(0)  # a turn of the loop: its sockets, then the next batch
            for mine in queue[at : at + RELEASE_BATCH]:
                if mine.done():  # its waiter gave up (its deadline)
                    continue
                if error is None:
                    mine.set_result(self.done.result())
                else:
                    mine.set_exception(error)

    def end(self, result: T | None = None, error: BaseException | None = None) -> None:
        if self.done.done():
            return
        if error is None:
            self.done.set_result(result)
        else:
            self.done.set_exception(error)
            self.done.exception()  # its waiters raise it; none left is no error to log

    def start(self, poll: Coroutine[Any, Any, None]) -> None:
        self.task = asyncio.ensure_future(poll)

    def leave(self) -> bool:
        """One waiter fewer; True when it was the last (its poll then stops)."""
        self.waiters -= 1
        if self.waiters:
            return False
        if self.task is not None:
            self.task.cancel()
        return True


class Waiters:
    """Who waits in this process, and the wake-up a committed decision gives them."""

    def __init__(self) -> None:
        # keyed by (project, run_id): another project's run of the same id is another run
        self._runs: dict[RunKey, asyncio.Event] = {}  # set when this process decides the run
        self._reads: dict[tuple[RunKey, int], _Watch[Answer]] = {}  # readers (leader mode)
        # ranks (aggregated): each is handed the same bytes, encoded once (4,096 ranks of a step
        # get a 200 kB decision each: encoding it for each was a quarter of their wake-up)
        self._steps: dict[tuple[RunKey, int], _Watch[bytes]] = {}
        self.draining = False  # shutting down: no wait starts, every wait ends
        self.steps_timed_out = 0  # aggregated steps a rank of this process decided at deadline

    def waiting(self) -> tuple[int, int, int]:
        """Who waits now (for the metrics): long-poll readers, aggregated steps, their ranks."""
        readers = sum(watch.waiters for watch in self._reads.values())
        ranks = sum(watch.waiters for watch in self._steps.values())
        return readers, len(self._steps), ranks

    def drain(self) -> None:
        """End every wait now (the process is shutting down), and every wait to come."""
        self.draining = True
        for read in self._reads.values():
            read.end(None)
        for (run, step), ranks in self._steps.items():
            ranks.end(error=_shutting_down(run, step))

    def decided(self, run: RunKey, step: int | None = None, body: bytes | None = None) -> None:
        """Wake the readers waiting on this run (in this process: others poll), and hand the
        decision of ``step`` (just committed, so live) to the ranks waiting for it."""
        waiting = self._runs.pop(run, None)
        if waiting is not None:
            waiting.set()
        if step is not None and body is not None:
            ranks = self._steps.get((run, step))
            if ranks is not None:
                ranks.end(body)

    def _decision_event(self, run: RunKey) -> asyncio.Event:
        return self._runs.setdefault(run, asyncio.Event())

    async def step_decided(
        self,
        run: RunKey,
        step: int,
        deadline: float,
        submit: Callable[[Posted], Awaitable[str]],
        read: Callable[[], str | None],
    ) -> bytes:
        """The decision of ``step`` (its canonical JSON, encoded) once the other ranks have
        reported (a decision in this process ends the wait; ``read`` looks every
        ``WAIT_POLL_S`` for other replicas'), or
        at ``deadline`` what the run's ``on_timeout`` says: ``submit`` the timeout (whoever
        locks the run first decides; the others find that decision), which decides or refuses.

        The ranks of one step in this process share their wait: the decision made here is
        handed to all of them as it is committed, and one poll reads for all of them."""
        if self.draining:
            raise _shutting_down(run, step)
        key = (run, step)
        ranks = self._steps.get(key)
        if ranks is None:
            ranks = self._steps[key] = _Watch()
            ranks.start(self._poll_step(ranks, read))
        ranks.waiters += 1
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    try:
                        body = await submit(Posted(run, step, math.nan, timed_out=True))
                    except Pending as later:  # another replica's clock: wait on
                        deadline = max(later.deadline, time.time() + WAIT_POLL_S)
                        continue
                    answer = body.encode()
                    if not ranks.timed_out:
                        ranks.timed_out = True
                        self.steps_timed_out += 1
                    self.decided(run, step, answer)
                    return answer
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        decided = await ranks.wait()
                        assert decided is not None  # the drain ends a rank's wait with an error
                        return decided
        finally:
            if ranks.leave() and self._steps.get(key) is ranks:
                del self._steps[key]

    async def _poll_step(self, ranks: _Watch[bytes], read: Callable[[], str | None]) -> None:
        """Other replicas' decision of a step, for the ranks waiting here."""
        while not ranks.done.done():
            await asyncio.sleep(WAIT_POLL_S)
            try:
                body = await asyncio.to_thread(read)
            except Exception as exc:  # the database is gone: the waiters get the 503
                ranks.end(error=exc)
                return
            if body is not None:
                ranks.end(body.encode())

    async def run_decided(
        self,
        run: RunKey,
        step: int,
        wait_s: float,
        read: Callable[[], tuple[Answer, bool]],
    ) -> Answer:
        """``read()``'s answer once it says the run is decided through ``step``, waiting up to
        ``wait_s``: a decision in this process wakes the wait, and it reads again every
        ``WAIT_POLL_S`` for decisions that other replicas made. At the deadline, or shutting
        down, the answer of the latest read (not ``certain``: the reader asks again)."""
        if self.draining:
            return (await asyncio.to_thread(read))[0]
        key = (run, step)
        readers = self._reads.get(key)
        if readers is None:
            readers = self._reads[key] = _Watch()
            readers.start(self._poll_run(run, readers, read))
        readers.waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    decided = await readers.wait()
                    if decided is not None:
                        return decided
            await readers.read_once.wait()
            if readers.done.done():
                readers.done.result()  # the reads' error, if they met one (even the first)
            assert readers.latest is not None
            return readers.latest
        finally:
            if readers.leave() and self._reads.get(key) is readers:
                del self._reads[key]

    async def _poll_run(
        self, run: RunKey, readers: _Watch[Answer], read: Callable[[], tuple[Answer, bool]]
    ) -> None:
        """Reads for the readers of one step until it is decided: at once, on each decision of
        the run in this process, and every ``WAIT_POLL_S``."""
        try:
            while True:
                # taken before the read: a decision committed during it still wakes the next
                woken = self._decision_event(run)
                readers.latest, decided = await asyncio.to_thread(read)
                readers.read_once.set()
                if decided:
                    readers.end(readers.latest)
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WAIT_POLL_S):
                        await woken.wait()
        except Exception as exc:  # the run is gone, the database is: the readers get it
            readers.end(error=exc)
            readers.read_once.set()
