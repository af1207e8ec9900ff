"""Every route bounded: with PostgreSQL frozen (SIGSTOP of the postmaster and its backends: the
kernel still accepts connections and acknowledges bytes, nobody answers, so no server-side
timeout ever fires) or SQLite's write lock held outside the service, every operation of the
OpenAPI document answers within LRPILOT_DB_TIMEOUT_S and a margin: 503 with Retry-After when it
needs the database, its usual answer when it does not (or, on SQLite, when it only reads: WAL
readers never wait for the writer). Then the database comes back, every route answers as it did
before, and nothing acknowledged was lost.

The table of routes is checked against the OpenAPI document: a new route fails here until it
has a row, so it cannot escape the bound unnoticed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lrpilot.app import create_app
from lrpilot.settings import Settings
from lrpilot.store.db import upgrade
from tests.harness import DatabaseLock, LiveServer, ThrowawayPostgres
from tests.helpers import run_spec, strict_json

DB_TIMEOUT_S = 1.0
# Generous, so that a loaded machine never fails it: only a wait for the whole freeze (the
# test holds it far longer: until every request has answered) or a retry loop breaks it. A
# frozen server's answers take 5 to 6 s here on an idle machine (a new connection's handshake
# meets the freeze; libpq takes no connect_timeout below 2 s), 7 s under load.
BOUND_S = DB_TIMEOUT_S + 9.0
HEADERS = {"Content-Type": "application/json"}

ELASTIC = {**run_spec(), "scaling": {"rule": "linear", "by": "world_size", "base": 8}}


@dataclass(frozen=True, eq=False)  # hashed by identity: a row is a key
class Route:
    method: str
    template: str  # as the OpenAPI document writes it
    path: str  # what the test asks
    body: Any = None  # JSON, or "bundle": the export of run "imp", taken before the freeze
    # what it needs of the database: "read", "write", "none", or "auth": the token lookup alone,
    # which a replica remembers for a second (so: its usual answer, or a 503)
    uses: str = "read"


# One row at least for every operation of the OpenAPI document (HEAD included: a GET's twin).
ROUTES = [
    Route("POST", "/v1/runs/{run_id}/observations", "/v1/runs/r/observations",
          {"step": 20, "value": 0.5}, "write"),
    Route("PUT", "/v1/runs/{run_id}", "/v1/runs/r", run_spec(), "write"),
    Route("GET", "/v1/runs/{run_id}", "/v1/runs/r"),
    Route("GET", "/v1/runs", "/v1/runs?label=team:a"),
    Route("GET", "/v1/runs/{run_id}/lr", "/v1/runs/r/lr?step=15"),
    # leader mode: a reader waiting for a step no one decided yet
    Route("GET", "/v1/runs/{run_id}/lr", "/v1/runs/r/lr?step=100000&wait=2"),
    Route("GET", "/v1/runs/{run_id}/lrs", "/v1/runs/r/lrs?from=0&count=50"),
    Route("GET", "/v1/runs/{run_id}/decisions", "/v1/runs/r/decisions?limit=5"),
    Route("POST", "/v1/runs/{run_id}/resize", "/v1/runs/s/resize",
          {"step": 100, "world_size": 16}, "write"),
    Route("GET", "/v1/runs/{run_id}/export", "/v1/runs/r/export"),
    Route("POST", "/v1/runs/{run_id}/checkpoints", "/v1/runs/r/checkpoints",
          {"step": 20, "ref": "ckpt-20"}, "write"),
    Route("GET", "/v1/runs/{run_id}/checkpoints", "/v1/runs/r/checkpoints"),
    Route("POST", "/v1/runs/import", "/v1/runs/import", "bundle", "write"),
    Route("POST", "/v1/runs/{run_id}/verify", "/v1/runs/r/verify", {}),
    Route("POST", "/v1/runs/{run_id}/rewind", "/v1/runs/w/rewind", {"to_step": 10}, "write"),
    Route("POST", "/v1/runs/{run_id}/applied", "/v1/runs/r/applied",
          {"rank": 0, "world_size": 2, "step": 15, "seq": 1, "lrs_hash": "0" * 64}, "write"),
    # an operator's decisions: refused on their merits (a plateau run), after locking the run
    Route("POST", "/v1/runs/{run_id}/cooldown", "/v1/runs/w/cooldown",
          {"at_step": 100, "steps": 10}, "write"),
    Route("POST", "/v1/runs/{run_id}/retime", "/v1/runs/w/retime",
          {"at_step": 100, "horizon": 200, "mode": "keep_lr"}, "write"),
    Route("GET", "/v1/runs/{run_id}/summary", "/v1/runs/r/summary"),
    Route("GET", "/v1/runs/{run_id}/plot", "/v1/runs/r/plot?points=50"),
    Route("GET", "/v1/runs", "/v1/runs?sort=activity&state=active"),
    Route("POST", "/v1/simulate", "/v1/simulate",
          {"policy": {"name": "plateau", "version": 1, "params": {"patience": 1}},
           "base_lrs": [0.1], "values": [1.0, 0.9, 0.95, 0.96]}, "auth"),
    Route("GET", "/v1/policies", "/v1/policies", uses="auth"),
    # tokens: a body refused (no token made: that would end open mode), a list, a revoke of none
    Route("POST", "/v1/tokens", "/v1/tokens", {"role": "reader", "expires_days": 0}, "auth"),
    Route("GET", "/v1/tokens", "/v1/tokens"),
    Route("POST", "/v1/tokens/{name}/revoke", "/v1/tokens/nosuch/revoke", {}),
    Route("GET", "/healthz", "/healthz", uses="none"),
    Route("GET", "/metrics", "/metrics", uses="none"),  # LRPILOT_METRICS_ACCESS=loopback
    Route("GET", "/readyz", "/readyz"),
]  # fmt: skip
ROUTES += [
    Route("HEAD", r.template, r.path, uses=r.uses)
    for r in ROUTES
    if r.method == "GET" and "wait=" not in r.path
]


def test_the_table_has_every_operation_of_the_openapi_document(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}"))
    operations = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head")
    }
    assert operations == {(r.method, r.template) for r in ROUTES}


Answer = tuple[Route, float, httpx.Response]


def ask(http: httpx.Client, route: Route, bundle: bytes) -> Answer:
    if route.body == "bundle":
        content = bundle
    elif route.body is None:
        content = None
    else:
        content = httpx.Request("POST", "/", json=route.body).content
    started = time.monotonic()
    r = http.request(route.method, route.path, content=content, headers=HEADERS)
    return route, time.monotonic() - started, r


# At most this many requests in flight: below the server's 40 worker threads (anyio's default),
# so that every request is served by a thread as it arrives and its wait is its own: a request
# queued behind 40 others held by the freeze would wait for theirs too (the routes outnumber
# the threads since issue 18).
AT_ONCE = 32


def ask_all(http: httpx.Client, bundle: bytes) -> list[Answer]:
    """Every route, AT_ONCE at a time: a freeze meets a service under load, not one request at a
    time."""
    with ThreadPoolExecutor(min(len(ROUTES), AT_ONCE)) as pool:
        return list(pool.map(lambda route: ask(http, route, bundle), ROUTES))


def prepare(http: httpx.Client) -> tuple[bytes, list[bytes], dict[Route, int]]:
    """Runs for every route (r: read and observed, w: rewound, s: resized, imp: exported and
    imported again), the acknowledged decisions of r, and each route's usual status."""
    for run_id, spec in (("r", run_spec(labels={"team": "a"})), ("w", run_spec()),
                         ("s", ELASTIC), ("imp", run_spec())):  # fmt: skip
        assert http.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
        for step in (10, 20):
            r = http.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": 0.5})
            assert r.status_code == 200, r.text
    # declared before: the route's usual answer is then the same each time (a retry's 200)
    r = http.post("/v1/runs/r/checkpoints", json={"step": 20, "ref": "ckpt-20"})
    assert r.status_code == 201, r.text
    export = http.get("/v1/runs/imp/export")
    assert export.status_code == 200
    acknowledged = [http.get("/v1/runs/r/decisions").content]
    usual = {route: response.status_code for route, _, response in ask_all(http, export.content)}
    assert all(code < 500 for code in usual.values()), usual
    return export.content, acknowledged, usual


