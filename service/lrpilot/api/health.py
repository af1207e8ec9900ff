"""Liveness and readiness probes: both answer promptly whatever the database does.

``/healthz`` touches nothing but the event loop, so it never waits behind writes. ``/readyz``
asks the database on a thread of its own (never the request thread pool, which slow requests
may have filled) and gives up after ``Settings.ready_timeout_s``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import anyio
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from lrpilot.api.deps import SettingsDep, StoreDep
from lrpilot.api.responses import RETRY_AFTER, StrictJSONResponse
from lrpilot.domain.errors import Unavailable

router = APIRouter(tags=["health"])

# Probes get threads of their own: a pool full of requests waiting for the database must not
# make the probe wait for a thread.
_probe_threads = anyio.CapacityLimiter(4)


class Probe(BaseModel):
    status: Literal["ok", "ready", "unavailable"]
    detail: str | None = None


@router.get("/healthz", response_model=Probe)
async def healthz() -> Response:
    return StrictJSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Probe,
    responses={
        503: {
            "model": Probe,
            "description": "the database is not answering; ask again later",
            "headers": RETRY_AFTER,
        }
    },
)
async def readyz(store: StoreDep, settings: SettingsDep) -> Response:
    try:
        async with asyncio.timeout(settings.ready_timeout_s):
            await anyio.to_thread.run_sync(store.ping, limiter=_probe_threads)
    except TimeoutError:
        detail = f"the database did not answer within {settings.ready_timeout_s} s"
        return _unavailable(detail)
    except Unavailable as exc:
        return _unavailable(exc.message)
    return StrictJSONResponse({"status": "ready"})


def _unavailable(detail: str) -> Response:
    # like every other 503 of the service: it says when to ask again
    body = {"status": "unavailable", "detail": detail}
    return StrictJSONResponse(body, 503, headers={"Retry-After": "1"})
