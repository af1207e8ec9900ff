"""The synchronous client: what a plain training loop uses."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call
from ._outbox import DEFAULT_OUTBOX_SIZE, Mode, Resilience, probe_timeout
from ._retry import Attempts, RetryPolicy
from .errors import LrpilotError, ResponseError, ServiceUnavailableError
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

__all__ = ["DEFAULT_BASE_URL", "USER_AGENT", "Client"]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
USER_AGENT = "lrpilot-client/0.1.0"
DEFAULT_FLUSH_TIMEOUT = 30.0
DEFAULT_CLOSE_TIMEOUT = 10.0

log = logging.getLogger("lrpilot_client")


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
    jitter (`backoff * 2**n` capped at `max_backoff`), and never sooner than a 503's
    `Retry-After`; so are 408 and 429 (a gateway's "send it again"). Another 4xx answer is
    raised at once as `NotFoundError`, `ConflictError`, `ValidationError` or `LrpilotError`.

    When the service cannot be reached, `on_unavailable` says what happens:

    - "buffer" (the default): a training loop never sees the outage. `observe` buffers the
      observation in an outbox (at most `outbox_size`; when full, new ones are dropped and
      counted in `dropped`; with `outbox_path` also in that file, so that a restarted process
      sends them) and returns a provisional `Decision` (action "hold", the last rates the
      service decided, `provisional` True). `lrs_in_force`, `lrs`, `lr` and `lrs_ahead` answer
      the last known rates (provisional). While the service is known down, calls make no
      request until the next try is due (`backoff` doubling up to `max_backoff`, never sooner
      than `Retry-After`), and a try is a single request. Every call first sends what is
      buffered, oldest first; once the service answers, the newest decision's rates take
      effect. `flush()` sends them now, `pending` lists them, `close()` tries for
      `close_timeout` seconds. A buffered observation the service refuses (4xx) is a bug of
      the job, not an outage: it leaves the outbox and is raised by the call that sent it.
      An answer that is not the service's (a proxy's page: a 2xx the client cannot read, or
      an error without the service's JSON `detail`) counts as the service being away.
      The other calls (create_run, get_run, rewind, verify, decisions) still raise
      `ServiceUnavailableError`: they have no stand-in answer.
    - "raise": every call raises `ServiceUnavailableError` once its retries are spent.

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
        self._flushing = threading.Lock()  # one sender of the outbox at a time
        self._closed = False
        self._http = httpx.Client(
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
        """What happens when the service cannot be reached: "buffer" or "raise"."""
        return "buffer" if self._res.buffering else "raise"

    @property
    def pending(self) -> tuple[PendingObservation, ...]:
        """The buffered observations not sent yet, oldest first."""
        return self._res.outbox.items()

    @property
    def dropped(self) -> int:
        """How many observations were dropped because the outbox was full."""
        return self._res.outbox.dropped

    @property
    def offline(self) -> bool:
        """True while the service is known to be unreachable (the last try failed)."""
        return self._res.outage.down

    def close(self) -> None:
        """Try to send what is buffered (for at most `close_timeout` seconds), then close the
        connection pool. What could not be sent stays in the outbox file, if any, for the next
        client; without one it is lost (logged). A buffered observation refused by the service
        is raised here, after the pool is closed."""
        if self._closed:
            return
        try:
            if len(self._res.outbox) and self.close_timeout > 0:
                self.flush(self.close_timeout)
        finally:
            self._closed = True
            report_left(self._res)
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the exception in flight matters more than a refusal found while closing
            self.close()
        except LrpilotError as error:
            log.error("lrpilot: while closing: %s", error)

    def _send(self, call: Call[T], attempts: Attempts | None = None) -> T:
        """Send `call` with its retries (the policy's unless given); no outage handling."""
        if attempts is None:
            attempts = self._retry.attempts()
        # a probe connects briefly, and reads as long as the call may wait (a rank's report)
        timeout = call.timeout(self._probe_timeout if attempts.probe else self._http.timeout)
        for wait in attempts:
            if wait > 0:
                time.sleep(wait)
            try:
                response = self._http.request(
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

    def _flush_pending(self) -> None:
        """Send the buffered observations, oldest first, while tries are due and answered.

        Stops at the first that cannot be sent (the outage goes on) and raises the first the
        service refuses (it leaves the outbox; the ones after it stay for the next call).
        """
        res = self._res
        if not len(res.outbox):
            return
        with self._flushing:
            try:
                while (obs := res.next_to_send()) is not None:
                    try:
                        decision = self._send(res.observe_call(obs), res.attempts(obs))
                    except ServiceUnavailableError as exc:
                        res.unreachable(exc)
                        return
                    except LrpilotError as exc:
                        raise res.refused(obs, exc) from exc
                    res.delivered(obs, decision)
            finally:
                res.outbox.save()

    def _ask(self, call: Call[T], offline: Callable[[], T]) -> T:
        """A read with a stand-in: the answer, or `offline()` while the service is away
        ("buffer" mode; "raise" mode raises)."""
        res = self._res
        self._flush_pending()
        if res.due():
            try:
                result = self._send(call, res.attempts())
            except ServiceUnavailableError as exc:
                res.unreachable(exc)
            else:
                res.answered(result)
                return result
        return offline()

    def _request(self, call: Call[T]) -> T:
        """A call with no stand-in: sent after the buffered observations, raised if it fails."""
        self._flush_pending()
        try:
            result = self._send(call)
        except ServiceUnavailableError as exc:
            if self._res.buffering:
                self._res.outage.failed(exc)
            raise
        self._res.answered(result)
        return result

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> int:
        """Send the buffered observations now, oldest first, waiting out the outage schedule
        for up to about `timeout` seconds; return how many are still pending (0: all sent).

        For the end of training (`close()` does it too), or to check that nothing is left.
        Raises the error of a buffered observation the service refuses, like any call.
        """
        res = self._res
        deadline = time.monotonic() + max(timeout, 0.0)
        while len(res.outbox):
            wait = res.outage.wait()
            if time.monotonic() + wait > deadline:
                break
            if wait > 0:
                time.sleep(wait)
            self._flush_pending()
        return len(res.outbox)

    def create_run(
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
        """Create the run, or get it back if it already exists with the same spec.

        Calling this at every (re)start of a job is the intended use: the first call creates
        the run, later ones return it. A different spec for an existing run_id raises
        `ConflictError` rather than silently changing a schedule mid-run. Arguments left as None
        are not sent, so the service's defaults apply. `aggregate` (`{"timeout_s": 60,
        "on_timeout": "decide" | "refuse"}`) makes every rank post its own metric (`observe`
        with `rank`, `world_size` and optionally `weight`): one decision a step, from their
        weighted mean, the same for every rank. `scaling` (`{"rule": "linear" | "sqrt",
        "by": "world_size" | "batch_size", "base": N}`, base_lrs being tuned for size N)
        rescales the lrs whenever the job reports another size: the `world_size` of its
        observations, or `resize`.
        """
        return self._request(
            _calls.create_run(
                run_id, policy, version, params, base_lrs, metric, labels, aggregate, scaling
            )
        )

    def get_run(self, run_id: str) -> Run:
        """The run's spec and where its schedule stands now."""
        return self._request(_calls.get_run(run_id))

    def observe(
        self,
        run_id: str,
        step: int,
        value: float,
        rank: int | None = None,
        world_size: int | None = None,
        weight: float | None = None,
    ) -> Decision:
        """Report the metric `value` seen at training `step`; return the decision it led to.

        `value` may be NaN or ±inf. Sending the same (step, value) again returns the decision
        already made (this is what makes the retries safe); the same step with another value is
        a `ConflictError`.

        In "buffer" mode, when the service cannot be reached the observation is buffered and the
        answer is provisional (`decision.provisional`: action "hold", the last decided rates), so
        `zip(param_groups, decision.lrs)` goes on working; it raises `ServiceUnavailableError`
        only if the client knows no rates of the run at all (it never got an answer about it).
        A buffered observation that the service refuses is raised here (its `observation` says
        which). Whenever this raises, the observation was not taken: call again.
        """
        res = self._res
        obs = PendingObservation(run_id, step, value, rank, world_size, dict(self.identity), weight)
        self._flush_pending()
        if res.due() and not len(res.outbox):  # nothing older of it may be overtaken
            try:
                decision = self._send(res.observe_call(obs), res.attempts(obs))
            except ServiceUnavailableError as exc:
                res.unreachable(exc)
            else:
                res.answered(decision)
                return decision
        return res.hold(obs)

    def head_hash(self, run_id: str) -> str | None:
        """The hash of the last decision of `run_id` this client received (None before any):
        record it in a checkpoint or a log, and `verify(run_id, head=...)` later proves that the
        service's log still ends there (a hash chain alone proves only that it is consistent).
        A provisional decision changes nothing here."""
        return self._res.heads.get(run_id)

    def rewind(self, run_id: str, to_step: int) -> Rewound:
        """For a job resumed from an older checkpoint: make the run's state what it was right
        after `to_step`. The later decisions are kept in the log, marked superseded; the rewind
        is itself an entry of the hash chain (with this client's identity). Rewinding to or past
        the last step changes nothing (`rewound` False), so it is safe at every resume.

        The run's buffered observations are sent first (a rewind must come after them); while
        any is left, this raises `ServiceUnavailableError`."""
        self._flush_pending()
        self._res.check_sent(run_id, "rewind")
        return self._request(_calls.rewind(run_id, to_step, self.identity))

    def resize(
        self,
        run_id: str,
        step: int,
        world_size: int | None = None,
        batch_size: int | None = None,
    ) -> Resized:
        """An elastic job's new size (exactly one of `world_size` and the global `batch_size`,
        as the run's scaling rule counts) from training `step` on: the service rescales the
        lrs by the rule and logs it as a scale entry (`resized` False when that size is
        already in force, so it is safe at every restart). Call it when the job restarts with
        another world size, before its first step; `step` may not be below the last decided
        step. The run's buffered observations are sent first; while any is left, this raises
        `ServiceUnavailableError`."""
        self._flush_pending()
        self._res.check_sent(run_id, "resize")
        return self._request(_calls.resize(run_id, step, world_size, batch_size, self.identity))

    def verify(self, run_id: str, head: str | None = None) -> Verified:
        """Ask the service to replay the run's log through its policy version and check every
        link; with `head` (from `head_hash`), the log must also end exactly there."""
        return self._request(_calls.verify(run_id, head))

    def lrs_in_force(self, run_id: str, step: int | None = None) -> LrsInForce:
        """The rates in force at `step` (the current ones if None), and the decision that set
        them. In "buffer" mode, while the service cannot be reached: the last known ones, with
        `provisional` True."""
        return self._ask(
            _calls.lrs_in_force(run_id, step), lambda: self._res.lrs_in_force(run_id, step)
        )

    def lrs_ahead(self, run_id: str, first: int, count: int = 1000) -> LrsAhead:
        """The rates of `count` consecutive steps from `first` (at most 10,000): a rank that
        needs an lr every training step fetches once per `count` steps. In "buffer" mode, while
        the service cannot be reached: the last known ones, with `provisional` True and nothing
        certain."""
        return self._ask(
            _calls.lrs_ahead(run_id, first, count),
            lambda: self._res.lrs_ahead(run_id, first, count),
        )

    def lrs(self, run_id: str, step: int | None = None) -> list[float]:
        """The rates in force at `step`, one per param group (the current ones if None); in
        "buffer" mode, the last known ones while the service cannot be reached."""
        return list(self.lrs_in_force(run_id, step).lrs)

    def lr(self, run_id: str, step: int | None = None) -> float:
        """The first param group's rate in force at `step`: enough for a one-group optimizer."""
        return _calls.first_lr(self.lrs_in_force(run_id, step).lrs)

    def decisions(
        self, run_id: str, after: int = 0, limit: int = 100, action: str | None = None
    ) -> Page[Decision]:
        """One page of the decision log, oldest first, starting after seq `after`."""
        return self._request(_calls.decisions(run_id, after, limit, action))

    def iter_decisions(
        self, run_id: str, action: str | None = None, *, limit: int = 100
    ) -> Iterator[Decision]:
        """Every decision of the run, oldest first, fetching `limit` per request as needed."""
        after: int | None = 0
        while after is not None:
            page = self.decisions(run_id, after=after, limit=limit, action=action)
            yield from page.items
            after = next_cursor(page, after)


def report_left(res: Resilience) -> None:
    """At close: say what could not be sent (kept in the outbox file, or lost)."""
    left = len(res.outbox)
    if not left:
        return
    if res.outbox.path is not None:
        log.warning(
            "lrpilot: %d observations not sent, kept in %s for the next client", left,
            res.outbox.path,
        )  # fmt: skip
    else:
        log.error("lrpilot: %d observations could not be sent and are lost", left)