def check_bounded(answers: list[Answer], unavailable: Callable[[Route], bool],
                  usual: dict[Route, int]) -> None:  # fmt: skip
    for route, waited, r in answers:
        where = f"{route.method} {route.path}"
        assert waited < BOUND_S, f"{where} waited {waited:.1f} s (bound {BOUND_S} s)"
        if route.uses == "auth" and r.status_code == usual[route]:
            continue  # the caller's token looked up less than a second before
        if unavailable(route):
            assert r.status_code == 503, (where, r.status_code, r.text)
            assert r.headers.get("retry-after"), (where, r.headers)
        else:
            assert r.status_code == usual[route], (where, r.status_code, r.text)


def check_recovered(http: httpx.Client, bundle: bytes, acknowledged: list[bytes],
                    usual: dict[Route, int]) -> None:  # fmt: skip
    for route, _, r in ask_all(http, bundle):
        assert r.status_code == usual[route], (route.method, route.path, r.status_code, r.text)
    # nothing acknowledged was lost: r's log holds what it held, and every log still verifies
    log = strict_json(http.get("/v1/runs/r/decisions").content)["items"]
    before = strict_json(acknowledged[0])["items"]
    assert log[: len(before)] == before
    for run_id in ("r", "w", "s", "imp"):
        report = http.post(f"/v1/runs/{run_id}/verify").json()
        assert report["ok"] is True, (run_id, report)


