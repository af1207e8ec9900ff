"""The synchronous client: what a plain training loop uses."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call
from ._retry import RetryPolicy
from .errors import ResponseError
from .models import Decision, LrsAhead, LrsInForce, Page, Rewound, Run, Verified

__all__ = ["DEFAULT_BASE_URL", "USER_AGENT", "Client"]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
USER_AGENT = "lrpilot-client/0.1.0"


def next_cursor(page: Page[Any], after: int) -> int | None:
    """The `after` for the page following `page`, None when `page` was the last.

    A cursor that does not move forward would make the iteration loop forever, so it is
    treated as a broken answer rather than followed.
    """
    if page.next is None:
        return None
    if page.next <= after:
        raise ResponseError(f"pagination did not advance: after={after}, next={page.next}")
    return page.next


class Client:
    """Talks to one lrpilot service over HTTP, retrying what is safe to retry.

    Every request is idempotent on the service's side (PUT of a spec, GET, and an observation
    that the service dedupes by (step, value)), so every request may be retried: connection
    errors and 5xx answers are retried up to `retries` times with exponential backoff and full
    jitter (`backoff * 2**n` capped at `max_backoff`), then `ServiceUnavailableError` is raised.
    A 4xx answer is raised at once as `NotFoundError`, `ConflictError`, `ValidationError` or
    `LrpilotError`.

    `rng` seeds the jitter (for reproducible waits); `transport` replaces httpx's network
    transport (e.g. `httpx.MockTransport`, or an ASGI transport in the service's own tests).
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._retry = RetryPolicy(retries, backoff, max_backoff, rng or random.Random())
        # declared with every observation and rewind; {} declares nothing
        self.identity: dict[str, Any] = (
            _calls.default_identity() if identity is None else dict(identity)
        )
        self._heads: dict[str, str] = {}
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempts = self._retry.attempts()
        for wait in attempts:
            if wait > 0:
                time.sleep(wait)
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.body
                )
            except httpx.TransportError as exc:
                attempts.transport_failed(exc)
                continue
            if attempts.server_failed(response):
                continue
            return call.result(response)
        raise attempts.exhausted(call.describe())

    def create_run(
        self,
        run_id: str,
        policy: str = "plateau",
        version: int = 1,
        params: Mapping[str, Any] | None = None,
        base_lrs: Sequence[float] | None = None,
        metric: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Run:
        """Create the run, or get it back if it already exists with the same spec.

        Calling this at every (re)start of a job is the intended use: the first call creates
        the run, later ones return it. A different spec for an existing run_id raises
        `ConflictError` rather than silently changing a schedule mid-run. Arguments left as None
        are not sent, so the service's defaults apply.
        """
        return self._send(
            _calls.create_run(run_id, policy, version, params, base_lrs, metric, labels)
        )

    def get_run(self, run_id: str) -> Run:
        """The run's spec and where its schedule stands now."""
        return self._send(_calls.get_run(run_id))

    def observe(
        self,
        run_id: str,
        step: int,
        value: float,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Decision:
        """Report the metric `value` seen at training `step`; return the decision it led to.

        `value` may be NaN or ±inf. Sending the same (step, value) again returns the decision
        already made (this is what makes the retries safe); the same step with another value is
        a `ConflictError`.
        """
        decision = self._send(_calls.observe(run_id, step, value, rank, world_size, self.identity))
        self._heads[run_id] = decision.hash
        return decision

    def head_hash(self, run_id: str) -> str | None:
        """The hash of the last decision of `run_id` this client received (None before any):
        record it in a checkpoint or a log, and `verify(run_id, head=...)` later proves that the
        service's log still ends there (a hash chain alone proves only that it is consistent)."""
        return self._heads.get(run_id)

    def rewind(self, run_id: str, to_step: int) -> Rewound:
        """For a job resumed from an older checkpoint: make the run's state what it was right
        after `to_step`. The later decisions are kept in the log, marked superseded; the rewind
        is itself an entry of the hash chain (with this client's identity). Rewinding to or past
        the last step changes nothing (`rewound` False), so it is safe at every resume."""
        rewound = self._send(_calls.rewind(run_id, to_step, self.identity))
        if rewound.decision is not None:
            self._heads[run_id] = rewound.decision.hash
        return rewound

    def verify(self, run_id: str, head: str | None = None) -> Verified:
        """Ask the service to replay the run's log through its policy version and check every
        link; with `head` (from `head_hash`), the log must also end exactly there."""
        return self._send(_calls.verify(run_id, head))

    def lrs_in_force(self, run_id: str, step: int | None = None) -> LrsInForce:
        """The rates in force at `step` (the current ones if None), and the decision that set
        them."""
        return self._send(_calls.lrs_in_force(run_id, step))

    def lrs_ahead(self, run_id: str, first: int, count: int = 1000) -> LrsAhead:
        """The rates of `count` consecutive steps from `first` (at most 10,000): a rank that
        needs an lr every training step fetches once per `count` steps."""
        return self._send(_calls.lrs_ahead(run_id, first, count))

    def lrs(self, run_id: str, step: int | None = None) -> list[float]:
        """The rates in force at `step`, one per param group (the current ones if None)."""
        return list(self.lrs_in_force(run_id, step).lrs)

    def lr(self, run_id: str, step: int | None = None) -> float:
        """The first param group's rate in force at `step`: enough for a one-group optimizer."""
        return _calls.first_lr(self.lrs_in_force(run_id, step).lrs)

    def decisions(
        self, run_id: str, after: int = 0, limit: int = 100, action: str | None = None
    ) -> Page[Decision]:
        """One page of the decision log, oldest first, starting after seq `after`."""
        return self._send(_calls.decisions(run_id, after, limit, action))

    def iter_decisions(
        self, run_id: str, action: str | None = None, *, limit: int = 100
    ) -> Iterator[Decision]:
        """Every decision of the run, oldest first, fetching `limit` per request as needed."""
        after: int | None = 0
        while after is not None:
            page = self.decisions(run_id, after=after, limit=limit, action=action)
            yield from page.items
            after = next_cursor(page, after)
