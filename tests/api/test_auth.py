"""Tokens and roles over HTTP: 401 without a valid token, 403 without the role, 404 for another
project's run; every route has a rule (a new route without one fails here); open mode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from lrpilot.api.auth import CACHE_S
from lrpilot.domain.deciding import now
from lrpilot.settings import Settings
from lrpilot.store.runs import Store
from lrpilot.store.tokens import Tokens
from tests.conftest import app_client
from tests.helpers import bearer, make_token, run_spec

# the probes need no token; /metrics has its own rule (LRPILOT_METRICS_ACCESS, test_metrics.py)
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
# the role each route needs; a route missing here fails test_every_route_has_a_rule
RULES: dict[tuple[str, str], str] = {
    ("GET", "/v1/policies"): "reader",
    ("GET", "/v1/runs"): "reader",
    ("GET", "/v1/runs/{run_id}"): "reader",
    ("GET", "/v1/runs/{run_id}/lr"): "reader",
    ("GET", "/v1/runs/{run_id}/lrs"): "reader",
    ("GET", "/v1/runs/{run_id}/decisions"): "reader",
    ("GET", "/v1/runs/{run_id}/plot"): "reader",
    ("GET", "/v1/runs/{run_id}/export"): "reader",
    ("GET", "/v1/runs/{run_id}/summary"): "reader",
    ("POST", "/v1/runs/{run_id}/verify"): "reader",
    ("POST", "/v1/simulate"): "reader",
    ("PUT", "/v1/runs/{run_id}"): "writer",
    ("POST", "/v1/runs/{run_id}/observations"): "writer",
    ("POST", "/v1/runs/{run_id}/resize"): "writer",
    ("POST", "/v1/runs/{run_id}/applied"): "writer",
    ("POST", "/v1/runs/{run_id}/checkpoints"): "writer",
    ("GET", "/v1/runs/{run_id}/checkpoints"): "reader",
    ("POST", "/v1/runs/{run_id}/cooldown"): "writer",
    ("POST", "/v1/runs/{run_id}/retime"): "writer",
    ("POST", "/v1/runs/{run_id}/rewind"): "admin",
    ("POST", "/v1/runs/import"): "admin",
    ("POST", "/v1/tokens"): "admin",
    ("GET", "/v1/tokens"): "admin",
    ("POST", "/v1/tokens/{name}/revoke"): "admin",
}
# a request each route can serve (or refuse on its merits, never for who asks)
REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/runs/{run_id}/lr"): {"params": {"step": 3}},
    ("GET", "/v1/runs/{run_id}/lrs"): {"params": {"from": 0, "count": 3}},
    ("PUT", "/v1/runs/{run_id}"): {"json": run_spec()},
    ("POST", "/v1/runs/{run_id}/observations"): {"json": {"step": 3, "value": 0.5}},
    ("POST", "/v1/runs/{run_id}/resize"): {"json": {"step": 3, "world_size": 2}},
    ("POST", "/v1/runs/{run_id}/applied"): {
        "json": {"rank": 0, "world_size": 2, "step": 3, "seq": 0, "lrs_hash": "0" * 64}
    },
    ("POST", "/v1/runs/{run_id}/checkpoints"): {"json": {"step": 3, "ref": "ckpt-3"}},
    ("POST", "/v1/runs/{run_id}/rewind"): {"json": {"to_step": 1}},
    ("POST", "/v1/runs/{run_id}/cooldown"): {"json": {"at_step": 10, "steps": 5}},
    ("POST", "/v1/runs/{run_id}/retime"): {
        "json": {"at_step": 10, "horizon": 20, "mode": "keep_lr"}
    },
    ("POST", "/v1/runs/import"): {"content": b"{}\n", "headers": {}},
    ("POST", "/v1/tokens"): {"json": {"role": "reader"}},
    ("POST", "/v1/simulate"): {
        "json": {"policy": {"name": "plateau", "version": 1}, "base_lrs": [0.1], "values": [1.0]}
    },
}
ROLES = ("reader", "writer", "admin")


class Setup:
    def __init__(self, client: TestClient, tokens: dict[str, str], other: str) -> None:
        self.client = client
        self.tokens = tokens  # project p1's, by role
        self.other = other  # project p2's admin

    def call(self, method: str, path: str, secret: str | None, run_id: str = "r1") -> Any:
        kwargs = dict(REQUESTS.get((method, path), {}))
        headers = dict(kwargs.pop("headers", {}))
        if secret is not None:
            headers.update(bearer(secret))
        url = path.replace("{run_id}", run_id).replace("{name}", "nobody")
        return self.client.request(method, url, headers=headers, **kwargs)


@pytest.fixture
def setup(database_url: str) -> Iterator[Setup]:
    tokens = {role: make_token(database_url, "p1", role) for role in ROLES}
    other = make_token(database_url, "p2", "admin")
    with app_client(database_url, migrate=False) as client:
        made = Setup(client, tokens, other)
        r = client.put("/v1/runs/r1", json=run_spec(), headers=bearer(made.tokens["writer"]))
        assert r.status_code == 201, r.text
        for step, value in ((1, 1.0), (2, 0.9)):
            r = client.post(
                "/v1/runs/r1/observations",
                json={"step": step, "value": value},
                headers=bearer(made.tokens["writer"]),
            )
            assert r.status_code == 200, r.text
        yield made


def routes(client: TestClient) -> set[tuple[str, str]]:
    """The OpenAPI document's operations (HEAD is its GET's, under the GET's rule)."""
    paths = client.get("/openapi.json").json()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() for m in ops if m != "head"}


