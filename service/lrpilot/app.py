"""The FastAPI application: routers, error handlers and the store they share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lrpilot import __version__
from lrpilot.api import errors, health, policies, runs
from lrpilot.api.responses import StrictJSONResponse
from lrpilot.settings import Settings
from lrpilot.store.runs import Store


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app on an already migrated database (``lrpilot serve`` migrates first)."""
    settings = settings or Settings.from_env()
    store = Store(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="lrpilot",
        version=__version__,
        summary="Post validation metrics, get the next learning rate; every decision logged.",
        default_response_class=StrictJSONResponse,
        lifespan=lifespan,
    )
    app.state.store = store
    errors.install(app)
    for module in (runs, policies, health):
        app.include_router(module.router)
    return app
