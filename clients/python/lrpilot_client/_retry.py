"""When to retry and how long to wait: the one copy both clients use.

A training loop must not die because the service restarted or a load balancer hiccupped, so
connection errors, 5xx answers, 408 (Request Timeout) and 429 (Too Many Requests: a gateway's
rate limit; the service itself never answers it) are retried. Any other 4xx answer is the
service's considered reply and is never retried. A buffering client also retries an answer that
is not the service's at all (`Attempts.foreign_failed`): a proxy's page instead of its JSON.
The waits are exponential with full jitter (a uniform draw between 0 and the exponential cap):
when many ranks lose the service at once, jitter spreads their retries instead of having them
all hit the service again at the same instant. An answer that says when to come back
(`Retry-After`) is not retried sooner than that.

Two schedules live here: `Attempts`, the retries of one call, and `Outage`, when a client that
found the service away tries again (one request per try, spaced by the same exponential backoff)
while it keeps the training loop going on the last known rates.

This module does no I/O and never sleeps; the sync and the async client each drive an
`Attempts` with their own sleep and their own HTTP call.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from .errors import LrpilotError, ServiceUnavailableError, describe_detail, detail_of, is_lrpilots

__all__ = ["MAX_RETRY_AFTER", "Attempts", "Outage", "RetryPolicy", "retry_after_of"]

log = logging.getLogger("lrpilot_client")

# 2**60 times any sane backoff is far beyond any cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 60
# The longest a `Retry-After` is taken at its word: a proxy asking for a day must not leave the
# observations buffered for a day.
MAX_RETRY_AFTER = 300.0
# How much of an answer's body a failure's description quotes (a proxy's page can be long).
MAX_QUOTE = 300
# A try that waited t seconds for an answer that never came (a paused or hung service accepts
# the connection and never answers, so every try lasts the whole read timeout) is followed by
# at least NO_ANSWER_SPACING * t seconds without one, up to MAX_NO_ANSWER_WAIT: such an outage
# holds the training loop a tenth of its time (a seventh with the default 10 s timeout), not
# three quarters of it as tries every `max_backoff` would.
NO_ANSWER_SPACING = 9.0
MAX_NO_ANSWER_WAIT = 60.0


def retry_after_of(response: httpx.Response) -> float | None:
    """The `Retry-After` of an answer in seconds (delay-seconds or an HTTP date), capped at
    `MAX_RETRY_AFTER`; None when there is none or it cannot be read."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    seconds: float
    if raw.isdigit():
        seconds = float(raw)
    else:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


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

    def attempts(
        self,
        retries: int | None = None,
        max_retry_after: float | None = None,
        *,
        foreign: bool = False,
    ) -> Attempts:
        """A fresh attempt sequence for one call: `retries` retries (the policy's by default);
        a `Retry-After` longer than `max_retry_after` (`max_backoff` by default) ends it.
        `foreign`: an answer that is not the service's is retried too (see `Attempts`)."""
        return Attempts(self, retries, max_retry_after, foreign=foreign)


# 408: the server (often a proxy) gave up waiting for the request; 429: a gateway's rate limit.
# Both say "send it again", and lrpilot itself answers neither.
_RETRYABLE_4XX = frozenset({408, 429})
# 401 and 403 say who may not, whoever writes them (a proxy in front that checks tokens too):
# an error to raise, never an outage to wait out
_REFUSALS = frozenset({401, 403})


def is_retryable_status(status_code: int) -> bool:
    """5xx means the service (or something in front of it) failed; 408 and 429 ask to be sent
    again (429 usually with a `Retry-After`): it may work next time."""
    return 500 <= status_code <= 599 or status_code in _RETRYABLE_4XX


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


