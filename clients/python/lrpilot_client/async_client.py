"""The asynchronous client: the same API as `Client`, as coroutines, for asyncio programs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call
from ._retry import RetryPolicy
from .client import DEFAULT_BASE_URL, USER_AGENT, next_cursor
from .models import Decision, LrsAhead, LrsInForce, Page, Rewound, Run, Verified

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """`Client` for asyncio: same arguments, same retries, same results and errors.

    The requests and the reading of the answers are shared with `Client` (module `_calls`), and
    so are the retry decisions and waits (module `_retry`); only the sending differs.
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
    ) -> None:
        self._retry = RetryPolicy(retries, backoff, max_backoff, rng or random.Random())
        # declared with every observation and rewind; {} declares nothing
        self.identity: dict[str, Any] = (
            _calls.default_identity() if identity is None else dict(identity)
        )
        self._heads: dict[str, str] = {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    async def close(self) -> None:
        """Close the connection pool."""
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
        await self.close()

    async def _send(self, call: Call[T]) -> T:
        attempts = self._retry.attempts()
        for wait in attempts:
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.body
                )
            except httpx.TransportError as exc:
                attempts.transport_failed(exc)
                continue
            if attempts.server_failed(response):
                continue
            return call.result(response)
        raise attempts.exhausted(call.describe())

    async def create_run(
        self,
        run_id: str,
        policy: str = "plateau",
        version: int = 1,
        params: Mapping[str, Any] | None = None,
        base_lrs: Sequence[float] | None = None,
        metric: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Run:
        """See `Client.create_run`."""
        return await self._send(
            _calls.create_run(run_id, policy, version, params, base_lrs, metric, labels)
        )

    async def get_run(self, run_id: str) -> Run:
        """See `Client.get_run`."""
        return await self._send(_calls.get_run(run_id))

    async def observe(
        self,
        run_id: str,
        step: int,
        value: float,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Decision:
        """See `Client.observe`."""
        decision = await self._send(
            _calls.observe(run_id, step, value, rank, world_size, self.identity)
        )
        self._heads[run_id] = decision.hash
        return decision

    def head_hash(self, run_id: str) -> str | None:
        """See `Client.head_hash`."""
        return self._heads.get(run_id)

    async def rewind(self, run_id: str, to_step: int) -> Rewound:
        """See `Client.rewind`."""
        rewound = await self._send(_calls.rewind(run_id, to_step, self.identity))
        if rewound.decision is not None:
            self._heads[run_id] = rewound.decision.hash
        return rewound

    async def verify(self, run_id: str, head: str | None = None) -> Verified:
        """See `Client.verify`."""
        return await self._send(_calls.verify(run_id, head))

    async def lrs_in_force(self, run_id: str, step: int | None = None) -> LrsInForce:
        """See `Client.lrs_in_force`."""
        return await self._send(_calls.lrs_in_force(run_id, step))

    async def lrs_ahead(self, run_id: str, first: int, count: int = 1000) -> LrsAhead:
        """See `Client.lrs_ahead`."""
        return await self._send(_calls.lrs_ahead(run_id, first, count))

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
        return await self._send(_calls.decisions(run_id, after, limit, action))

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
