"""Group commit: many concurrent requests, one transaction, one durable commit.

Requests await a future on the event loop; one writer thread takes every item queued so far,
hands the batch to ``process`` (which runs one transaction) and settles the futures only after
it returned, i.e. after the commit. Under load a batch holds many decisions, so the cost of a
commit (an fsync on SQLite with synchronous=FULL) and of the thread hand-off is paid once a
batch instead of once a request, and no request holds a worker thread or a database
connection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("lrpilot.group_commit")

# process(items) returns one result a item: a value, or the exception that item's caller gets.
Process = Callable[[Sequence[T]], Sequence[R | BaseException]]
_Entry = tuple[T, "asyncio.Future[R]", asyncio.AbstractEventLoop]


class WaitTimeout(Exception):
    """The item was not processed within the caller's timeout (it may still be, later)."""


class GroupCommit(Generic[T, R]):
    def __init__(self, process: Process[T, R], max_batch: int = 512, name: str = "writer") -> None:
        self._process = process
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Entry[T, R] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"lrpilot-{name}", daemon=True)
        self._start = threading.Lock()

    def _started(self) -> None:
        # Started on first use: an app that never serves a request owns no thread.
        if not self._thread.is_alive():
            with self._start:
                if not self._thread.is_alive() and self._thread.ident is None:
                    self._thread.start()

    async def submit(self, item: T, timeout: float) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, future, loop))
        self._started()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise WaitTimeout(f"not processed within {timeout} s") from None

    def close(self, timeout: float = 10.0) -> None:
        """Process what is queued, then stop the writer thread."""
        if self._thread.ident is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
            self._settle(batch)
            if stop:
                return

    def _settle(self, batch: list[_Entry[T, R]]) -> None:
        try:
            results: Sequence[R | BaseException] = self._process([item for item, _, _ in batch])
        except BaseException as exc:  # the thread must survive whatever one batch does
            log.exception("a batch of %d failed", len(batch))
            results = [exc] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], object]]] = {}
        for (_, future, loop), result in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((future, result))
        for loop, settled in by_loop.items():
            # One wake-up of the event loop a batch, not one a request.
            with contextlib.suppress(RuntimeError):  # a closed loop: its callers are gone
                loop.call_soon_threadsafe(_set_all, settled)


def _set_all(settled: list[tuple[asyncio.Future[R], object]]) -> None:
    for future, result in settled:
        if future.done():  # the caller timed out and left
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)  # type: ignore[arg-type]
