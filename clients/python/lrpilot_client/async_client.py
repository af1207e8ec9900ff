"""The asynchronous client: the same API as `Client`, as coroutines, for asyncio programs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._base import (
    DEFAULT_FLUSH_TIMEOUT,
    RETRY,
    ClientBase,
    Destination,
    awaiting,
    broken,
    log,
    next_cursor,
    next_run_cursor,
    report_left,
    sink,
)
from ._calls import Call
from ._retry import Attempts
from .errors import LrpilotError, ServiceUnavailableError
from .models import Decision, Run

__all__ = ["AsyncClient"]

T = TypeVar("T")


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """`path` a chunk at a time, each read on a thread so the event loop goes on."""
    with path.open("rb") as f:
        while block := await asyncio.to_thread(f.read, _calls.UPLOAD_CHUNK):
            yield block


class AsyncClient(ClientBase[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """`Client` for asyncio: same arguments, same retries, same outage handling (the
    `on_unavailable` modes, the outbox, the provisional answers), same results and errors.

    The requests and the reading of the answers are shared with `Client` (module `_calls`), and
    so are the state and every decision about a call (module `_base`), the retry decisions and
    waits (module `_retry`) and every decision about an outage (module `_outbox`); only the
    sending differs.
    """

    def _open(
        self, options: dict[str, Any], transport: httpx.AsyncBaseTransport | None
    ) -> httpx.AsyncClient:
        self._flushing = asyncio.Lock()  # one sender of the outbox at a time
        return httpx.AsyncClient(**options, transport=transport)

    async def close(self) -> None:
        """See `Client.close`."""
        if self._closed:
            return
        try:
            if len(self._res.outbox) and self.close_timeout > 0:
                await self.flush(self.close_timeout)
        finally:
            self._closed = True
            report_left(self._res)
            await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        try:  # the exception in flight matters more than a refusal found while closing
            await self.close()
        except LrpilotError as error:
            log.error("lrpilot: while closing: %s", error)

    # --- sending (see Client's) ---------------------------------------------------------------

    async def _send(self, call: Call[T], attempts: Attempts | None = None) -> T:
        attempts, timeout = self._attempts(call, attempts)
        for wait in attempts:
            if wait > 0:
                await asyncio.sleep(wait)
            content = _file_chunks(call.upload) if call.upload else None
            try:
                request = self._request_of(call, timeout, content)
                response = await self._http.send(request, stream=call.stream)
                if call.stream and not response.is_success:
                    await response.aread()
            except httpx.TransportError as exc:
                attempts.transport_failed(exc)
                continue
            if (result := self._settle(call, attempts, response)) is not RETRY:
                return result  # type: ignore[return-value]
        raise attempts.exhausted(call.describe())

    async def _flush_pending(self) -> None:
        res = self._res
        if not len(res.outbox):
            return
        async with self._flushing:
            try:
                while (obs := res.next_to_send()) is not None:
                    try:
                        decision = await self._send(res.observe_call(obs), res.attempts(obs))
                    except ServiceUnavailableError as exc:
                        res.unreachable(exc)
                        return
                    except LrpilotError as exc:
                        raise res.refused(obs, exc) from exc
                    res.delivered(obs, decision)
            finally:
                res.outbox.save()

    async def _call(self, call: Call[T]) -> T:
        await self._flush_pending()
        call, offline, obs = self._plan(call)
        if offline is None:
            try:
                result = await self._send(call)
            except ServiceUnavailableError as exc:
                self._lost(exc)
                raise
        elif self._due(obs):
            try:
                result = await self._send(call, self._res.attempts(obs))
            except ServiceUnavailableError as exc:
                self._res.unreachable(exc)
                return offline()
        else:
            return offline()
        self._res.answered(result)
        return result

    async def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> int:
        """See `Client.flush`."""
        res = self._res
        deadline = time.monotonic() + max(timeout, 0.0)
        while len(res.outbox):
            wait = res.outage.wait()
            if time.monotonic() + wait > deadline:
                break
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flush_pending()
        return len(res.outbox)

    # --- the API (see Client) -----------------------------------------------------------------

    create_run = awaiting(_calls.create_run)
    get_run = awaiting(_calls.get_run)
    list_runs = awaiting(_calls.list_runs)
    summary = awaiting(_calls.summary)
    observe = awaiting(_calls.observe)
    rewind = awaiting(_calls.rewind)
    resize = awaiting(_calls.resize)
    lr_at = awaiting(_calls.lr_at)
    lrs_in_force = lr_at  # the former name of lr_at
    lrs_range = awaiting(_calls.lrs_range)
    lrs_ahead = lrs_range  # the former name of lrs_range
    decisions = awaiting(_calls.decisions)
    verify = awaiting(_calls.verify)
    import_bundle = awaiting(_calls.import_bundle)
    simulate = awaiting(_calls.simulate)
    policies = awaiting(_calls.policies)
    health = awaiting(_calls.health)
    ready = awaiting(_calls.ready)

    async def lrs(self, run_id: str, step: int | None = None) -> list[float]:
        """See `Client.lrs`."""
        return list((await self.lr_at(run_id, step)).lrs)

    async def lr(self, run_id: str, step: int | None = None) -> float:
        """See `Client.lr`."""
        return _calls.first_lr((await self.lr_at(run_id, step)).lrs)

    async def iter_decisions(
        self,
        run_id: str,
        action: str | None = None,
        *,
        limit: int = 100,
        from_step: int | None = None,
        to_step: int | None = None,
        superseded: bool | None = None,
    ) -> AsyncIterator[Decision]:
        """See `Client.iter_decisions`."""
        after: int | None = 0
        while after is not None:
            page = await self.decisions(
                run_id, after, limit, action, from_step=from_step, to_step=to_step,
                superseded=superseded,
            )  # fmt: skip
            for decision in page.items:
                yield decision
            after = next_cursor(page, after)

    async def iter_runs(
        self, labels: Mapping[str, str] | None = None, *, limit: int = 100
    ) -> AsyncIterator[Run]:
        """See `Client.iter_runs`."""
        after: str | None = None
        while True:
            page = await self.list_runs(labels, after, limit)
            for run in page.items:
                yield run
            if (after := next_run_cursor(page, after)) is None:
                return

    async def export(self, run_id: str, to: Destination) -> int:
        """See `Client.export` (the file is written on the event loop's thread)."""
        written = 0
        with sink(to) as out:
            async for chunk in self._exported(run_id, lines=False):
                written += out.write(chunk)  # type: ignore[arg-type]
        return written

    async def export_lines(self, run_id: str) -> AsyncIterator[str]:
        """See `Client.export_lines`."""
        async for line in self._exported(run_id, lines=True):
            yield line  # type: ignore[misc]

    async def _exported(self, run_id: str, lines: bool) -> AsyncIterator[str | bytes]:
        call = _calls.export(run_id)
        response = await self._call(call)
        try:
            chunks = response.aiter_lines() if lines else response.aiter_bytes()
            async for chunk in chunks:
                yield chunk
        except httpx.TransportError as exc:
            raise broken(call, exc) from exc
        finally:
            await response.aclose()
