"""A call's total deadline, down to every read and write on its socket.

httpx's timeouts bound each network operation, not a request: a server (or a proxy) that
sends a byte every few seconds never trips a read timeout, and would hold a training step
for as long as it likes. So the client's own transport gives httpcore a network backend whose
every connect, read and write waits at most what is left until the deadline of the call in
progress (a context variable, set by the client around each call), and fails as a timeout
when none is left. A pooled connection is checked against whichever call uses it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["DEFAULT_DEADLINE", "bounded", "transport"]

DEFAULT_DEADLINE = 60.0  # seconds a call may take in all, retries included (see Client)

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar(
    "lrpilot_deadline", default=math.inf
)


@contextlib.contextmanager
def bounded(seconds: float | None) -> Iterator[float]:
    """Within: every socket operation of the client ends by `seconds` from now (None: no
    deadline); yields the deadline (time.monotonic()). A nested deadline never extends the
    one around it."""
    outer = _deadline.get()
    deadline = min(outer, math.inf if seconds is None else time.monotonic() + seconds)
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to what is left of the deadline; `error` when nothing is."""
    deadline = _deadline.get()
    if deadline == math.inf:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def transport() -> httpx.HTTPTransport:
    """httpx's own transport, its sockets bounded by the deadline of the call in progress."""
    http = httpx.HTTPTransport()
    # httpcore takes a network backend only at the pool's creation, which httpx does not
    # expose: the pool's backend is replaced before any connection is made
    pool = http._pool
    pool._network_backend = _Backend(pool._network_backend)
    return http
