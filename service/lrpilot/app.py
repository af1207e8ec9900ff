"""The FastAPI application: routers, error handlers, and the decision path and store they share."""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from lrpilot import __version__
from lrpilot.api import (
    audit,
    auth,
    checkpoints,
    docs,
    errors,
    health,
    limits,
    metrics,
    policies,
    runs,
    session,
    simulate,
    tokens,
    ui,
)
from lrpilot.api.fast_path import ObservationFastPath
from lrpilot.api.metrics import Metrics
from lrpilot.api.observe import Observed
from lrpilot.api.responses import StrictJSONResponse
from lrpilot.domain.aggregated import Posted
from lrpilot.domain.commit import GroupCommit, Inline, Threaded, ignore_size
from lrpilot.domain.decisions import Decisions, decide_batch, prepare_now
from lrpilot.domain.errors import Busy, RunBusy, Unavailable
from lrpilot.domain.logs import Audit
from lrpilot.settings import Settings, safe_url
from lrpilot.store.runs import Store

SWITCH_INTERVAL_S = 0.0005
log = logging.getLogger("lrpilot")


def group_commit(
    store: Store, batched: Callable[[int], None] = ignore_size
) -> GroupCommit[Posted, str]:
    """How observations are committed, by the database's nature: a database whose statements
    never wait on the network (SQLite) prepares batches on the event loop and commits them on a
    thread; one behind a network round trip (PostgreSQL) runs them on a writer thread.
    ``batched`` is told each batch's size."""
    if store.is_sqlite:
        return Inline(functools.partial(prepare_now, store), busy=Busy, batched=batched)
    return Threaded(
        functools.partial(decide_batch, store), busy=RunBusy, name="decisions-", batched=batched
    )


def _tokens_exist(authenticator: auth.Authenticator) -> bool:
    """Whether tokens exist, at startup; True when the database cannot say (then each request
    finds out, and nothing claims open mode)."""
    try:
        return authenticator.tokens_exist()
    except Unavailable:
        return True


# FastAPI 0.16x asks OpenTelemetry's global providers on every request (an environment read
# each) even when none is configured: a quarter of a request's framework time, measured in
# bench/bench_waiters.py. lrpilot's operators scrape its own metrics; older FastAPIs have no
# such argument.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(settings: Settings | None = None, fast_path: bool = True) -> FastAPI:
    """The app on an already migrated database (``lrpilot serve`` migrates first).

    ``fast_path=False`` serves observations through the FastAPI route alone (the tests compare
    the two: they must answer the same bytes).
    """
    settings = settings or Settings.from_env()
    store = Store(settings)
    measured = Metrics()
    decisions = Decisions(store, settings, group_commit(store, measured.batch))
    auditor = Audit(store, settings)
    authenticator = auth.Authenticator(store, open_to_all=settings.insecure_no_auth)
    measured.read_from(store, decisions.waiters, auditor, authenticator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The ~100,000 objects of a started app (FastAPI, SQLAlchemy, pydantic, Alembic) never
        # die; each full garbage collection walked them all, a 50 ms stall of every request
        # (the p99 of the decision endpoint). Frozen, they are never walked again.
        gc.collect()
        gc.freeze()
        # The loop thread and the commit thread pass the GIL once a batch; with the default
        # 5 ms switch interval a finished commit could wait that long for a busy loop to let
        # go, and every request of its batch with it.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        auditor.clean_spool()  # what an import killed halfway left
        tokens = _tokens_exist(authenticator)
        _log_start(settings, tokens)
        if not tokens:
            log.warning(
                "no API token in the database: serving WITHOUT authentication (open mode, "
                "project default); the first `lrpilot token create` turns it on"
            )
        yield
        decisions.close()  # after uvicorn drained the requests: what is in flight commits
        store.close()
        log.info("lrpilot %s stopped", __version__, extra={"fields": {"version": __version__}})

    app = FastAPI(
        title="lrpilot",
        version=__version__,
        summary="Post validation metrics, get the next learning rate; every decision logged.",
        default_response_class=StrictJSONResponse,
        lifespan=lifespan,
        docs_url=None,  # docs.install serves them without a CDN
        redoc_url=None,
        **_NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.decisions = decisions
    app.state.audit = auditor
    app.state.auth = authenticator
    app.state.metrics = measured
    app.state.draining = False

    def drain() -> None:
        """SIGTERM (``lrpilot.server`` calls it on the loop): /readyz says draining, and every
        waiting request is answered now rather than when the wait would end."""
        app.state.draining = True
        decisions.waiters.drain()

    app.state.drain = drain
    errors.install(app)
    auth.install(app)
    session.install(app)  # the dashboard's login: /ui/login, /ui/logout, /ui/whoami
    for module in (
        runs,
        checkpoints,
        audit,
        simulate,
        policies,
        tokens,
    ):  # each route checks its caller
        app.include_router(module.router, responses=auth.REFUSALS)
    app.include_router(health.router)
    docs.install(app)
    ui.install(app)  # the dashboard, /ui/; / leads there
    app.include_router(metrics.router)
    # the import streams its body to disk, under its own limit
    streamed = {"/v1/runs/import": (settings.max_import_bytes, "LRPILOT_MAX_IMPORT_BYTES")}
    limits.install_json_check(app, streamed)  # before the fast path: inside it, by the routes
    if fast_path:
        app.add_middleware(ObservationFastPath, decisions=decisions, auth=authenticator)
    limits.install(app, settings.max_body_bytes, streamed)
    # added last, the outermost: it sees every request, refused or not, and times all of it
    app.add_middleware(
        Observed, metrics=measured, log_requests=settings.access_log, routes=app.router.routes
    )
    return app


def _log_start(settings: Settings, tokens: bool) -> None:
    """The startup line: what an operator checks first (never the database's password)."""
    fields: dict[str, Any] = {
        "version": __version__,
        "database": safe_url(settings.database_url),
        "auth": "tokens" if tokens else "open",
        "db_timeout_s": settings.db_timeout_s,
        "max_body_bytes": settings.max_body_bytes,
        "max_import_bytes": settings.max_import_bytes,
        "max_world_size": settings.max_world_size,
        "max_connections": settings.max_connections,
        "metrics_access": settings.metrics_access,
    }
    log.info(
        "lrpilot %s starting: database %s, auth %s, limits %s",
        __version__,
        fields["database"],
        fields["auth"],
        ", ".join(f"{k}={v}" for k, v in fields.items() if k.startswith("max_") or "_s" in k),
        extra={"fields": fields},
    )
