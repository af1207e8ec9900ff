"""What `Client` and `AsyncClient` share: their arguments and state, their properties, every
decision about a call that is not I/O, and the making of their API methods from `_calls`.

An API method is its `_calls` function (signature, docstring, request, reading of the answer)
turned into a method by `sending` (sync) or `awaiting` (async): the two clients differ only in
how they send (`_call`, `_send`, and the few methods that stream or iterate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import ipaddress
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    cast,
    overload,
)

import httpx

from . import _calls
from ._calls import Call, Pages
from ._deadline import DEFAULT_DEADLINE
from ._outbox import DEFAULT_OUTBOX_SIZE, Mode, Resilience, probe_timeout
from ._retry import Attempts, RetryPolicy
from .errors import LrpilotError, ServiceUnavailableError
from .models import PendingObservation

if TYPE_CHECKING:
    from .async_client import AsyncClient
    from .client import Client

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FLUSH_TIMEOUT",
    "USER_AGENT",
    "ClientBase",
    "listing",
    "operation",
]

T = TypeVar("T")
P = ParamSpec("P")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)  # the httpx client
X = TypeVar("X", httpx.BaseTransport, httpx.AsyncBaseTransport)  # and its transport

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
USER_AGENT = "lrpilot-client/0.1.0"
DEFAULT_FLUSH_TIMEOUT = 30.0
DEFAULT_CLOSE_TIMEOUT = 10.0
TOKEN_ENV = "LRPILOT_TOKEN"  # the token, when `token=` is not given

log = logging.getLogger("lrpilot_client")

# where `export` writes: a path, or a file open for writing bytes (sys.stdout.buffer)
Destination = str | os.PathLike[str] | IO[bytes]


class Retry:
    """`ClientBase._settle`'s answer for an attempt that failed in a way worth retrying."""


RETRY = Retry()


def broken(call: Call[Any], exc: httpx.TransportError) -> ServiceUnavailableError:
    """A streamed answer that broke off midway (it cannot be resumed: the call is not retried)."""
    return ServiceUnavailableError(
        f"{type(exc).__name__}: {exc}",
        attempts=1,
        message=f"{call.describe()}: the answer broke off: {type(exc).__name__}: {exc}",
    )


