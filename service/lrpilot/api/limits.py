"""The HTTP edge, before routing: a request body size limit, and HEAD on every GET route.

A pure ASGI middleware, because it sits on the hot path (every observation goes through it):
a request that declares its length costs one scan of the header list; only a body sent
without Content-Length (chunked) is counted as it arrives, and it is never read whole to be
measured. What the middleware answers is written into the OpenAPI document by ``install``, so
the document covers every route, whoever adds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrpilot.api.errors import duplicate_key_response, first_duplicate
from lrpilot.api.models import Message as MessageOut


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit. FastAPI lets an
    HTTPException from reading the body through (any other error becomes a 400), so the
    app's HTTPException handler answers it like every other refusal."""

    def __init__(self, limit: Limit) -> None:
        super().__init__(413, _too_large(limit), headers={"Connection": "close"})


# A body limit and the setting that sets it (named in the 413, so that whoever runs the
# service knows which one to raise).
Limit = tuple[int, str]
BODY_SETTING = "LRPILOT_MAX_BODY_BYTES"


def _too_large(limit: Limit, declared: int | None = None) -> str:
    size = f"of {declared} bytes " if declared is not None else ""
    return (
        f"the request body {size}is larger than the limit of {limit[0]} bytes "
        f"(the server's {limit[1]})"
    )


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server refuses it before us; count the body if not
                return None
    return None


class HttpLimits:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, per_path: dict[str, Limit] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes: Limit = (max_body_bytes, BODY_SETTING)
        self.per_path = per_path or {}  # routes that take more (an import takes a whole run)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_body_bytes)
        declared = _content_length(scope["headers"])
        if declared is not None and declared > limit[0]:
            await _send_413(send, _too_large(limit, declared))
            return
        if scope["method"] == "HEAD":
            # RFC 9110: a server that answers GET answers HEAD, with GET's status and headers.
            # The server still sees HEAD in its own scope and frames the response as such.
            scope = {**scope, "method": "GET"}
            send = _headers_only(send)
        if declared is not None:  # the server delivers exactly that many bytes, no more
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit[0]:
                raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside FastAPI's handlers: answer it here
            if started:
                raise
            await _send_413(send, str(exc.detail))


def is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """The request says its body is JSON, as FastAPI reads it: application/json or +json."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return False


class DuplicateKeys:
    """A JSON body that names a key twice in one object is refused (422 naming the key)
    before a route parses it, keeping the last silently. Inside the observation fast path,
    which checks the bodies it answers itself (``api/fast_path.py``)."""

    def __init__(self, app: ASGIApp, streamed: frozenset[str]) -> None:
        self.app = app
        self.streamed = streamed  # routes that stream their body (an import): never held whole

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _WITH_BODY
            or scope["path"] in self.streamed
        ):
            await self.app(scope, receive, send)
            return
        if not is_json(scope["headers"]):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:  # bounded: HttpLimits, outside, counts what arrives
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if messages[-1]["type"] != "http.request":  # the client left: the route's business
            await self.app(scope, replayed(messages, receive), send)
            return
        body = b"".join(m.get("body", b"") for m in messages)
        key = first_duplicate(body)
        if key is not None:
            await duplicate_key_response(key)(scope, receive, send)
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replayed([whole], receive), send)


_WITH_BODY = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def replayed(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back what was already read."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


def _headers_only(send: Send) -> Send:
    async def send_headers_only(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_headers_only


async def _send_413(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body is left unread: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large_doc(setting: str) -> dict[str, Any]:
    return {
        "description": f"the request body is larger than the server's limit ({setting})",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}},
    }


def _head_operation(get: dict[str, Any]) -> dict[str, Any]:
    head = {**get, "summary": f"{get.get('summary', '')} (headers only)".strip()}
    if "operationId" in get:
        head["operationId"] = f"head_{get['operationId']}"
    head["responses"] = {
        code: {k: v for k, v in response.items() if k != "content"}
        for code, response in get["responses"].items()
    }
    return head


def _document(app: FastAPI, per_path: dict[str, Limit]) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # FastAPI caches it as app.openapi_schema: this runs once
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("Message", MessageOut.model_json_schema())
        for path, item in schema.get("paths", {}).items():
            setting = per_path[path][1] if path in per_path else BODY_SETTING
            for operation in item.values():
                operation["responses"].setdefault("413", _too_large_doc(setting))
            if "get" in item and "head" not in item:
                item["head"] = _head_operation(item["get"])
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_json_check(app: FastAPI, streamed: Iterable[str]) -> None:
    """The duplicate-key check in front of the routes (added before the fast path: inside it);
    ``streamed``: the routes that stream their body to disk, which it leaves alone."""
    app.add_middleware(DuplicateKeys, streamed=frozenset(streamed))


def install(app: FastAPI, max_body_bytes: int, per_path: dict[str, Limit] | None = None) -> None:
    """The limits as middleware, and what they answer in the OpenAPI document. ``per_path``:
    the routes with their own limit, and the setting that sets it."""
    app.add_middleware(HttpLimits, max_body_bytes=max_body_bytes, per_path=per_path)
    _document(app, per_path or {})
