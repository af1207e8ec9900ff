"""The asynchronous client: the same API as `Client`, as coroutines, for asyncio programs."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call
from ._outbox import DEFAULT_OUTBOX_SIZE, Mode, Resilience, probe_timeout
from ._retry import Attempts, RetryPolicy
from .client import (
    DEFAULT_BASE_URL,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_FLUSH_TIMEOUT,
    USER_AGENT,
    log,
    next_cursor,
    report_left,
)
from .errors import LrpilotError, ServiceUnavailableError
from .models import (
    Decision,
    LrsAhead,
    LrsInForce,
    Page,
    PendingObservation,
    Resized,
    Rewound,
    Run,
    Verified,
)

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """`Client` for asyncio: same arguments, same retries, same outage handling (the
    `on_unavailable` modes, the outbox, the provisional answers), same results and errors.

    The requests and the reading of the answers are shared with `Client` (module `_calls`), and
    so are the retry decisions and waits (module `_retry`) and every decision about an outage
    (module `_outbox`); only the sending differs.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        *,
        rng: random.Random | None = None,
        identity: Mapping[str, Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_unavailable: Mode = "buffer",
        outbox_size: int = DEFAULT_OUTBOX_SIZE,
        outbox_path: str | os.PathLike[str] | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self._retry = RetryPolicy(retries, backoff, max_backoff, rng or random.Random())
        self._res = Resilience(self._retry, on_unavailable, outbox_size, outbox_path)
        self.close_timeout = close_timeout
        # declared with every observation and rewind; {} declares nothing
        self.identity: dict[str, Any] = (
            _calls.default_identity() if identity is None else dict(identity)
        )
        self._flushing = asyncio.Lock()  # one sender of the outbox at a time
        self._closed = False
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._probe_timeout = probe_timeout(self._http.timeout)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    @property
    def on_unavailable(self) -> Mode:
        """See `Client.on_unavailable`."""
        return "buffer" if self._res.buffering else "raise"

    @property
    def pending(self) -> tuple[PendingObservation, ...]:
        """See `Client.pending`."""
        return self._res.outbox.items()

    @property
    def dropped(self) -> int:
        """See `Client.dropped`."""
        return self._res.outbox.dropped

    @property
    def offline(self) -> bool:
        """See `Client.offline`."""
        return self._res.outage.down

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

    async def _send(self, call: Call[T], attempts: Attempts | None = None) -> T:
        """See `Client._send`."""
        if attempts is None:
            attempts = self._retry.attempts()
        # a probe connects briefly, and reads as long as the call may wait (a rank's report)
        timeout = call.timeout(self._probe_timeout if attempts.probe else self._http.timeout)
        for wait in attempts:
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.body, timeout=timeout
                )
            except httpx.TransportError as exc:
                attempts.transport_failed(exc)
                continue
            if attempts.server_failed(response):
                continue
            try:
                return call.result(response)
            except LrpilotError as exc:
                if attempts.foreign_failed(response, exc):
                    continue
                raise
        raise attempts.exhausted(call.describe())

    async def _flush_pending(self) -> None:
        """See `Client._flush_pending`."""
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

    async def _ask(self, call: Call[T], offline: Callable[[], T]) -> T:
        """See `Client._ask`."""
        res = self._res
        await self._flush_pending()
        if res.due():
            try:
                result = await self._send(call, res.attempts())
            except ServiceUnavailableError as exc:
                res.unreachable(exc)
            else:
                res.answered(result)
                return result
        return offline()

    async def _request(self, call: Call[T]) -> T:
        """See `Client._request`."""
        await self._flush_pending()
        try:
            result = await self._send(call)
        except ServiceUnavailableError as exc:
            if self._res.buffering:
                self._res.outage.failed(exc)
            raise
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

    async def create_run(
        self,
        run_id: str,
        policy: str = "plateau",
        version: int = 1,
        params: Mapping[str, Any] | None = None,
        base_lrs: Sequence[float] | None = None,
        metric: str | None = None,
        labels: Mapping[str, str] | None = None,
        aggregate: Mapping[str, Any] | None = None,
        scaling: Mapping[str, Any] | None = None,
    ) -> Run:
        """See `Client.create_run`."""
        return await self._request(
            _calls.create_run(
                run_id, policy, version, params, base_lrs, metric, labels, aggregate, scaling
            )
        )

    async def get_run(self, run_id: str) -> Run:
        """See `Client.get_run`."""
        return await self._request(_calls.get_run(run_id))

    async def observe(
        self,
        run_id: str,
        step: int,
        value: float,
        rank: int | None = None,
        world_size: int | None = None,
        weight: float | None = None,
    ) -> Decision:
        """See `Client.observe`."""
        res = self._res
        obs = PendingObservation(run_id, step, value, rank, world_size, dict(self.identity), weight)
        await self._flush_pending()
        if res.due() and not len(res.outbox):  # nothing older of it may be overtaken
            try:
                decision = await self._send(res.observe_call(obs), res.attempts(obs))
            except ServiceUnavailableError as exc:
                res.unreachable(exc)
            else:
                res.answered(decision)
                return decision
        return res.hold(obs)

    def head_hash(self, run_id: str) -> str | None:
        """See `Client.head_hash`."""
        return self._res.heads.get(run_id)

    async def rewind(self, run_id: str, to_step: int) -> Rewound:
        """See `Client.rewind`."""
        await self._flush_pending()
        self._res.check_sent(run_id, "rewind")
        return await self._request(_calls.rewind(run_id, to_step, self.identity))

    async def resize(
        self,
        run_id: str,
        step: int,
        world_size: int | None = None,
        batch_size: int | None = None,
    ) -> Resized:
        """See `Client.resize`."""
        await self._flush_pending()
        self._res.check_sent(run_id, "resize")
        return await self._request(
            _calls.resize(run_id, step, world_size, batch_size, self.identity)
        )

    async def verify(self, run_id: str, head: str | None = None) -> Verified:
        """See `Client.verify`."""
        return await self._request(_calls.verify(run_id, head))

    async def lrs_in_force(self, run_id: str, step: int | None = None) -> LrsInForce:
        """See `Client.lrs_in_force`."""
        return await self._ask(
            _calls.lrs_in_force(run_id, step), lambda: self._res.lrs_in_force(run_id, step)
        )

    async def lrs_ahead(self, run_id: str, first: int, count: int = 1000) -> LrsAhead:
        """See `Client.lrs_ahead`."""
        return await self._ask(
            _calls.lrs_ahead(run_id, first, count),
            lambda: self._res.lrs_ahead(run_id, first, count),
        )

    async def lrs(self, run_id: str, step: int | None = None) -> list[float]:
        """See `Client.lrs`."""
        return list((await self.lrs_in_force(run_id, step)).lrs)

    async def lr(self, run_id: str, step: int | None = None) -> float:
        """See `Client.lr`."""
        return _calls.first_lr((await self.lrs_in_force(run_id, step)).lrs)

    async def decisions(
        self, run_id: str, after: int = 0, limit: int = 100, action: str | None = None
    ) -> Page[Decision]:
        """See `Client.decisions`."""
        return await self._request(_calls.decisions(run_id, after, limit, action))

    async def iter_decisions(
        self, run_id: str, action: str | None = None, *, limit: int = 100
    ) -> AsyncIterator[Decision]:
        """See `Client.iter_decisions`."""
        after: int | None = 0
        while after is not None:
            page = await self.decisions(run_id, after=after, limit=limit, action=action)
            for decision in page.items:
                yield decision
            after = next_cursor(page, after)
