"""Waiting readers: ranks that wait for a decision, holding no thread and no connection.

Two kinds wait: in leader mode, readers of ``GET /lr?step=N&wait=...`` until the run is decided
through step N; in aggregated mode, the ranks that reported a step until its decision (or its
timeout). A decision committed in this process wakes them at once; decisions that other
replicas made are found by polling every ``WAIT_POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lrpilot.domain.aggregated import Pending, Posted
from lrpilot.store.records import RunKey

WAIT_POLL_S = 0.2  # how often a waiting reader looks for other replicas' decisions


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


class Waiters:
    """Who waits in this process, and the wake-up a committed decision gives them."""

    def __init__(self) -> None:
        # keyed by (project, run_id): another project's run of the same id is another run
        self._runs: dict[RunKey, asyncio.Event] = {}  # runs readers wait on (leader mode)
        self._steps: dict[tuple[RunKey, int], _StepWait] = {}  # steps ranks wait on (aggregated)

    def decided(self, run: RunKey, step: int | None = None, body: str | None = None) -> None:
        """Wake the readers waiting on this run (in this process: others poll), and hand the
        decision of ``step`` (just committed, so live) to the ranks waiting for it."""
        waiting = self._runs.pop(run, None)
        if waiting is not None:
            waiting.set()
        if step is not None and body is not None:
            wait = self._steps.pop((run, step), None)
            if wait is not None and not wait.decided.done():
                wait.decided.set_result(body)

    async def step_decided(
        self,
        run: RunKey,
        step: int,
        deadline: float,
        submit: Callable[[Posted], Awaitable[str]],
        read: Callable[[], str | None],
    ) -> str:
        """The decision of ``step`` once the other ranks have reported (a decision in this
        process wakes the wait; ``read`` looks every ``WAIT_POLL_S`` for other replicas'), or
        at ``deadline`` what the run's ``on_timeout`` says: ``submit`` the timeout (whoever
        locks the run first decides; the others find that decision), which decides or refuses.

        The ranks of one step in this process share their wait: the decision made here is
        handed to all of them as it is committed, and they share one read a poll for the
        decisions of other replicas (with hundreds of ranks, a read each was most of a step's
        time)."""
        key = (run, step)
        wait = self._steps.get(key)
        if wait is None:
            wait = self._steps[key] = _StepWait(asyncio.get_running_loop().create_future())
        wait.waiters += 1
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    try:
                        body = await submit(Posted(run, step, math.nan, timed_out=True))
                    except Pending as later:  # another replica's clock: wait on
                        deadline = max(later.deadline, time.time() + WAIT_POLL_S)
                        continue
                    self.decided(run, step, body)
                    return body
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, WAIT_POLL_S)):
                        return await asyncio.shield(wait.decided)
                decided = await wait.poll(read)
                if decided is not None:
                    return decided
        finally:
            wait.waiters -= 1
            if not wait.waiters and self._steps.get(key) is wait:
                del self._steps[key]

    async def run_decided(
        self,
        run: RunKey,
        wait_s: float,
        read: Callable[[], tuple[dict[str, Any], bool]],
    ) -> dict[str, Any]:
        """``read()``'s answer once it says the run is decided far enough, waiting up to
        ``wait_s``: a decision in this process wakes the wait, and it reads again every
        ``WAIT_POLL_S`` for decisions that other replicas made."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            answer, decided = await asyncio.to_thread(read)
            left = deadline - loop.time()
            if decided or left <= 0:
                return answer
            event = self._runs.setdefault(run, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, WAIT_POLL_S)):
                    await event.wait()
