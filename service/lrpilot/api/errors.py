"""Every refusal as a 4xx with a precise ``detail``; nothing below the api knows about HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from lrpilot.api.responses import StrictJSONResponse
from lrpilot.canonical import to_strict
from lrpilot.domain.errors import Conflict, DomainError, Invalid, RunNotFound, Unavailable
from lrpilot.policies import PolicyError
from lrpilot.spec import is_storable

_STATUS: dict[type[DomainError], int] = {
    RunNotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unavailable: 503,
}

# An error answer stays small whatever the request was: a 100 MB string is not sent back.
MAX_ECHO = 200  # characters of an input echoed in a 422
MAX_LOC = 128  # characters of one loc element (a label key, a params key)
MAX_MSG = 1000  # characters of a message (some messages quote the input)


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters and encodable as UTF-8: a lone surrogate (which
    no JSON encoder can write as UTF-8) is written as its escape, backslash included."""
    if len(text) > limit:
        text = text[:limit] + "…"
    if not is_storable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _echo(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, bool | float):
        return True, to_strict(value)
    if isinstance(value, int):
        return value.bit_length() <= 64, value
    if isinstance(value, str):
        return len(value) <= MAX_ECHO, printable(value, MAX_ECHO)
    return False, None  # objects and arrays: bodies can be large


def _validation_item(err: Any) -> dict[str, Any]:
    loc = [x if isinstance(x, int) else printable(str(x), MAX_LOC) for x in err.get("loc", ())]
    msg = str(err.get("msg", ""))
    ctx = err.get("ctx")
    if err.get("type") == "json_invalid" and isinstance(ctx, dict) and "error" in ctx:
        msg = f"{msg}: {ctx['error']}"  # which JSON error, not only where
    item = {"loc": loc, "msg": printable(msg, MAX_MSG), "type": str(err.get("type"))}
    echo, value = _echo(err.get("input"))
    if echo:
        item["input"] = value
    return item


def _undecodable_body(exc: HTTPException) -> list[dict[str, Any]]:
    # FastAPI answers 400 when json.loads raises something other than a JSONDecodeError: the
    # bytes are not UTF-8, the nesting is too deep, an integer has too many digits. That is
    # a body this API refuses like any other, so it is a 422 naming the body.
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        why = "the body is not UTF-8"
    elif isinstance(cause, RecursionError):
        why = "the body's JSON is nested too deeply"
    elif cause is not None:
        why = f"the body's JSON cannot be read: {cause}"
    else:
        why = f"the body cannot be read: {exc.detail}"
    return [{"loc": ["body"], "msg": printable(why, MAX_MSG), "type": "json_invalid"}]


def policy_error_detail(exc: PolicyError, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    # A policy's message may quote the input (e.g. an unknown flavor): cap it like any other.
    return [
        _validation_item({"loc": (*prefix, *loc), "msg": msg, "type": "policy_params"})
        for loc, msg in exc.errors
    ]


def store_error_response(exc: DomainError) -> StrictJSONResponse:
    """What the store refused, as its HTTP answer (503s say when to come back)."""
    headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    if isinstance(exc, Invalid):  # a 422's detail is a list of items, as validation's
        item = {"loc": exc.loc, "msg": printable(exc.message, MAX_MSG), "type": exc.kind}
        return StrictJSONResponse({"detail": [item]}, status)
    return StrictJSONResponse({"detail": exc.message}, status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> StrictJSONResponse:
        detail = [_validation_item(e) for e in exc.errors()]
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and any(d["loc"] == ["body"] for d in detail):
            # FastAPI reads a body as JSON only when the request says it is (curl -d does not)
            msg = "send the body as JSON with Content-Type: application/json"
            detail.insert(0, {"loc": ["header", "content-type"], "msg": msg, "type": "json"})
        return StrictJSONResponse({"detail": detail}, 422)

    @app.exception_handler(PolicyError)
    async def _policy(_: Request, exc: PolicyError) -> StrictJSONResponse:
        return StrictJSONResponse({"detail": policy_error_detail(exc, ("body", "policy"))}, 422)

    @app.exception_handler(DomainError)
    async def _store(_: Request, exc: DomainError) -> StrictJSONResponse:
        return store_error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> StrictJSONResponse:
        if exc.status_code == 400:
            return StrictJSONResponse({"detail": _undecodable_body(exc)}, 422)
        detail = printable(exc.detail, MAX_MSG) if isinstance(exc.detail, str) else exc.detail
        return StrictJSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)
