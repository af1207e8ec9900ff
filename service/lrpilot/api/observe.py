"""Every request observed once: its request id, its metrics, and its log line.

``Observed`` is the outermost middleware. It gives each request an id (the client's
``X-Request-ID`` when it is sane, else a new one), returned in ``X-Request-ID``; when the answer
ends it counts the request (``Metrics.request``: by its route's path template) and writes one
line to the ``lrpilot.access`` logger: request id, method, path, route, status, duration, the
token's name and project (none in open mode), the run id, the peer. Never a header's value but
the request id: no secret reaches the log.

What the layers inside learn of the request (who the caller is, which run) they write on the
``RequestInfo`` the scope carries (``auth.require``, the observation fast path): the scope
itself may be copied on the way in, the object it points to is the same.

The log's format (``text`` or ``json``, ``LRPILOT_LOG_FORMAT``) is set for uvicorn's loggers
and lrpilot's alike by ``logging_config``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # the metrics' module imports auth, which imports this one
    from lrpilot.api.metrics import Metrics

INFO = "lrpilot.request"  # the scope's key of the RequestInfo
CLIENT_LEFT = 499  # the status noted of a request cancelled before it was answered
UNMATCHED = "unmatched"  # the route of a request no route took (a 404, a refusal before one)
access_log = logging.getLogger("lrpilot.access")
# A request id the client chose is kept when it looks like one (a UUID, a trace id): anything
# else (long, spaces, control characters) could forge or break log lines, so it is replaced.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,128}")


@dataclass(slots=True)
class RequestInfo:
    """What the request's log line says of it, filled in by whoever learns it."""

    id: str
    token: str | None = None
    project: str | None = None
    route: str | None = None  # the path template, when no FastAPI route served it
    run_id: str | None = None


def info_of(scope: Scope) -> RequestInfo | None:
    info: RequestInfo | None = scope.get(INFO)
    return info


def noted(scope: Scope, token: str | None, project: str) -> None:
    """Who the caller is, written on the request's record (for its log line)."""
    info = info_of(scope)
    if info is not None:
        info.token, info.project = token, project


class Observed:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, log_requests: bool, routes: Sequence[BaseRoute]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.routes = routes  # the app's, for a HEAD's route (see _route)
        # A new id is this process's random prefix and a count: unique across replicas and
        # restarts, and a fraction of a uuid4's cost (the observation path pays it each time).
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        info = scope[INFO] = RequestInfo(
            _given_id(scope["headers"]) or f"{self._prefix}-{next(self._count):x}"
        )
        header = (b"x-request-id", info.id.encode())
        # unanswered: 500 (what the server answers when the app failed), or 499 (nginx's
        # "client closed request") when it was cancelled (the shutdown's timeout ended it, or
        # its client went away): no server error
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if not started:
                status = CLIENT_LEFT
            raise
        finally:
            seconds = time.perf_counter() - start
            route = info.route or _route(scope, self.routes)
            self.metrics.request(scope["method"], route, status, seconds)
            if self.log_requests and access_log.isEnabledFor(logging.INFO):
                _log_request(scope, info, route, status, seconds)


def _given_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The client's request id, if it sent a sane one."""
    for name, value in headers:
        if name == b"x-request-id":
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else None
    return None


def _route(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The path template of the route that served the request (the router notes it in the
    scope). A HEAD is served as a GET on a copy of the scope (api/limits.py), so its route is
    looked up again here: rare, and only for HEAD."""
    route = scope.get("route")
    if route is None and scope["method"] == "HEAD":
        route = _matching(routes, {**scope, "method": "GET"})
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _matching(routes: Sequence[BaseRoute], scope: Scope) -> BaseRoute | None:
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            inner = getattr(route, "original_router", None)  # FastAPI's included router
            return route if inner is None else _matching(inner.routes, scope)
    return None


def _log_request(scope: Scope, info: RequestInfo, route: str, status: int, seconds: float) -> None:
    run_id = info.run_id or scope.get("path_params", {}).get("run_id")
    client = scope.get("client")
    fields = {
        "request_id": info.id,
        "method": scope["method"],
        "path": scope["path"],
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "token": info.token,
        "project": info.project,
        "run_id": run_id,
        "client": client[0] if client else None,
    }
    access_log.info("request", extra={"fields": fields})


# -- formats ----------------------------------------------------------------------------------

LOG_FORMATS = ("text", "json")


class TextFormatter(logging.Formatter):
    """uvicorn's look (``INFO:     message``); a request line's fields as key=value after it
    (other lines say theirs in their message)."""

    def __init__(self) -> None:
        from uvicorn.logging import DefaultFormatter

        super().__init__()
        self._uvicorn = DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False)

    def format(self, record: logging.LogRecord) -> str:
        line = self._uvicorn.format(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields and record.name == access_log.name:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return line


def _text(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\\') else text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logging_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """uvicorn's ``log_config``: uvicorn's and lrpilot's loggers, one handler, one format
    (uvicorn's own access logger is not used: ``Observed`` writes the request lines)."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lrpilot": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "lrpilot": {
                "formatter": "lrpilot",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["lrpilot"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "lrpilot": {"handlers": ["lrpilot"], "level": level, "propagate": False},
        },
    }
