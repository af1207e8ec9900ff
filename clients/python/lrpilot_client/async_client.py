"""The asynchronous client: the same API as `Client`, as coroutines, for asyncio programs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from . import _calls
from ._base import (
    DEFAULT_FLUSH_TIMEOUT,
    RETRY,
    ClientBase,
    Destination,
    broken,
    sink,
)
from ._calls import Call
from ._ndjson import LineSplitter
from ._retry import Attempts
from .errors import LrpilotError, ServiceUnavailableError

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
            self._report_left()
            await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[1] is None:  # (type, exception, traceback): no exception in flight
            await self.close()
            return
        try:
            await self.close()
        except LrpilotError as error:
            self._closing_failed(error)

    # --- sending (see Client's) ---------------------------------------------------------------

    async def _send(self, call: Call[T], attempts: Attempts | None = None) -> T:
        attempts, timeout = self._attempts(call, attempts)
        total = self._deadline_of(call)
        deadline = math.inf if total is None else time.monotonic() + total
        for wait in attempts:
            if time.monotonic() + wait >= deadline:
                break  # no time left for another try
            if wait > 0:
                await asyncio.sleep(wait)
            content = _file_chunks(call.upload) if call.upload else None
            answer: httpx.Response | httpx.TransportError
            left = None if total is None else deadline - time.monotonic()
            try:
                # the whole attempt, every byte of the answer included, within the deadline
                async with asyncio.timeout(left):
                    request = self._request_of(call, timeout, content)
                    answer = response = await self._http.send(request, stream=call.stream)
                    if call.stream and not response.is_success:
                        await response.aread()
            except httpx.TransportError as exc:
                answer = exc
            except TimeoutError:
                answer = httpx.ReadTimeout("the call's deadline passed")
            if (result := self._settle(call, attempts, answer)) is not RETRY:
                return result  # type: ignore[return-value]
        raise self._past_deadline(attempts.exhausted(call.describe()), total, deadline)

    async def _flush_pending(self) -> None:
        res = self._res
        if not len(res.outbox):
            return
        async with self._flushing:
            try:
                while (obs := res.next_to_send()) is not None:
                    try:
                        res.delivered(
                            obs, await self._send(res.observe_call(obs), res.attempts(obs))
                        )
                    except LrpilotError as exc:
                        self._undelivered(obs, exc)
                        return  # the outage goes on
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
                return self._stand_in(exc, offline)
        else:
            return offline()
        return self._answered(result)

    async def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> int:
        """See `Client.flush`."""
        for wait in self._flush_waits(timeout):
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flush_pending()
        return len(self._res.outbox)

    _asynchronous = True

    async def lrs(self, run_id: str, step: int | None = None) -> list[float]:
        """See `Client.lrs`."""
        return list((await self.lr_at(run_id, step)).lrs)

    async def lr(self, run_id: str, step: int | None = None) -> float:
        """See `Client.lr`."""
        return _calls.first_lr((await self.lr_at(run_id, step)).lrs)

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
            if not lines:
                async for chunk in response.aiter_bytes():
                    yield chunk
                return
            split = LineSplitter()
            async for chunk in response.aiter_bytes():
                for line in split.feed(chunk):
                    yield line
            for line in split.end():
                yield line
        except httpx.TransportError as exc:
            raise broken(call, exc) from exc
        finally:
            await response.aclose()