@contextlib.contextmanager
def sink(to: Destination) -> Iterator[IO[bytes]]:
    """`to` open for writing bytes; a file `export` created is removed if the export fails."""
    if not isinstance(to, str | os.PathLike):
        yield to
        return
    path = Path(to)
    try:
        with path.open("wb") as out:
            yield out
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def checked_base_url(base_url: str) -> str:
    """`base_url` if it is an http(s) URL with a host; else a ValueError at once. Without
    this, "127.0.0.1:8000" (no scheme) failed only when sent, and was retried as an outage."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"base_url {base_url!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(
            f"base_url {base_url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000"
        )
    if not url.host:
        raise ValueError(f"base_url {base_url!r} has no host, e.g. http://127.0.0.1:8000")
    host = url.raw_host.decode("ascii", "replace")  # IDNA-encoded; %-escapes left as such
    if not (_HOST.fullmatch(host) or _ip6(host)):
        raise ValueError(f"base_url {base_url!r}: {url.host!r} is not a host name")
    return base_url


_HOST = re.compile(r"[A-Za-z0-9._-]+")  # a name (IDNA-encoded) or an IPv4 address


def _ip6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _method_like(build: Callable[..., Any], method: Callable[..., T]) -> Callable[..., T]:
    """`method` with the name, docstring and signature (with `self`) of `build`."""
    sig = inspect.signature(build)
    returns = str(sig.return_annotation)
    if returns.startswith("Call[") and returns.endswith("]"):
        returns = returns[5:-1]
    elif returns.startswith("Pages[") and returns.endswith("]"):
        returns = f"Iterator[{returns[6:-1]}]"
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *sig.parameters.values()], return_annotation=returns
    )
    method.__name__ = build.__name__
    method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    return method


S = TypeVar("S")  # what an API method returns on `Client`
A = TypeVar("A")  # and on `AsyncClient`


class Api(Generic[P, S, A]):
    """An API method, declared once (in `ClientBase`) with its `_calls` function: `sync` is
    the method of `Client`, `async_` that of `AsyncClient` (`ClientBase.__init_subclass__`
    gives each class its own); the overloads say to a type checker what it is on each."""

    def __init__(self, sync: Callable[..., S], async_: Callable[..., A]) -> None:
        self.sync = sync
        self.async_ = async_

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type[Any]) -> Callable[P, A]: ...
    @overload
    def __get__(self, obj: Client, owner: type[Any]) -> Callable[P, S]: ...
    def __get__(self, obj: Any, owner: type[Any]) -> Any:
        return self  # on ClientBase itself: its subclasses hold the methods


def operation(build: Callable[P, Call[T]]) -> Api[P, T, Coroutine[Any, Any, T]]:
    """The method that sends the call `build` makes: its answer, or a coroutine of it."""

    def sync(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return cast(T, self._call(build(*args, **kwargs)))

    async def async_(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return cast(T, await self._call(build(*args, **kwargs)))

    return Api(_method_like(build, sync), _method_like(build, async_))


def listing(build: Callable[P, Pages[T]]) -> Api[P, Iterator[T], AsyncIterator[T]]:
    """The method that iterates over the pages `build` describes, fetching them as needed."""

    def sync(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        pages = build(*args, **kwargs)
        cursor = pages.start
        while True:
            page = self._call(pages.page(cursor))
            yield from page.items
            if (cursor := pages.follow(page, cursor)) is None:
                return

    async def async_(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        pages = build(*args, **kwargs)
        cursor = pages.start
        while True:
            page = await self._call(pages.page(cursor))
            for item in page.items:
                yield item
            if (cursor := pages.follow(page, cursor)) is None:
                return

    return Api(_method_like(build, sync), _method_like(build, async_))


class ClientBase(Generic[H, X]):
    """The state and the I/O-free behaviour of a client, and its API methods (one an operation
    of the HTTP API, each made from its `_calls` function); see `Client` for the arguments."""

    _http: H

    _asynchronous = False  # which of an `Api`'s methods the class takes

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give the client class its kind of each API method; an alias (a former name) is the
        very same method."""
        super().__init_subclass__(**kwargs)
        for name, member in vars(ClientBase).items():
            if isinstance(member, Api) and name not in vars(cls):
                setattr(cls, name, member.async_ if cls._asynchronous else member.sync)

    # --- the API: one method an operation (see _calls for each) --------------------------------

    # runs
    create_run = operation(_calls.create_run)
    get_run = operation(_calls.get_run)
    list_runs = operation(_calls.list_runs)
    iter_runs = listing(_calls.iter_runs)
    summary = operation(_calls.summary)
    plot = operation(_calls.plot)
    # what a training job reports
    observe = operation(_calls.observe)
    rewind = operation(_calls.rewind)
    resize = operation(_calls.resize)
    acknowledge = operation(_calls.acknowledge)
    declare_checkpoint = operation(_calls.declare_checkpoint)
    checkpoints = operation(_calls.checkpoints)
    iter_checkpoints = listing(_calls.iter_checkpoints)
    cooldown = operation(_calls.cooldown)
    retime = operation(_calls.retime)
    # the rates: at one step, over a range (and their former names)
    lr_at = operation(_calls.lr_at)
    lrs_in_force = lr_at
    lrs_range = operation(_calls.lrs_range)
    lrs_ahead = lrs_range
    # the log and its audit
    decisions = operation(_calls.decisions)
    iter_decisions = listing(_calls.iter_decisions)
    verify = operation(_calls.verify)
    import_bundle = operation(_calls.import_bundle)
    # what-if, policies, probes
    simulate = operation(_calls.simulate)
    policies = operation(_calls.policies)
    # an admin's tokens
    create_token = operation(_calls.create_token)
    list_tokens = operation(_calls.list_tokens)
    revoke_token = operation(_calls.revoke_token)
    health = operation(_calls.health)
    ready = operation(_calls.ready)
    metrics = operation(_calls.metrics)

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        *,
        rng: random.Random | None = None,
        identity: Mapping[str, Any] | None = None,
        transport: X | None = None,
        on_unavailable: Mode = "buffer",
        outbox_size: int = DEFAULT_OUTBOX_SIZE,
        outbox_path: str | os.PathLike[str] | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        token: str | None = None,
        deadline: float | None = DEFAULT_DEADLINE,
    ) -> None:
        base_url = checked_base_url(base_url)
        if deadline is not None and not deadline > 0:
            raise ValueError(
                f"deadline must be a positive number of seconds or None, not {deadline!r}"
            )
        self.deadline = deadline
        self._retry = RetryPolicy(retries, backoff, max_backoff, rng or random.Random())
        self._res = Resilience(self._retry, on_unavailable, outbox_size, outbox_path)
        self.close_timeout = close_timeout
        # declared with every observation and rewind; {} declares nothing
        self.identity: dict[str, Any] = (
            _calls.default_identity() if identity is None else dict(identity)
        )
        self._closed = False
        headers = {"User-Agent": USER_AGENT}
        token = os.environ.get(TOKEN_ENV) if token is None else token
        if token:  # sent with every request; never logged, never in an error's message
            headers["Authorization"] = f"Bearer {token.strip()}"
        options = {"base_url": base_url, "timeout": timeout, "headers": headers}
        self._http = self._open(options, transport)
        self._probe_timeout = probe_timeout(self._http.timeout)

    def _open(self, options: dict[str, Any], transport: X | None) -> H:
        """The httpx client (and the lock that makes one sender of the outbox at a time)."""
        raise NotImplementedError

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

    def head_hash(self, run_id: str) -> str | None:
        """The hash of the last decision of `run_id` this client received (None before any):
        record it in a checkpoint or a log, and `verify(run_id, head=...)` later proves that the
        service's log still ends there (a hash chain alone proves only that it is consistent).
        A provisional decision changes nothing here."""
        return self._res.heads.get(run_id)

    # --- the I/O-free part of sending ------------------------------------------------------------

    def _plan(
        self, call: Call[T]
    ) -> tuple[Call[T], Callable[[], T] | None, PendingObservation | None]:
        """After the buffered observations were sent: the call to send, its stand-in answer
        while the service is away (None: it raises), and the observation it sends, if any."""
        res = self._res
        if call.pending is not None:
            obs = dataclasses.replace(call.pending, client=dict(self.identity))
            stand_in = cast(Callable[[], T], functools.partial(res.hold, obs))
            return cast(Call[T], res.observe_call(obs)), stand_in, obs
        if call.offline is not None:
            return call, functools.partial(call.offline, res), None
        if call.ordered is not None:
            res.check_sent(*call.ordered)
        if call.identified and self.identity:
            call = dataclasses.replace(call, body={**(call.body or {}), "client": self.identity})
        return call, None, None

    def _attempts(self, call: Call[Any], attempts: Attempts | None) -> tuple[Attempts, Any]:
        """The attempts (the policy's unless given) and the timeout of one call: a probe
        connects briefly, and reads as long as the call may wait (a rank's report)."""
        if attempts is None:
            attempts = self._retry.attempts()
        timeout = call.timeout(self._probe_timeout if attempts.probe else self._http.timeout)
        return attempts, timeout

    def _deadline_of(self, call: Call[Any]) -> float | None:
        """Seconds the call may take in all, its retries included: the client's `deadline`,
        plus what the call may wait on the service by design (a long poll, a rank's report)."""
        if self.deadline is None:
            return None
        return self.deadline + (call.read_timeout or 0.0)

    @staticmethod
    def _past_deadline(
        exc: ServiceUnavailableError, total: float | None, deadline: float
    ) -> ServiceUnavailableError:
        """`exc`, saying so when it is the call's deadline that ended it."""
        if total is None or time.monotonic() < deadline:
            return exc
        exc.args = (f"{exc} (the call's deadline of {total:g} s passed)",)
        return exc

    def _request_of(self, call: Call[Any], timeout: Any, content: Any) -> httpx.Request:
        return self._http.build_request(
            call.method, call.path, params=call.params, json=call.body, content=content,
            headers=call.headers(), timeout=timeout,
        )  # fmt: skip

    @staticmethod
    def _settle(
        call: Call[T], attempts: Attempts, response: httpx.Response | httpx.TransportError
    ) -> T | Retry:
        """The result of an answer, or RETRY when it (or no answer) is a failure worth another
        attempt."""
        if isinstance(response, httpx.TransportError):
            attempts.transport_failed(response)
            return RETRY
        if attempts.server_failed(response):
            return RETRY
        try:
            return call.result(response)
        except LrpilotError as exc:
            if attempts.foreign_failed(response, exc):
                return RETRY
            raise

    def _lost(self, exc: ServiceUnavailableError) -> None:
        """A call with no stand-in failed: in "buffer" mode the outage schedule takes note."""
        if self._res.buffering:
            self._res.outage.failed(exc)

    def _stand_in(self, exc: ServiceUnavailableError, offline: Callable[[], T]) -> T:
        """A call with a stand-in failed: the stand-in ("buffer" mode; "raise" mode raises)."""
        self._res.unreachable(exc)
        answer = offline()  # (raises when the client knows no rates of the run)
        self._res.outage.announce()
        return answer

    def _answered(self, result: T) -> T:
        self._res.answered(result)
        return result

    def _undelivered(self, obs: PendingObservation, exc: LrpilotError) -> None:
        """A buffered observation was not delivered: the outage goes on (this returns, or raises
        in "raise" mode), or the service refused it (raised, out of the outbox)."""
        if isinstance(exc, ServiceUnavailableError):
            self._res.unreachable(exc)
            self._res.outage.announce()  # it stays buffered
            return
        raise self._res.refused(obs, exc) from exc

    def _flush_waits(self, timeout: float) -> Iterator[float]:
        """`flush`'s schedule: the wait before each try, while observations are buffered and
        the next try is due within `timeout` seconds from now."""
        res = self._res
        deadline = time.monotonic() + max(timeout, 0.0)
        while len(res.outbox):
            wait = res.outage.wait()
            if time.monotonic() + wait > deadline:
                return
            yield wait

    def _report_left(self) -> None:
        """At close: say what could not be sent (kept in the outbox file, or lost)."""
        self._closed = True
        left = len(self._res.outbox)
        if not left:
            return
        if self._res.outbox.path is not None:
            log.warning(
                "lrpilot: %d observations not sent, kept in %s for the next client", left,
                self._res.outbox.path,
            )  # fmt: skip
        else:
            log.error("lrpilot: %d observations could not be sent and are lost", left)

    @staticmethod
    def _closing_failed(error: LrpilotError) -> None:
        # the exception in flight matters more than a refusal found while closing
        log.error("lrpilot: while closing: %s", error)

    def _due(self, obs: PendingObservation | None) -> bool:
        """May the call be sent now? An observation not while older ones are buffered."""
        return self._res.due() and (obs is None or not len(self._res.outbox))