class Attempts:
    """The attempts of one call: iterate for the wait before each, report each failure.

    After a 5xx (or 408, 429) with `Retry-After`, the next wait is at least that long; if that
    is longer than `max_retry_after`, the call gives up at once instead of sleeping (and the
    error carries the `retry_after`, so a buffering client knows when to try again).

    With `foreign` (a buffering client's calls), an answer that is not the service's counts as a
    failure too, like a 5xx: a success status whose body the client cannot read, or an error
    status without the service's JSON `{"detail": ...}` (a captive portal's or a misrouted
    proxy's page, a body cut short). The service did not speak, so the call is no refusal of
    it; sending it again is safe (an observation is deduped by (step, value)).

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
            try:
                return read(response)
            except LrpilotError as exc:
                if attempts.foreign_failed(response, exc):
                    continue
                raise
        raise attempts.exhausted("GET /v1/runs/r")
    """

    def __init__(
        self,
        policy: RetryPolicy,
        retries: int | None = None,
        max_retry_after: float | None = None,
        *,
        probe: bool = False,
        foreign: bool = False,
    ) -> None:
        self._policy = policy
        self.probe = probe  # one try while the service is known down (a short connect timeout)
        self.foreign = foreign  # an answer that is not the service's is a failure, not an error
        self._retries = policy.retries if retries is None else max(retries, 0)
        self._max_retry_after = policy.max_backoff if max_retry_after is None else max_retry_after
        self.count = 0
        self.unanswered_for = 0.0  # how long the last attempt waited for an answer in vain
        self._sent_at = 0.0  # time.monotonic() when the current attempt was (about to be) sent
        self.retry_after: float | None = None  # of the last failed answer, if it said
        self._last_failure: str = "no attempt was made"
        self._last_detail: object = None
        self._last_status: int | None = None

    def __iter__(self) -> Iterator[float]:
        """Yield 0.0 before the first attempt, then the backoff before each retry."""
        for n in range(self._retries + 1):
            if n == 0:
                self.count = 1
                self._sent_at = time.monotonic()
                yield 0.0
                continue
            if self.retry_after is not None and self.retry_after > self._max_retry_after:
                return  # asked to come back later than this call will wait
            delay = self._policy.delay(n - 1)
            self.count = n + 1
            wait = max(delay, self.retry_after or 0.0)
            self._sent_at = time.monotonic() + wait  # the caller sleeps `wait`, then sends
            yield wait

    def transport_failed(self, exc: httpx.TransportError) -> None:
        """Record a request that got no answer (refused, reset, timed out, ...)."""
        self._last_failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._last_detail = None
        self.unanswered_for = max(0.0, time.monotonic() - self._sent_at)
        self._last_status = None
        self.retry_after = None

    def server_failed(self, response: httpx.Response) -> bool:
        """Record `response` and return True if it is a failure worth retrying (5xx)."""
        if not is_retryable_status(response.status_code):
            return False
        self.unanswered_for = 0.0
        self._last_status = response.status_code
        self._last_detail = detail_of(response)
        self._last_failure = _quote(describe_detail(self._last_detail) or response.reason_phrase)
        self.retry_after = retry_after_of(response)
        return True

    def foreign_failed(self, response: httpx.Response, error: LrpilotError) -> bool:
        """Record `response` (whose reading raised `error`) and return True if, with `foreign`,
        it is not the service's answer: a 2xx it could not read, or an error without the
        service's JSON `detail`. False: `error` is the service's own answer, to be raised."""
        if not self.foreign:
            return False
        ok = 200 <= response.status_code < 300
        if not ok and (is_lrpilots(response) or response.status_code in _REFUSALS):
            return False
        self.unanswered_for = 0.0
        self._last_status = response.status_code
        self._last_detail = response.text or None
        shown = describe_detail(error.detail if ok else detail_of(response))
        shown = shown or response.reason_phrase
        self._last_failure = f"not an answer of lrpilot (a proxy's?): {_quote(shown)}"
        self.retry_after = retry_after_of(response)
        return True

    def exhausted(self, what: str) -> ServiceUnavailableError:
        """The error to raise once every attempt failed; `what` names the request."""
        message = f"{what}: gave up after {self.count} attempt(s); last failure: "
        if self._last_status is not None:
            message += f"{self._last_status} "
        message += self._last_failure
        if self.retry_after is not None:
            message += f" (Retry-After: {self.retry_after:g} s)"
        detail = self._last_detail if self._last_detail is not None else self._last_failure
        return ServiceUnavailableError(
            detail,
            self._last_status,
            attempts=self.count,
            message=message,
            retry_after=self.retry_after,
            unanswered_for=self.unanswered_for,
        )


class Outage:
    """When a client that found the service away tries again.

    While the service is up (`down` False) every call may go ahead. Once a call has failed
    (`failed`, with the error that ended its retries), the service is known down: `due()` is
    False until `next_try`, so the calls in between make no request at all, and each later try
    is one request (`probe` True); each failed try doubles the wait (`backoff * 2**n`, drawn
    between half and all of it, capped at `max_backoff`), and a `Retry-After` is never cut
    short. After a try that waited in vain for an answer, the next waits `NO_ANSWER_SPACING`
    times as long (up to `MAX_NO_ANSWER_WAIT`), so a service that hangs instead of refusing
    does not hold the training loop most of the time. The first answer (`recovered`) ends the
    outage.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.down_since: float | None = None  # time.monotonic() of the first failure
        self.failures = 0
        self.next_try = 0.0
        self.cause = ""
        self.last_error: ServiceUnavailableError | None = None
        # said that the client is buffering: only a stand-in answer says so, since a call
        # without one (create_run) raises, and its error is the report of the outage
        self.announced = False

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def due(self, now: float | None = None) -> bool:
        """True when a request may be made now: the service is up, or its next try is due."""
        if self.down_since is None:
            return True
        return (time.monotonic() if now is None else now) >= self.next_try

    def wait(self, now: float | None = None) -> float:
        """Seconds until `due()`."""
        if self.down_since is None:
            return 0.0
        return max(0.0, self.next_try - (time.monotonic() if now is None else now))

    def failed(self, exc: ServiceUnavailableError, now: float | None = None) -> None:
        """A call could not reach the service: schedule the next try."""
        now = time.monotonic() if now is None else now
        cap = self._policy.cap(self.failures)
        wait = self._policy.rng.uniform(cap / 2, cap)
        if exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, MAX_RETRY_AFTER))
        wait = max(wait, min(NO_ANSWER_SPACING * exc.unanswered_for, MAX_NO_ANSWER_WAIT))
        self.failures += 1
        self.cause = str(exc)
        self.last_error = exc
        self.next_try = now + wait
        if self.down_since is None:
            self.down_since = now

    def announce(self) -> None:
        """A stand-in answered for the service: say once an outage that the client buffers."""
        if not self.announced and self.last_error is not None:
            self.announced = True
            log.warning(
                "lrpilot unreachable, keeping the last lrs and buffering: %s", self.last_error
            )

    def recovered(self, now: float | None = None) -> None:
        """The service answered: the outage, if any, is over."""
        if self.announced and self.down_since is not None:
            away = (time.monotonic() if now is None else now) - self.down_since
            log.warning("lrpilot reachable again after %.1f s", away)
        self.announced = False
        self.down_since = None
        self.failures = 0
        self.next_try = 0.0
        self.cause = ""
        self.last_error = None
