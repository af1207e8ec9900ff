"""The dashboard's login: a token entered once, kept in a cookie the page's scripts cannot read.

``POST /ui/login`` (a form's field ``token``, or JSON ``{"token"}``) checks the token exactly as
a request's bearer token is checked (``Authenticator.authorize``: the one check) and sets the
cookie ``lrpilot_token``: HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), Path=/, and Secure when the request came over https. Every /v1 route then accepts
the cookie as well as ``Authorization: Bearer`` (api/auth.py, which also holds the rules
against cross-site requests). ``POST /ui/logout`` clears it; ``GET /ui/whoami`` says who the
page acts as (what it shows in its corner), or that the service runs open (no login needed).

These are plain routes, as the docs pages are: not API operations (no client calls them), in no
OpenAPI document; docs/http-api.md and docs/security.md describe them.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from lrpilot.api.auth import (
    COOKIE,
    CROSS_SITE,
    MAX_TOKEN_CHARS,
    Authenticator,
    Caller,
    Peer,
    Refused,
    same_origin,
)
from lrpilot.api.responses import StrictJSONResponse

LOGIN_PATH = "/ui/login"
LOGOUT_PATH = "/ui/logout"
WHOAMI_PATH = "/ui/whoami"
HOME_PATH = "/ui/"  # where a form's login leads
MAX_LOGIN_BYTES = 4096  # a token and a field name; more is no login


def _refused(status: int, detail: str) -> Response:
    return StrictJSONResponse({"detail": detail}, status)


async def _token_of(request: Request) -> tuple[str | None, bool]:
    """The token a login request gives, and whether it came from a form (else JSON)."""
    body = await request.body()
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if len(body) > MAX_LOGIN_BYTES:
        return None, kind != "application/json"
    if kind == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None, False
        token = doc.get("token") if isinstance(doc, dict) else None
        return (token if isinstance(token, str) else None), False
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8)
    except (ValueError, UnicodeDecodeError):
        return None, True
    found = fields.get("token")
    return (found[0] if found else None), True


def _caller_doc(caller: Caller) -> dict[str, object]:
    return {
        "token": caller.name,
        "project": caller.project,
        "role": caller.role,
        "open_mode": caller.name is None,
    }


def install(app: FastAPI) -> None:
    """``/ui/login``, ``/ui/logout`` and ``/ui/whoami``."""

    def auth_of(request: Request) -> Authenticator:
        authenticator: Authenticator = request.app.state.auth
        return authenticator

    async def login(request: Request) -> Response:
        # A login forged by another site would sign the victim in as the attacker: the same
        # origin rule as every unsafe request (the cookie is not there yet to ask more of).
        if not same_origin(request.headers):
            return _refused(403, CROSS_SITE)
        token, form = await _token_of(request)
        if not token or len(token) > MAX_TOKEN_CHARS or token != token.strip():
            return _refused(
                401, "no token given: send the form field 'token' or the JSON {\"token\": ...}"
            )
        try:
            caller = await auth_of(request).authorize(f"Bearer {token}", "reader", Peer.of(request))
        except Refused as exc:
            return _refused(exc.status, exc.detail)
        if form:
            root = request.scope.get("root_path", "")
            answer: Response = RedirectResponse(f"{root}{HOME_PATH}", status_code=303)
        else:
            answer = Response(status_code=204)
        if caller.name is not None:  # open mode needs no cookie: there is no token to keep
            answer.set_cookie(
                COOKIE,
                token,
                path="/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return answer

    async def logout(request: Request) -> Response:
        if not same_origin(request.headers):
            return _refused(403, CROSS_SITE)
        answer = Response(status_code=204)
        answer.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        return answer

    async def whoami(request: Request) -> Response:
        auth = auth_of(request)
        try:
            authorization, _ = auth.presented(request.headers, request.method)
            caller = await auth.authorize(authorization, "reader", Peer.of(request))
        except Refused as exc:
            return exc.response()
        return StrictJSONResponse(_caller_doc(caller), headers={"Cache-Control": "no-store"})

    app.add_route(LOGIN_PATH, login, methods=["POST"], include_in_schema=False)
    app.add_route(LOGOUT_PATH, logout, methods=["POST"], include_in_schema=False)
    app.add_route(WHOAMI_PATH, whoami, methods=["GET"], include_in_schema=False)
