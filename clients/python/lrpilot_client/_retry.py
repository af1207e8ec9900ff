"""When to retry and how long to wait: the one copy both clients use.

A training loop must not die because the service restarted or a load balancer hiccupped, so
connection errors and 5xx answers are retried. A 4xx answer is the service's considered reply
and is never retried. The waits are exponential with full jitter (a uniform draw between 0 and
the exponential cap): when many ranks lose the service at once, jitter spreads their retries
instead of having them all hit the service again at the same instant.

This module does no I/O and never sleeps; the sync and the async client each drive an
`Attempts` with their own sleep and their own HTTP call.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from .errors import ServiceUnavailableError, describe_detail, detail_of

__all__ = ["Attempts", "RetryPolicy"]

# 2**60 times any sane backoff is far beyond any cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 60


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry, and the backoff: `backoff * 2**n` capped at `max_backoff`.

    `rng` draws the jitter; pass a seeded `random.Random` to make the waits reproducible.
    """

    retries: int = 5
    backoff: float = 0.2
    max_backoff: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"backoff must be >= 0, got {self.backoff}")
        if self.max_backoff < 0:
            raise ValueError(f"max_backoff must be >= 0, got {self.max_backoff}")

    def cap(self, retry: int) -> float:
        """The longest wait before retry number `retry` (0 for the first retry)."""
        return min(self.max_backoff, self.backoff * 2.0 ** min(retry, _MAX_EXPONENT))

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry`: full jitter under `cap(retry)`."""
        return self.rng.uniform(0.0, self.cap(retry))

    def attempts(self) -> Attempts:
        """A fresh attempt sequence for one call."""
        return Attempts(self)


def is_retryable_status(status_code: int) -> bool:
    """5xx means the service (or something in front of it) failed; it may work next time."""
    return 500 <= status_code <= 599


class Attempts:
    """The attempts of one call: iterate for the wait before each, report each failure.

    Usage (the async client is the same with `await`)::

        attempts = policy.attempts()
        for wait in attempts:
            sleep(wait)
            try:
                response = send()
            except httpx.TransportError as exc:
                attempts.transport_failed(exc)
                continue
            if attempts.server_failed(response):
                continue
            return read(response)
        raise attempts.exhausted("GET /v1/runs/r")
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.count = 0
        self._last_failure: str = "no attempt was made"
        self._last_detail: object = None
        self._last_status: int | None = None

    def __iter__(self) -> Iterator[float]:
        """Yield 0.0 before the first attempt, then the backoff before each retry."""
        for n in range(self._policy.retries + 1):
            self.count = n + 1
            yield 0.0 if n == 0 else self._policy.delay(n - 1)

    def transport_failed(self, exc: httpx.TransportError) -> None:
        """Record a request that got no answer (refused, reset, timed out, ...)."""
        self._last_failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._last_detail = None
        self._last_status = None

    def server_failed(self, response: httpx.Response) -> bool:
        """Record `response` and return True if it is a failure worth retrying (5xx)."""
        if not is_retryable_status(response.status_code):
            return False
        self._last_status = response.status_code
        self._last_detail = detail_of(response)
        self._last_failure = describe_detail(self._last_detail) or response.reason_phrase
        return True

    def exhausted(self, what: str) -> ServiceUnavailableError:
        """The error to raise once every attempt failed; `what` names the request."""
        message = f"{what}: gave up after {self.count} attempt(s); last failure: "
        if self._last_status is not None:
            message += f"{self._last_status} "
        message += self._last_failure
        detail = self._last_detail if self._last_detail is not None else self._last_failure
        return ServiceUnavailableError(
            detail, self._last_status, attempts=self.count, message=message
        )
