"""Liveness and readiness probes: both answer promptly whatever the database does.

``/healthz`` touches nothing but the event loop, so it never waits behind writes. ``/readyz``
asks the database on a thread of its own (never the request thread pool, which slow requests
may have filled) and gives up after ``Settings.ready_timeout_s``; once the process is shutting
down (SIGTERM) it answers 503 "draining" without asking, so that a load balancer stops sending.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from lrpilot import __version__
from lrpilot.api.deps import SettingsDep, StoreDep
from lrpilot.api.responses import RETRY_AFTER, StrictJSONResponse
from lrpilot.domain.errors import Unavailable

router = APIRouter(tags=["health"])

# Probes get threads of their own: a pool full of requests waiting for the database must not
# make the probe wait for a thread.
_probe_threads = anyio.CapacityLimiter(4)


class Probe(BaseModel):
    status: Literal["ok", "ready", "unavailable", "draining"]
    detail: str | None = None


class Health(Probe):
    version: str = Field(description="the service's version (lrpilot.__version__)")


@router.get("/healthz", response_model=Health)
async def healthz() -> Response:
    return StrictJSONResponse({"status": "ok", "version": __version__})


@router.get(
    "/readyz",
    response_model=Probe,
    responses={
        503: {
            "model": Probe,
            "description": "the database is not answering, or the service is shutting down "
            '("draining"); ask again later',
            "headers": RETRY_AFTER,
        }
    },
)
async def readyz(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    if request.app.state.draining:
        detail = "the service is shutting down; another replica, or this one restarted, answers"
        return _unavailable(detail, "draining")
    try:
        async with asyncio.timeout(settings.ready_timeout_s):
            await anyio.to_thread.run_sync(store.ping, limiter=_probe_threads)
    except TimeoutError:
        detail = f"the database did not answer within {settings.ready_timeout_s} s"
        return _unavailable(detail)
    except Unavailable as exc:
        return _unavailable(exc.message)
    return StrictJSONResponse({"status": "ready"})


def _unavailable(detail: str, status: str = "unavailable") -> Response:
    # like every other 503 of the service: it says when to ask again
    body = {"status": status, "detail": detail}
    return StrictJSONResponse(body, 503, headers={"Retry-After": "1"})
