"""The synchronous client: what a plain training loop uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx

from . import _calls, _deadline
from ._base import (
    DEFAULT_BASE_URL,
    DEFAULT_FLUSH_TIMEOUT,
    RETRY,
    USER_AGENT,
    ClientBase,
    Destination,
    broken,
    sink,
)
from ._calls import Call
from ._deadline import bounded
from ._ndjson import LineSplitter
from ._retry import Attempts
from .errors import LrpilotError, ServiceUnavailableError

__all__ = ["DEFAULT_BASE_URL", "USER_AGENT", "Client"]

T = TypeVar("T")


class Client(ClientBase[httpx.Client, httpx.BaseTransport]):
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
      service decided, `provisional` True). `lr_at`, `lrs_range`, `lrs` and `lr` answer the
      last known rates (provisional). While the service is known down, calls make no
      request until the next try is due (`backoff` doubling up to `max_backoff`, never sooner
      than `Retry-After`), and a try is a single request. Every call first sends what is
      buffered, oldest first; once the service answers, the newest decision's rates take
      effect. `flush()` sends them now, `pending` lists them, `close()` tries for
      `close_timeout` seconds. A buffered observation the service refuses (4xx) is a bug of
      the job, not an outage: it leaves the outbox and is raised by the call that sent it.
      An answer that is not the service's (a proxy's page: a 2xx the client cannot read, or
      an error without the service's JSON `detail`) counts as the service being away.
      The other calls (create_run, get_run, rewind, verify, decisions, export, ...) still
      raise `ServiceUnavailableError`: they have no stand-in answer.
    - "raise": every call raises `ServiceUnavailableError` once its retries are spent.

    One method an operation of the HTTP API (see clients/python/README.md for the table);
    `lrs_in_force` and `lrs_ahead` are the former names of `lr_at` and `lrs_range`.

    `token` is the service's API token (`lrpilot token create` prints one), sent as
    `Authorization: Bearer TOKEN`; None takes it from the LRPILOT_TOKEN environment variable,
    "" sends none. A 401 (`AuthenticationError`) or 403 (`PermissionDeniedError`) is raised at
    once, in either mode: it is not an outage, and is never retried or buffered.

    `base_url` must be an http(s) URL with a host (else a ValueError at once). `deadline`
    (seconds, default 60; None: none) bounds each call in all, its retries and every byte of
    its answer included, so that a server trickling bytes cannot hold a step; a call that
    waits on the service by design (a long poll, a rank's report) gets that wait on top.

    `rng` seeds the jitter (for reproducible waits); `transport` replaces httpx's network
    transport (e.g. `httpx.MockTransport`, or an ASGI transport in the service's own tests).
    """

    def _open(self, options: dict[str, Any], transport: httpx.BaseTransport | None) -> httpx.Client:
        self._flushing = threading.Lock()  # one sender of the outbox at a time
        return httpx.Client(**options, transport=transport or _deadline.transport())

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
            self._report_left()
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[1] is None:  # (type, exception, traceback): no exception in flight
            self.close()
            return
        try:
            self.close()
        except LrpilotError as error:
            self._closing_failed(error)

    # --- sending -------------------------------------------------------------------------------

    def _send(self, call: Call[T], attempts: Attempts | None = None) -> T:
        """Send `call` with its retries (the policy's unless given); no outage handling."""
        attempts, timeout = self._attempts(call, attempts)
        total = self._deadline_of(call)
        with bounded(total) as deadline:
            try:
                return self._attempt(call, attempts, timeout, deadline)
            except ServiceUnavailableError as exc:
                raise self._past_deadline(exc, total, deadline) from None

    def _attempt(self, call: Call[T], attempts: Attempts, timeout: Any, deadline: float) -> T:
        for wait in attempts:
            if time.monotonic() + wait >= deadline:
                break  # no time left for another try
            if wait > 0:
                time.sleep(wait)
            content = _calls.file_chunks(call.upload)() if call.upload else None
            answer: httpx.Response | httpx.TransportError
            try:
                answer = response = self._http.send(
                    self._request_of(call, timeout, content), stream=call.stream
                )
                if call.stream and not response.is_success:
                    response.read()  # an error's detail, or a failure to retry
            except httpx.TransportError as exc:
                answer = exc
            if (result := self._settle(call, attempts, answer)) is not RETRY:
                return result  # type: ignore[return-value]
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
                        res.delivered(obs, self._send(res.observe_call(obs), res.attempts(obs)))
                    except LrpilotError as exc:
                        self._undelivered(obs, exc)
                        return  # the outage goes on
            finally:
                res.outbox.save()

    def _call(self, call: Call[T]) -> T:
        """Send `call` after the buffered observations: its answer; while the service is away,
        its stand-in ("buffer" mode) or `ServiceUnavailableError`."""
        self._flush_pending()
        call, offline, obs = self._plan(call)
        if offline is None:
            try:
                result = self._send(call)
            except ServiceUnavailableError as exc:
                self._lost(exc)
                raise
        elif self._due(obs):
            try:
                result = self._send(call, self._res.attempts(obs))
            except ServiceUnavailableError as exc:
                return self._stand_in(exc, offline)
        else:
            return offline()
        return self._answered(result)

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT) -> int:
        """Send the buffered observations now, oldest first, waiting out the outage schedule
        for up to about `timeout` seconds; return how many are still pending (0: all sent).

        For the end of training (`close()` does it too), or to check that nothing is left.
        Raises the error of a buffered observation the service refuses, like any call.
        """
        for wait in self._flush_waits(timeout):
            if wait > 0:
                time.sleep(wait)
            self._flush_pending()
        return len(self._res.outbox)

    def lrs(self, run_id: str, step: int | None = None) -> list[float]:
        """The rates in force at `step`, one per param group (the current ones if None); in
        "buffer" mode, the last known ones while the service cannot be reached."""
        return list(self.lr_at(run_id, step).lrs)

    def lr(self, run_id: str, step: int | None = None) -> float:
        """The first param group's rate in force at `step`: enough for a one-group optimizer."""
        return _calls.first_lr(self.lr_at(run_id, step).lrs)

    def export(self, run_id: str, to: Destination) -> int:
        """Stream the run's bundle (NDJSON: its spec, every decision of both branches of a
        rewound run, a trailer with the head hash, signed when the service has a key) into
        `to`, a path or a binary file, as it comes; return the bytes written. A file this
        creates is removed if the export fails. Check it offline with `lrpilot verify`."""
        written = 0
        with sink(to) as out:
            for chunk in self._exported(run_id, lines=False):
                written += out.write(chunk)  # type: ignore[arg-type]
        return written

    def export_lines(self, run_id: str) -> Iterator[str]:
        """The run's bundle line by line (no line end), streamed: as `export`, never whole in
        memory."""
        yield from self._exported(run_id, lines=True)  # type: ignore[misc]

    def _exported(self, run_id: str, lines: bool) -> Iterator[str | bytes]:
        call = _calls.export(run_id)
        response = self._call(call)
        try:
            if not lines:
                yield from response.iter_bytes()
                return
            split = LineSplitter()
            for chunk in response.iter_bytes():
                yield from split.feed(chunk)
            yield from split.end()
        except httpx.TransportError as exc:
            raise broken(call, exc) from exc
        finally:
            response.close()
