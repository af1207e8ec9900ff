"""Every refusal as a 4xx with a precise ``detail``; nothing below the api knows about HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from lrpilot.api.responses import StrictJSONResponse
from lrpilot.canonical import to_strict
from lrpilot.domain.errors import Conflict, DomainError, Invalid, RunNotFound, Unavailable
from lrpilot.policies import PolicyError
from lrpilot.spec import RUN_ID_PATTERN, RUN_ID_RULE, is_storable

_STATUS: dict[type[DomainError], int] = {
    RunNotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unavailable: 503,
}

# An error answer stays small whatever the request was: a 100 MB string is not sent back,
# nor one item for each of 100,000 wrong values.
MAX_ERROR_BYTES = 16 * 1024  # the largest error answer (docs/limits.md)
MAX_ECHO = 200  # characters of an input echoed in a 422
MAX_LOC = 128  # characters of one loc element (a label key, a params key)
MAX_LOC_DEPTH = 16  # elements of one loc
MAX_MSG = 1000  # characters of a message (some messages quote the input)
# A 422 lists its items while they fit in this many bytes; the rest are counted in one last
# item. An item larger than _ITEM_BYTES (a control character is written as 6 bytes, so a
# message of MAX_MSG characters can be 6 kB) is cut further, to at most ~6.2 kB: the first item
# always fits, and the answer, with its last item and envelope, stays under MAX_ERROR_BYTES.
_ITEMS_BYTES = MAX_ERROR_BYTES - 4 * 1024
_ITEM_BYTES = 4 * 1024


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


def _size(item: Any) -> int:
    return len(json.dumps(to_strict(item), ensure_ascii=False).encode("utf-8"))


def bounded(items: Iterable[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """The first of ``total`` 422 items while they fit in the answer's bound, then one item
    that counts the rest ("... and 1,234 more"). ``items`` is consumed lazily: the cut ones
    are never built."""
    kept: list[dict[str, Any]] = []
    used = 0
    for item in items:
        size = _size(item)
        if size > _ITEM_BYTES:
            item = _shrunk(item)
            size = _size(item)
        used += size
        if kept and used > _ITEMS_BYTES:
            rest = total - len(kept)
            loc = item["loc"][:1] if item.get("loc") else []
            msg = f"... and {rest:,} more (an error answer lists what fits in {MAX_ERROR_BYTES:,} "
            msg += "bytes)"
            kept.append({"loc": loc, "msg": msg, "type": "too_many_errors"})
            break
        kept.append(item)
    return kept


def _shrunk(item: dict[str, Any]) -> dict[str, Any]:
    loc = [x if isinstance(x, int) else printable(x, 32) for x in item["loc"]]
    return {"loc": loc, "msg": printable(item["msg"], 500), "type": item["type"]}


def validation_item(err: Any) -> dict[str, Any]:
    """One of pydantic's errors as a 422 item: loc, msg and type, each cut to size, and the
    input when it is small (a number, a boolean, null or a short string)."""
    loc = [
        x if isinstance(x, int) else printable(str(x), MAX_LOC)
        for x in tuple(err.get("loc", ()))[:MAX_LOC_DEPTH]
    ]
    msg = str(err.get("msg", ""))
    ctx = err.get("ctx")
    if isinstance(ctx, dict) and ctx.get("pattern") == RUN_ID_PATTERN:
        msg = f"a run id must be {RUN_ID_RULE}"  # the pattern itself reads badly
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


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def first_duplicate(body: bytes) -> str | None:
    """A key that some object of the JSON ``body`` names twice, or None. Every JSON parser
    this service uses keeps the last silently, so that ``{"value": 0.1, "value": 9}`` would
    be decided as 9 while a proxy or a log read it as 0.1. A body that is not JSON is None
    here: the route says what is wrong with it."""
    try:
        _DECODER.decode(body.decode("utf-8"))
    except _Duplicate as duplicate:
        return duplicate.key
    except (ValueError, RecursionError):
        return None
    return None


def duplicate_key_response(key: str) -> StrictJSONResponse:
    """The 422 of a body with a duplicated key (the same bytes on every route)."""
    item = {
        "loc": ["body"],
        "msg": f"the key {printable(repr(key), MAX_LOC)} appears twice in one object of the "
        "body: give each key once",
        "type": "json_duplicate_key",
        "input": printable(key, MAX_ECHO),
    }
    return StrictJSONResponse({"detail": [item]}, 422)


def policy_error_detail(exc: PolicyError, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    # A policy's message may quote the input (e.g. an unknown flavor): cap it like any other.
    items = (
        validation_item({"loc": (*prefix, *loc), "msg": msg, "type": "policy_params"})
        for loc, msg in exc.errors
    )
    return bounded(items, len(exc.errors))


def store_error_response(exc: DomainError) -> StrictJSONResponse:
    """What the store refused, as its HTTP answer (503s say when to come back)."""
    headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    if isinstance(exc, Invalid):  # a 422's detail is a list of items, as validation's
        item = {"loc": exc.loc, "msg": printable(exc.message, MAX_MSG), "type": exc.kind}
        return StrictJSONResponse({"detail": [item]}, status)
    return StrictJSONResponse({"detail": printable(exc.message, MAX_MSG)}, status, headers=headers)


def _bounded_detail(detail: Any) -> Any:
    """An HTTPException's detail, cut as any other: a string to MAX_MSG, anything else kept
    only while it is small."""
    if isinstance(detail, str):
        return printable(detail, MAX_MSG)
    if _size(detail) <= MAX_MSG:
        return detail
    return printable(json.dumps(to_strict(detail), ensure_ascii=False), MAX_MSG)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> StrictJSONResponse:
        errors = exc.errors()
        detail = bounded((validation_item(e) for e in errors), len(errors))
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
        detail = _bounded_detail(exc.detail)
        return StrictJSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)
