"""The HTTP server of ``lrpilot serve``: uvicorn, with the connection limits it lacks and a
shutdown that answers waiting requests at once.

uvicorn times out only an idle keep-alive connection, and only after a first response: a client
that connects and sends nothing, or trickles its headers or body a byte at a time, holds a
connection (and a file descriptor) forever. ``GuardedH11`` adds the missing timers to uvicorn's
h11 protocol:

* the headers of a request must arrive within ``header_timeout_s`` of its first byte (or of
  the connection, for its first request): a total deadline, so trickling does not reset it;
* a body must make progress: at least ``BODY_PROGRESS_BYTES`` every ``body_timeout_s`` (or be
  complete), else the connection is closed. While the server itself stops reading (the app has
  not consumed what came), the client is not to blame and the timer waits;
* beyond ``max_connections`` open connections a new one is answered 503 at once and closed, and
  the cap is kept below the process's file descriptor limit (raised to its hard limit first),
  with room for what asyncio accepts in one go before the protocol can refuse any (the listen
  backlog, sized to the limit), so that ``accept`` never fails for want of a descriptor;
* asyncio's own error reports (a failing ``accept`` among them) are rate-limited: one line a
  second for each kind, with the count of those left out.

On SIGTERM ``Server`` first drains: the app is told (``/readyz`` answers 503, waiting long-polls
and aggregated ranks are answered at once), it keeps serving for ``shutdown_drain_s`` so that a
load balancer sees it leave, then uvicorn's graceful shutdown runs, bounded by
``shutdown_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lrpilot.api.observe import logging_config
from lrpilot.settings import Settings

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows: the cap is then the setting alone
    resource = None  # type: ignore[assignment]

# under uvicorn's error logger: its handler, its format, and the level --log-level sets
logger = logging.getLogger("uvicorn.error.lrpilot")

# A body must bring this many bytes per body timeout: a trickle of a few bytes a second is an
# attack, a slow network is not (64 KiB every 30 s is 2 KiB/s).
BODY_PROGRESS_BYTES = 64 * 1024
# File descriptors kept for what is not a client connection: the database pool, SQLite's WAL
# and journal, log files, the thread pool's pipes.
FD_RESERVE = 256
# asyncio's error reports: at most one line of each kind this often.
REPORT_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


def _refusal(status: int, reason: str, text: str, retry_after: bool = False) -> bytes:
    body = text.encode()
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after:
        headers.append("retry-after: 1")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with header and body timeouts and a connection cap
    (``limits`` is set on the subclass that ``protocol_class`` makes)."""

    limits: ClassVar[ConnectionLimits]
    refused: ClassVar[int] = 0  # connections refused over the cap since the last log line
    refused_logged_at: ClassVar[float] = -math.inf

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusing = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._received = 0  # bytes received on this connection
        self._body_mark = 0  # ... when the body timer was last armed
        self._fresh = True  # no byte received yet: the first request's headers are due

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections:
            # Refused before h11 sees a byte: a 503 the client reads as the answer to whatever
            # it sends, and the descriptor is free again at once.
            self._refusing = True
            self.transport = transport  # type: ignore[assignment]
            self._count_refusal()
            text = (
                f"the server has {self.limits.max_connections} connections open, its limit "
                "(LRPILOT_MAX_CONNECTIONS); retry later\n"
            )
            transport.write(_refusal(503, "Service Unavailable", text, retry_after=True))  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    @classmethod
    def _count_refusal(cls) -> None:
        """An operator hears of refusals, once a second at most, however many there are."""
        cls.refused += 1
        now = time.monotonic()
        if now - cls.refused_logged_at >= REPORT_EVERY_S:
            logger.warning(
                "%d connection(s) refused with a 503 since the last such line: %d open, the "
                "limit (LRPILOT_MAX_CONNECTIONS)",
                cls.refused,
                cls.limits.max_connections,
            )
            cls.refused, cls.refused_logged_at = 0, now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refusing:
            return
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._fresh = False
        super().data_received(data)
        self._update_timers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_timers()

    # -- the timers ---------------------------------------------------------------------------

    def _update_timers(self) -> None:
        if self.transport.is_closing():
            self._cancel_timers()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._cancel_body_timer()
            # Bytes of a request are here but its headers are not complete: they are due.
            # An idle connection between requests is uvicorn's keep-alive timer's.
            if self.conn.trailing_data[0] or self._fresh:
                if self._header_timer is None:
                    self._arm_header_timer()
            else:
                self._cancel_header_timer()
        elif state is h11.SEND_BODY:
            self._cancel_header_timer()
            if self._body_timer is None or self._received - self._body_mark >= BODY_PROGRESS_BYTES:
                self._arm_body_timer()
        else:  # the request is complete (or the connection is done): the app's time now
            self._cancel_timers()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._headers_timed_out
        )

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_mark = self._received
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self._fresh:  # a client that said nothing gets no answer (a browser's preconnect)
            text = f"the request headers did not arrive within {self.limits.header_timeout_s:g} s\n"
            self.transport.write(_refusal(408, "Request Timeout", text))
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow.read_paused:  # the app has not read what came: not the client's delay
            self._arm_body_timer()
            return
        # The app is reading the body: closing tells it the client is gone (it answers no one).
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11]:
    """A ``GuardedH11`` with these limits (uvicorn makes a protocol from a class alone)."""
    return type("LrpilotH11", (GuardedH11,), {"limits": limits})


