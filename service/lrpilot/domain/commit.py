"""Group commit: many concurrent requests, one transaction, one durable commit.

Requests await a future on the event loop; a batch of everything queued so far goes to
``process`` (which runs one transaction) and the futures are settled only after it returned,
i.e. after the commit. Under load a batch holds many decisions, so the cost of a commit (an
fsync on SQLite with synchronous=FULL) is paid once a batch, and no waiting request holds a
worker thread or a database connection.

Two ways to run the batches:

* ``Inline`` prepares them on the event loop itself, for a database whose statements never
  wait on the network (SQLite), and commits them on a thread of its own while the loop parses
  the next requests. Handing whole batches to another thread costs more than the batch: the
  two threads pass the GIL back and forth at every statement, and each pass can wait for the
  interpreter's switch interval. The loop never waits on a lock, though: ``prepare`` must
  raise ``busy`` at once when the database is locked elsewhere, and the batch is tried again
  a moment later while the loop serves other requests.
* ``Threaded`` runs them on one writer thread, for a database behind a network round trip
  (PostgreSQL), where a statement waits on I/O and the GIL is free meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

log = logging.getLogger("lrpilot.commit")

# process(items) returns one result an item: a value, or the exception that item's caller gets.
Process = Callable[[Sequence[T]], Sequence[R | BaseException]]


class WaitTimeout(Exception):
    """The item was not processed within the caller's timeout (it may still be, later)."""


class GroupCommit(Protocol[T_contra, R_co]):
    async def submit(self, item: T_contra, timeout: float) -> R_co: ...

    def close(self) -> None: ...


async def _wait(future: asyncio.Future[R], timeout: float) -> R:
    try:
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        raise WaitTimeout(f"not processed within {timeout} s") from None


def _settle(future: asyncio.Future[R], result: R | BaseException) -> None:
    if future.done():  # the caller timed out and left
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _run_batch(process: Process[T, R], items: list[T]) -> Sequence[R | BaseException]:
    try:
        return process(items)
    except Exception as exc:  # one failed batch fails its callers, not the service
        log.exception("a batch of %d failed", len(items))
        return [exc] * len(items)


def ignore_size(size: int) -> None:
    """A group commit's default listener of batch sizes: nobody listens."""


class Backoff:
    """How long to wait before trying a busy batch again: doubling, capped, reset on success."""

    def __init__(self, first_s: float = 0.001, max_s: float = 0.05) -> None:
        self.first_s, self.max_s, self.now_s = first_s, max_s, 0.0

    def next(self) -> float:
        self.now_s = min(max(self.now_s * 2, self.first_s), self.max_s)
        return self.now_s

    def reset(self) -> None:
        self.now_s = 0.0


# prepare(items): one result an item, and the function that commits them (it may block).
Prepare = Callable[[Sequence[T]], tuple[Sequence[R | BaseException], Callable[[], None]]]


