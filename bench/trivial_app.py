"""The reference for bench_decisions.py: the cost of HTTP + FastAPI + pydantic + uvicorn alone.

A bench-only app, never a route of the service. ``POST /echo`` takes a body shaped like an
observation, validates it with a pydantic model and answers a small JSON object: everything a
decision request pays for except the store and the policy. ``/echo`` is an ``async def``
(runs on the event loop); ``/echo-sync`` is the same as a plain ``def``, which FastAPI runs in
its thread pool, as it runs the service's routes: the difference between the two is the
thread-pool hop. ``GET /hold`` waits until ``POST /release``: bench_waiters' reference for
thousands of waiting requests (the HTTP stack's cost of their arrival and their answers).

    python -m uvicorn --app-dir bench trivial_app:app --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, StrictInt


class Observation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: StrictInt
    value: float


app = FastAPI(title="lrpilot bench: trivial reference")


@app.get("/healthz")
@app.get("/readyz")  # what tests.harness.LiveServer waits for
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/echo")
async def echo(body: Observation) -> dict[str, Any]:
    return {"step": body.step, "value": body.value, "action": "hold"}


@app.post("/echo-sync")
def echo_sync(body: Observation) -> dict[str, Any]:
    return {"step": body.step, "value": body.value, "action": "hold"}


_released = asyncio.Event()


@app.get("/hold")
async def hold() -> dict[str, bool]:
    await _released.wait()
    return {"released": True}


@app.post("/release")
async def release() -> dict[str, bool]:
    _released.set()
    return {"released": True}
