"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from lrpilot.api.deps import StoreDep
from lrpilot.api.responses import StrictJSONResponse
from lrpilot.store.errors import Unavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Response:
    return StrictJSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(store: StoreDep) -> Response:
    try:
        store.ping()
    except Unavailable as exc:
        return StrictJSONResponse({"status": "unavailable", "detail": exc.message}, 503)
    return StrictJSONResponse({"status": "ready"})