class Inline(Generic[T, R]):
    """Batches prepared on the event loop, committed on a thread: every item submitted while
    the previous batch was committing forms the next batch."""

    def __init__(
        self,
        prepare: Prepare[T, R],
        busy: type[Exception],
        max_batch: int = 512,
        batched: Callable[[int], None] = ignore_size,
    ):
        self._prepare = prepare
        self._batched = batched  # told each batch's size as it is committed (the metrics)
        self._busy = busy
        self._max_batch = max_batch
        self._backoff = Backoff()
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._handle: asyncio.Handle | None = None
        self._committing = False
        # The commit waits for the disk with the GIL released: on a thread, the loop parses
        # the next requests meanwhile, and they join the next batch.
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="lrpilot-commit")

    async def submit(self, item: T, timeout: float) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return await _wait(future, timeout)

    def close(self) -> None:
        """Let a commit in flight finish; nothing new starts (the server has drained its
        requests before it closes the app)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._committer.shutdown(wait=True)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # the batch starts once this turn's requests have joined it, and never while the
        # previous one is committing (one transaction at a time on the connection)
        if self._handle is None and not self._committing and self._pending:
            self._handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        pending = [(item, future) for item, future in self._pending if not future.done()]
        batch, self._pending = pending[: self._max_batch], pending[self._max_batch :]
        if not batch:
            return
        try:
            results, commit = self._prepare([item for item, _ in batch])
        except self._busy:  # nothing was written: try again shortly, the loop serves on
            self._pending[:0] = batch
            self._handle = loop.call_later(self._backoff.next(), self._flush)
            return
        except Exception as exc:
            log.exception("a batch of %d failed", len(batch))
            self._settle(batch, [exc] * len(batch))
            return
        self._backoff.reset()
        self._batched(len(batch))
        if not self._pending and len(batch) == 1:
            # Nobody else is waiting: handing the commit to the thread and back would only
            # add two thread wake-ups to this request's latency.
            try:
                commit()
            except Exception as exc:
                results = [exc]
            self._settle(batch, results)
            return
        self._committing = True
        committed = loop.run_in_executor(self._committer, commit)
        committed.add_done_callback(lambda done: self._committed(batch, results, done))

    def _committed(
        self,
        batch: list[tuple[T, asyncio.Future[R]]],
        results: Sequence[R | BaseException],
        done: asyncio.Future[None],
    ) -> None:
        self._committing = False
        failed = done.exception()
        if failed is not None:  # nothing of the batch is stored: every caller hears why
            if not isinstance(failed, Exception):
                raise failed
            results = [failed] * len(batch)
        self._settle(batch, results)

    def _settle(
        self, batch: list[tuple[T, asyncio.Future[R]]], results: Sequence[R | BaseException]
    ) -> None:
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)
        self._schedule(asyncio.get_running_loop())


_Entry = tuple[T, "asyncio.Future[R]", asyncio.AbstractEventLoop]


class Threaded(Generic[T, R]):
    """Batches run on one writer thread, which takes everything queued while it was busy.

    An item whose result is a ``busy`` exception (its run is locked elsewhere right now) is
    not answered: it joins the next batch, a moment later, until its caller's timeout.
    """

    def __init__(
        self,
        process: Process[T, R],
        busy: type[Exception],
        max_batch: int = 512,
        name: str = "",
        batched: Callable[[int], None] = ignore_size,
    ) -> None:
        self._process = process
        self._batched = batched  # told each batch's size as it is run (the metrics)
        self._busy = busy
        self._max_batch = max_batch
        self._backoff = Backoff()
        self._queue: queue.SimpleQueue[_Entry[T, R] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"lrpilot-{name}writer", daemon=True)
        self._start = threading.Lock()

    async def submit(self, item: T, timeout: float) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, future, loop))
        if self._thread.ident is None:  # started on first use: an idle app owns no thread
            with self._start:
                if self._thread.ident is None:
                    self._thread.start()
        return await _wait(future, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Process what is queued, then stop the writer thread."""
        if self._thread.ident is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        deferred: list[_Entry[T, R]] = []
        stop = False
        while not stop or deferred:
            batch, deferred = deferred, []
            try:  # with deferred items, wait a moment for company, then retry them anyway
                first = self._queue.get(timeout=self._backoff.now_s) if batch else self._queue.get()
            except queue.Empty:
                first = _NOTHING
            if first is None:
                stop = True
            elif first is not _NOTHING:
                batch.append(first)
            while not stop and len(batch) < self._max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
            # a caller that timed out is gone (reading done() from this thread is only a hint:
            # settling checks it again on the loop)
            batch = [entry for entry in batch if not entry[1].done()]
            if not batch:
                continue
            self._batched(len(batch))
            results = _run_batch(self._process, [item for item, _, _ in batch])
            by_loop: dict[
                asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], R | BaseException]]
            ] = {}
            for entry, result in zip(batch, results, strict=True):
                if isinstance(result, self._busy) and not stop:
                    deferred.append(entry)
                else:
                    by_loop.setdefault(entry[2], []).append((entry[1], result))
            if deferred:
                self._backoff.next()
            else:
                self._backoff.reset()
            for loop, settled in by_loop.items():
                # One wake-up of the event loop a batch, not one a request.
                with contextlib.suppress(RuntimeError):  # a closed loop: its callers are gone
                    loop.call_soon_threadsafe(_settle_all, settled)


_NOTHING: Any = object()  # no new item came while deferred ones waited


def _settle_all(settled: list[tuple[asyncio.Future[R], R | BaseException]]) -> None:
    for future, result in settled:
        _settle(future, result)