def test_every_route_has_a_rule(setup: Setup) -> None:
    assert routes(setup.client) == set(RULES) | OPEN_ROUTES
    app: Any = setup.client.app
    routers = [
        app.router,
        *(r.original_router for r in app.routes if hasattr(r, "original_router")),
    ]
    checked = 0
    for route in (route for router in routers for route in router.routes):
        if not isinstance(route, APIRoute) or ("GET", route.path) in OPEN_ROUTES:
            continue
        checked += 1
        checks = {d.call.__name__ for d in route.dependant.dependencies if d.call is not None}
        for method in route.methods - {"HEAD"}:
            assert f"require_{RULES[(method, route.path)]}" in checks, (method, route.path)
    assert checked == len(RULES)


@pytest.mark.parametrize(("method", "path"), sorted(RULES))
def test_no_token_or_a_bad_one_is_401(setup: Setup, method: str, path: str) -> None:
    for secret in (None, "lrp_not-a-token", "x" * 5000):
        r = setup.call(method, path, secret)
        assert r.status_code == 401, (secret, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "token" in r.json()["detail"].lower()
    basic = setup.client.request(
        method, path.replace("{run_id}", "r1"), headers={"Authorization": "Basic dTpw"}
    )
    assert basic.status_code == 401 and "Bearer TOKEN" in basic.json()["detail"]


@pytest.mark.parametrize(("method", "path"), sorted(RULES))
def test_each_role_gets_what_it_may_and_a_403_naming_the_role_else(
    setup: Setup, method: str, path: str
) -> None:
    needed = RULES[(method, path)]
    for role in ROLES:
        r = setup.call(method, path, setup.tokens[role])
        if ROLES.index(role) >= ROLES.index(needed):
            assert r.status_code not in (401, 403), (role, r.text)
            assert r.status_code < 500, r.text
        else:
            assert r.status_code == 403, (role, r.text)
            assert f"needs the role {needed}" in r.json()["detail"]


@pytest.mark.parametrize(("method", "path"), sorted(p for p in RULES if "{run_id}" in p[1]))
def test_another_projects_run_is_not_found_exactly_as_a_missing_one(
    setup: Setup, method: str, path: str
) -> None:
    theirs = setup.call(method, path, setup.other, run_id="r1")
    missing = setup.call(method, path, setup.tokens["admin"], run_id="r9")
    if (method, path) != ("PUT", "/v1/runs/{run_id}"):
        assert missing.status_code == 404
        assert theirs.status_code == 404, theirs.text
        assert theirs.json()["detail"] == missing.json()["detail"].replace("r9", "r1")
    else:  # PUT of a missing run creates it: p2's own run r1, as p1's own r9
        assert (theirs.status_code, missing.status_code) == (201, 201), theirs.text
        assert theirs.json()["last_seq"] == 0
    mine = setup.client.get("/v1/runs/r1", headers=bearer(setup.tokens["reader"])).json()
    assert mine["last_step"] == 2  # nothing of p2's requests reached it


def test_list_runs_shows_the_projects_runs_only(setup: Setup) -> None:
    r = setup.client.put("/v1/runs/r2", json=run_spec(), headers=bearer(setup.other))
    assert r.status_code == 201
    mine = setup.client.get("/v1/runs", headers=bearer(setup.tokens["reader"])).json()
    theirs = setup.client.get("/v1/runs", headers=bearer(setup.other)).json()
    assert [i["run_id"] for i in mine["items"]] == ["r1"]
    assert [i["run_id"] for i in theirs["items"]] == ["r2"]


def test_simulate_of_another_projects_run_is_not_found(setup: Setup) -> None:
    body = {"run_id": "r1"}
    theirs = setup.client.post("/v1/simulate", json=body, headers=bearer(setup.other))
    mine = setup.client.post("/v1/simulate", json=body, headers=bearer(setup.tokens["reader"]))
    assert theirs.status_code == 404 and mine.status_code == 200, (theirs.text, mine.text)


def test_import_goes_to_the_callers_project(setup: Setup) -> None:
    bundle = setup.client.get("/v1/runs/r1/export", headers=bearer(setup.tokens["reader"]))
    theirs = setup.client.post(
        "/v1/runs/import", content=bundle.content, headers=bearer(setup.other)
    )
    assert theirs.status_code == 201, theirs.text  # p2's own run r1, under the same id
    mine = setup.client.post(
        "/v1/runs/import", content=bundle.content, headers=bearer(setup.tokens["admin"])
    )
    assert mine.status_code == 200, mine.text  # the very log it holds
    again = setup.client.post(
        "/v1/runs/import", content=bundle.content, headers=bearer(setup.other)
    )
    assert again.status_code == 200, again.text  # p2's copy, which now holds that log too


def test_revoked_and_expired_tokens_are_401(setup: Setup, database_url: str) -> None:
    expired = make_token(database_url, "p1", "admin", expires_at="2020-01-01T00:00:00.000000Z")
    r = setup.client.get("/v1/runs", headers=bearer(expired))
    assert r.status_code == 401 and r.json()["detail"] == "the token has expired"
    reader = setup.tokens["reader"]
    assert setup.client.get("/v1/runs", headers=bearer(reader)).status_code == 200
    store = Store(Settings(database_url=database_url))
    try:
        name = next(t.name for t in Tokens(store).all("p1") if t.role == "reader")
        assert Tokens(store).revoke(name, now()) is not None
    finally:
        store.close()
    time.sleep(CACHE_S + 0.1)  # the lookup cache's bound
    r = setup.client.get("/v1/runs", headers=bearer(reader))
    assert r.status_code == 401 and r.json()["detail"] == "the token was revoked"


@pytest.mark.parametrize("fast_path", [True, False])
def test_observations_fast_path_applies_the_same_rule(database_url: str, fast_path: bool) -> None:
    writer = make_token(database_url, "p1", "writer")
    reader = make_token(database_url, "p1", "reader")
    other = make_token(database_url, "p2", "writer")
    with app_client(database_url, migrate=False, fast_path=fast_path) as client:
        assert client.put("/v1/runs/r", json=run_spec(), headers=bearer(writer)).status_code == 201
        obs = {"step": 1, "value": 0.5}
        path = "/v1/runs/r/observations"
        none = client.post(path, json=obs)
        assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
        read = client.post(path, json=obs, headers=bearer(reader))
        assert read.status_code == 403 and "needs the role writer" in read.text
        theirs = client.post(path, json=obs, headers=bearer(other))
        assert theirs.status_code == 404 and theirs.json()["detail"] == "run 'r' not found"
        assert client.post(path, json=obs, headers=bearer(writer)).status_code == 200
        statuses = (none.status_code, read.status_code, theirs.status_code)
        bodies = (none.content, read.content, theirs.content)
    assert statuses == (401, 403, 404) and all(b.startswith(b'{"detail":') for b in bodies)


def test_open_mode_without_tokens_and_closed_with_the_first(database_url: str) -> None:
    with app_client(database_url, migrate=False) as client:
        assert client.put("/v1/runs/r", json=run_spec()).status_code == 201
        obs = client.post("/v1/runs/r/observations", json={"step": 1, "value": 0.5})
        assert obs.status_code == 200 and '"by"' not in obs.text
        assert client.get("/v1/runs").json()["items"][0]["run_id"] == "r"
        make_token(database_url, "default", "reader")
        time.sleep(CACHE_S + 0.1)
        assert client.get("/v1/runs").status_code == 401
        for path in ("/healthz", "/readyz"):
            assert client.get(path).status_code == 200


def test_an_admin_manages_its_projects_tokens_over_http(setup: Setup) -> None:
    admin, other = bearer(setup.tokens["admin"]), bearer(setup.other)
    r = setup.client.post("/v1/tokens", json={"role": "writer", "name": "job-7"}, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["project"] == "p1" and made["role"] == "writer" and made["token"].startswith("lrp_")
    job = bearer(made["token"])
    assert setup.client.put("/v1/runs/j", json=run_spec(), headers=job).status_code == 201
    listed = setup.client.get("/v1/tokens", headers=admin).json()["items"]
    assert {t["name"] for t in listed} >= {"job-7"} and all(t["project"] == "p1" for t in listed)
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert "job-7" not in setup.client.get("/v1/tokens", headers=other).text
    taken = setup.client.post("/v1/tokens", json={"role": "reader", "name": "job-7"}, headers=admin)
    assert taken.status_code == 409
    bad = setup.client.post("/v1/tokens", json={"role": "root"}, headers=admin)
    assert bad.status_code == 422
    # another project's admin cannot revoke it, nor learn that it exists
    theirs = setup.client.post("/v1/tokens/job-7/revoke", headers=other)
    missing = setup.client.post("/v1/tokens/job-9/revoke", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"] == missing.json()["detail"].replace("job-9", "job-7")
    r = setup.client.post("/v1/tokens/job-7/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    time.sleep(CACHE_S + 0.1)  # the lookup cache's bound
    assert setup.client.get("/v1/runs/j", headers=job).status_code == 401
