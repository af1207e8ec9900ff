"""The dashboard's login (api/session.py) and the cookie on /v1 (api/auth.py): a token entered
once, kept HttpOnly and SameSite=Strict; reads work with it, a change needs the CSRF header
and the page's own origin; the token's project and role bound it exactly as a bearer's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.conftest import app_client
from tests.helpers import bearer, make_token, run_spec

CSRF = {"X-LRPilot-CSRF": "1"}


@dataclass
class Setup:
    client: TestClient
    reader: str  # project p1's
    writer: str
    admin: str
    other: str  # project p2's reader


@pytest.fixture
def setup(database_url: str) -> Iterator[Setup]:
    tokens = {role: make_token(database_url, "p1", role) for role in ("reader", "writer", "admin")}
    other = make_token(database_url, "p2", "reader", name="p2-reader")
    with app_client(database_url, migrate=False) as client:
        writer = bearer(tokens["writer"])
        assert client.put("/v1/runs/r1", json=run_spec(), headers=writer).status_code == 201
        for step, value in ((1, 1.0), (2, 0.9)):
            r = client.post(
                "/v1/runs/r1/observations", json={"step": step, "value": value}, headers=writer
            )
            assert r.status_code == 200, r.text
        yield Setup(client, tokens["reader"], tokens["writer"], tokens["admin"], other)


def login(client: TestClient, secret: str) -> None:
    r = client.post("/ui/login", json={"token": secret})
    assert r.status_code == 204, r.text


def test_login_sets_a_strict_httponly_cookie_and_whoami_names_the_token(setup: Setup) -> None:
    client = setup.client
    assert client.get("/ui/whoami").status_code == 401  # no cookie yet: the page shows login
    r = client.post("/ui/login", json={"token": setup.reader})
    assert r.status_code == 204, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"lrpilot_token={setup.reader};")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    who = client.get("/ui/whoami").json()
    assert who["project"] == "p1" and who["role"] == "reader" and who["open_mode"] is False
    assert who["token"].startswith("p1-reader")
    assert client.post("/ui/logout").status_code == 204
    assert client.get("/ui/whoami").status_code == 401
    assert client.get("/v1/runs").status_code == 401


def test_a_form_login_leads_to_the_dashboard_and_a_bad_token_is_401(setup: Setup) -> None:
    client = setup.client
    r = client.post("/ui/login", data={"token": setup.reader}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    client.cookies.clear()
    for body in ({"json": {"token": "lrp_nope"}}, {"data": {"token": "lrp_nope"}}):
        r = client.post("/ui/login", follow_redirects=False, **body)  # type: ignore[arg-type]
        assert r.status_code == 401 and r.json()["detail"] == "unknown token"
        assert "set-cookie" not in r.headers
    for body in ({"json": {}}, {"json": ["x"]}, {"content": b"{"}, {"data": {"other": "x"}}):
        r = client.post("/ui/login", **body)  # type: ignore[arg-type]
        assert r.status_code == 401 and "token" in r.json()["detail"]


def test_over_https_the_cookie_is_secure(database_url: str) -> None:
    secret = make_token(database_url, "p1", "reader")
    with app_client(database_url, migrate=False) as client:
        client.base_url = client.base_url.copy_with(scheme="https")
        r = client.post("/ui/login", json={"token": secret})
        assert r.status_code == 204
        assert "secure" in {a.strip().lower() for a in r.headers["set-cookie"].split(";")}


def test_cookie_reads_see_the_tokens_project_only(setup: Setup) -> None:
    client = setup.client
    login(client, setup.reader)
    assert [r["run_id"] for r in client.get("/v1/runs").json()["items"]] == ["r1"]
    assert client.get("/v1/runs/r1/decisions").json()["items"][-1]["step"] == 2
    assert client.post("/v1/runs/r1/verify", headers=CSRF).json()["ok"] is True
    login(client, setup.other)
    assert client.get("/v1/runs").json()["items"] == []
    assert client.get("/v1/runs/r1").status_code == 404
    # the header wins over the cookie
    r = client.get("/v1/runs", headers=bearer(setup.reader))
    assert [r["run_id"] for r in r.json()["items"]] == ["r1"]


def test_a_cookie_change_needs_the_csrf_header_and_its_own_origin(setup: Setup) -> None:
    client = setup.client
    login(client, setup.writer)
    observe = "/v1/runs/r1/observations"
    refused = [
        client.post(observe, json={"step": 3, "value": 0.8}),  # the fast path
        client.post("/v1/runs/r1/verify"),  # a route
        client.put("/v1/runs/r2", json=run_spec()),
        client.post(observe, json={"step": 3, "value": 0.8}, headers={"X-LRPilot-CSRF": "yes"}),
        client.post(
            observe, json={"step": 3, "value": 0.8}, headers={**CSRF, "Origin": "http://evil"}
        ),
        client.post(observe, json={"step": 3, "value": 0.8}, headers={**CSRF, "Origin": "null"}),
    ]
    for r in refused:
        assert r.status_code == 403, r.text
        assert r.json() == {"detail": "cross-site request refused"}
    assert client.get("/v1/runs/r1").json()["last_step"] == 2  # nothing happened
    r = client.post(observe, json={"step": 3, "value": 0.8}, headers=CSRF)
    assert r.status_code == 200, r.text
    same = {**CSRF, "Origin": "http://testserver"}
    r = client.post(observe, json={"step": 4, "value": 0.7}, headers=same)
    assert r.status_code == 200, r.text
    r = client.put("/v1/runs/r2", json=run_spec(), headers=CSRF)
    assert r.status_code == 201, r.text
    # a bearer request is as it always was: no header asked for
    r = client.post("/v1/runs/r1/verify", headers=bearer(setup.reader))
    assert r.status_code == 200


def test_a_reader_cookie_cannot_rewind_and_an_admin_one_can(setup: Setup) -> None:
    client = setup.client
    login(client, setup.reader)
    r = client.post("/v1/runs/r1/rewind", json={"to_step": 1}, headers=CSRF)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    r = client.post("/v1/runs/r1/observations", json={"step": 3, "value": 0.8}, headers=CSRF)
    assert r.status_code == 403 and "writer" in r.json()["detail"]
    login(client, setup.admin)
    r = client.post("/v1/runs/r1/rewind", json={"to_step": 1}, headers=CSRF)
    assert r.status_code == 200, r.text


def test_login_and_logout_from_another_origin_are_refused(setup: Setup) -> None:
    r = setup.client.post(
        "/ui/login", json={"token": setup.reader}, headers={"Origin": "http://evil"}
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert setup.client.post("/ui/logout", headers={"Origin": "http://evil"}).status_code == 403


def test_open_mode_needs_no_login_but_refuses_other_origins(database_url: str) -> None:
    with app_client(database_url, peer="127.0.0.1") as client:
        who = client.get("/ui/whoami").json()
        assert who == {"token": None, "project": "default", "role": "admin", "open_mode": True}
        r = client.put("/v1/runs/r1", json=run_spec(), headers={"Origin": "http://evil"})
        assert r.status_code == 403 and r.json()["detail"] == "cross-site request refused"
        r = client.post(
            "/v1/runs/r1/observations",
            json={"step": 1, "value": 1.0},
            headers={"Origin": "http://evil"},
        )
        assert r.status_code == 403  # the fast path too
        assert client.put("/v1/runs/r1", json=run_spec()).status_code == 201
        r = client.put("/v1/runs/r1", json=run_spec(), headers={"Origin": "http://localhost"})
        assert r.status_code == 200