@pytest.fixture
def frozen_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this test's own: the shared one must never be frozen."""
    with ThrowawayPostgres() as pg:
        yield pg


def test_every_route_is_bounded_while_postgres_is_frozen(
    frozen_postgres: ThrowawayPostgres,
) -> None:
    pg = frozen_postgres
    env = {"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)}
    with (
        LiveServer(pg.url, env=env) as server,
        httpx.Client(base_url=server.url, timeout=BOUND_S * 4) as http,
    ):
        bundle, acknowledged, usual = prepare(http)
        pg.freeze()
        try:
            answers = ask_all(http, bundle)
            # once more: the pool's connections were abandoned, new ones meet the freeze too
            again = ask_all(http, bundle)
        finally:
            pg.thaw()
        check_bounded(answers, lambda route: route.uses != "none", usual)
        check_bounded(again, lambda route: route.uses != "none", usual)
        for _, _, r in answers:  # the 503 says what happened, not where the database is
            assert str(pg.port) not in r.text and "psycopg2" not in r.text, r.text
        check_recovered(http, bundle, acknowledged, usual)


def test_every_route_is_bounded_while_sqlite_is_locked_outside(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    env = {"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)}
    with (
        LiveServer(f"sqlite:///{path}", env=env) as server,
        httpx.Client(base_url=server.url, timeout=BOUND_S * 4) as http,
    ):
        bundle, acknowledged, usual = prepare(http)
        with DatabaseLock(path):
            answers = ask_all(http, bundle)
        # WAL: the reads go on beside the lock holder; every write waits its bound, then 503
        check_bounded(answers, lambda route: route.uses == "write", usual)
        check_recovered(http, bundle, acknowledged, usual)


def test_a_frozen_postgres_leaves_no_connection_behind(
    frozen_postgres: ThrowawayPostgres,
) -> None:
    """In process, with the store in view: the calls that met the freeze gave their connections
    up (none stays checked out, none comes back broken), the write that got its 503 left
    nothing, and once the server runs again the same calls work at the first try."""
    pg = frozen_postgres
    upgrade(pg.url)
    settings = Settings(database_url=pg.url, db_timeout_s=DB_TIMEOUT_S, pool_size=2)
    with TestClient(create_app(settings)) as api:
        pool = api.app.state.store.engine.pool
        assert api.put("/v1/runs/before", json=run_spec()).status_code == 201
        with ThreadPoolExecutor(6) as threads:  # more callers than the pool holds
            pg.freeze()
            try:
                calls = [
                    threads.submit(api.put, f"/v1/runs/during-{i}", json=run_spec())
                    if i % 2
                    else threads.submit(api.get, "/v1/runs/before")
                    for i in range(6)
                ]
                # a call that waited for the freeze would wait until the thaw below: a failure
                answers = [call.result(timeout=BOUND_S) for call in calls]
            finally:
                pg.thaw()  # before the threads are joined: a hung call ends, the test fails
        assert [r.status_code for r in answers] == [503] * 6, [r.text for r in answers]
        assert pool.checkedout() == 0
        assert api.get("/v1/runs/before").status_code == 200
        assert api.get("/v1/runs/during-1").status_code == 404  # the 503 stored nothing
        assert api.put("/v1/runs/during-1", json=run_spec()).status_code == 201
        assert pool.checkedout() == 0
