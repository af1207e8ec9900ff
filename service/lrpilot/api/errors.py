"""Every refusal as a 4xx with a precise ``detail``; nothing below the api knows about HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from lrpilot.api.responses import StrictJSONResponse
from lrpilot.canonical import to_strict
from lrpilot.policies import PolicyError
from lrpilot.store.errors import Conflict, RunNotFound, StoreError, Unavailable

_STATUS: dict[type[StoreError], int] = {RunNotFound: 404, Conflict: 409, Unavailable: 503}


def _validation_item(err: Any) -> dict[str, Any]:
    item = {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
    value = err.get("input")
    # Echo the offending input only when it is a scalar: bodies can be large or binary.
    if isinstance(value, str | int | float | bool) or value is None:
        item["input"] = to_strict(value)
    return item


def policy_error_detail(exc: PolicyError, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *loc], "msg": msg, "type": "policy_params"} for loc, msg in exc.errors
    ]


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

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> StrictJSONResponse:
        headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
        return StrictJSONResponse({"detail": exc.message}, _STATUS[type(exc)], headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> StrictJSONResponse:
        return StrictJSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