def raise_file_limit() -> int:
    """The soft limit on open files raised to the hard one; the limit now in force."""
    if resource is None:  # pragma: no cover
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a container may forbid it: keep the soft limit
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def listen_backlog(file_limit: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go, before
    the protocol sees any of them (and can refuse them): uvicorn's 2048, or fewer for a small
    file limit."""
    return max(16, min(2048, file_limit // 8))


def connection_cap(setting: int, file_limit: int) -> int:
    """The connection cap: the setting, or fewer, so that every connection, plus what the
    process holds besides, plus two bursts of accepted connections not yet refused, fits in
    its file descriptors: ``accept`` then never fails for want of one."""
    reserve = min(FD_RESERVE, file_limit // 4)
    return max(1, min(setting, file_limit - reserve - 2 * listen_backlog(file_limit)))


class RateLimitedReports:
    """An asyncio exception handler: the first report of each kind a second is logged, with
    how many like it were left out since the last one logged. With the descriptors gone,
    asyncio reports every failed ``accept``: without this, megabytes of tracebacks a second."""

    def __init__(self, every_s: float = REPORT_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        kind = f"{context.get('message')}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.every_s:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            context = {
                **context,
                "message": f"{context.get('message')} ({left_out} more like it left out)",
            }
        loop.default_exception_handler(context)


class Server(uvicorn.Server):
    """uvicorn's server with the drain of ``Server`` in this module's docstring."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None], drain_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_s = drain_s
        self._drained_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(RateLimitedReports())
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn notices the signal at its next tick (up to 0.1 s); the drain starts now, on
        # the loop (a signal handler must not touch the app's futures in the middle of a step)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drained_at is None:
            self._drained_at = time.monotonic()
            logger.info("draining: waiting requests answered, /readyz says so")
            self._drain()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_drain()
        assert self._drained_at is not None
        left = self._drained_at + self._drain_s - time.monotonic()
        if left > 0:  # still serving: a load balancer's probe sees the 503
            await asyncio.sleep(left)
        await super().shutdown(sockets)


def build(
    app: Any,
    settings: Settings,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    drain: Callable[[], None] = lambda: None,
) -> Server:
    """The server ``lrpilot serve`` runs: ``app`` on host:port under ``settings``' limits,
    logging in ``settings.log_format`` (the app writes the request lines: uvicorn's access
    log is off)."""
    file_limit = raise_file_limit()
    cap = connection_cap(settings.max_connections, file_limit)
    limits = ConnectionLimits(settings.header_timeout_s, settings.body_timeout_s, cap)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=logging_config(settings.log_format, log_level),
        access_log=False,
        http=protocol_class(limits),
        backlog=listen_backlog(file_limit),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        lifespan="on",
    )
    return Server(config, drain, settings.shutdown_drain_s)
