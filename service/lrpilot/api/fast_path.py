"""The observation route's fast path: the same answer as the FastAPI route, for less work.

``POST /v1/runs/{run_id}/observations`` is the request every rank of every job sends at every
evaluation. Routing, dependency solving and body handling in FastAPI cost about as much as the
decision itself, so a well-formed observation is answered here, before FastAPI: the same
model (``ObservationIn``, parsed by pydantic straight from the bytes), the same decision path,
the same error answers (``errors.store_error_response``). Anything else, and anything this
path would refuse, goes on to the FastAPI route, which alone writes validation errors: so
there is one validation model and one way to fail, and the OpenAPI document describes both
paths. tests/api/test_fast_path.py checks that both give the same bytes.
"""

from __future__ import annotations

import re

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrpilot.api.auth import Authenticator, Peer, Refused
from lrpilot.api.errors import duplicate_key_response, first_duplicate, store_error_response
from lrpilot.api.limits import replayed
from lrpilot.api.models import ObservationIn
from lrpilot.api.observe import info_of, noted
from lrpilot.api.responses import decision_json
from lrpilot.domain.decisions import Decisions
from lrpilot.domain.errors import DomainError
from lrpilot.spec import RUN_ID_PATTERN

ROUTE = "/v1/runs/{run_id}/observations"  # the route's path template (the metrics' label)
_PATH = re.compile(rf"^/v1/runs/({RUN_ID_PATTERN.strip('^$')})/observations$")


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class ObservationFastPath:
    def __init__(self, app: ASGIApp, decisions: Decisions, auth: Authenticator) -> None:
        self.app = app
        self.decisions = decisions
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or (match := _PATH.match(scope["path"])) is None
            or not _is_json(scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        info = info_of(scope)  # what the request's log line says (api/observe.py)
        if info is not None:
            info.route, info.run_id = ROUTE, match.group(1)
        try:  # the route's own check (api/auth.py), before the body is read
            raw = scope["headers"]
            token = _header(raw, b"authorization")
            address = scope["client"][0] if scope.get("client") else None
            peer = Peer(address, _header(raw, b"host"))
            if token is None and (_header(raw, b"cookie") or _header(raw, b"origin")):
                # the dashboard's cookie, or a page's request: the cross-site rules
                headers = Headers(scope=scope)
                token, _ = self.auth.presented(headers, "POST")
                caller = await self.auth.authorize(token, "writer", peer)
                self.auth.refuse_cross_site(caller, headers, "POST")
            else:
                caller = await self.auth.authorize(token, "writer", peer)
        except Refused as exc:
            await exc.response()(scope, receive, send)
            return
        except DomainError as exc:
            await store_error_response(exc)(scope, receive, send)
            return
        noted(scope, caller.name, caller.project)
        chunks = []
        while True:  # the body limit was enforced outside (limits.HttpLimits)
            message = await receive()
            if message["type"] != "http.request":  # the client left: FastAPI's business
                await self.app(scope, replayed([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            observation = ObservationIn.model_validate_json(body)
        except ValidationError:  # the route says precisely what is wrong
            whole: Message = {"type": "http.request", "body": body, "more_body": False}
            await self.app(scope, replayed([whole], receive), send)
            return
        # A key given twice is refused as the route refuses it (limits.DuplicateKeys). Every
        # key is followed by one colon, and there are at least as many keys as the model got
        # distinct ones: as many colons as that proves no key repeats, without a second parse.
        if body.count(b":") != _keys(observation) and (key := first_duplicate(body)):
            await duplicate_key_response(key)(scope, receive, send)
            return
        try:
            posted = observation.posted(
                caller.run(match.group(1)), caller.asker(observation.client)
            )
            decision = await self.decisions.observe(posted, observation.applied_values())
        except DomainError as exc:
            await store_error_response(exc)(scope, receive, send)
            return
        await decision_json(decision, _header(scope["headers"], b"accept-encoding"))(
            scope, receive, send
        )


def _keys(observation: ObservationIn) -> int:
    """The distinct keys of the body ``observation`` was parsed from (extra keys are refused)."""
    inner = sum(
        len(part.model_fields_set)
        for part in (observation.client, observation.applied)
        if part is not None
    )
    return len(observation.model_fields_set) + inner
