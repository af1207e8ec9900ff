"""Who may scrape /metrics, bounded labels, request ids, the log formats, the version
(docs/operations.md, "Metrics and logs"). A real server's scrape and JSON log:
tests/operations/test_observability.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import lrpilot
from lrpilot.api.observe import JsonFormatter, TextFormatter
from lrpilot.store.db import upgrade
from tests.conftest import app_client
from tests.harness import DatabaseLock
from tests.helpers import bearer, lrpilot_cli, make_token, one_line, run_spec

ELSEWHERE = "192.0.2.7"  # an address of another machine (TEST-NET-1)


# Nothing here depends on the database's kind (test_observability.py scrapes both): SQLite
# alone keeps these fast.
@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'observe.db'}"
    upgrade(url)
    return url


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    with app_client(database_url, migrate=False) as client:
        yield client


def routes_counted(text: str) -> set[tuple[str, str, str]]:
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "lrpilot_requests"]
    return {(s.labels["method"], s.labels["route"], s.labels["status"]) for s in family.samples}


def test_loopback_scrapes_and_another_machine_does_not(database_url: str) -> None:
    with app_client(database_url, migrate=False) as local:
        r = local.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert f'lrpilot_info{{version="{lrpilot.__version__}"}} 1.0' in r.text
    reader = make_token(database_url, "p1", "reader")
    with app_client(database_url, migrate=False, peer=ELSEWHERE) as remote:
        r = remote.get("/metrics", headers=bearer(reader))  # a token is not enough: loopback
        assert r.status_code == 403 and "LRPILOT_METRICS_ACCESS" in r.json()["detail"]


def test_reader_mode_wants_a_reader_token_from_anywhere(database_url: str) -> None:
    reader = make_token(database_url, "p1", "reader")
    with app_client(database_url, migrate=False, peer=ELSEWHERE, metrics_access="reader") as remote:
        assert remote.get("/metrics").status_code == 401
        assert remote.get("/metrics", headers=bearer("lrp_nope")).status_code == 401
        r = remote.get("/metrics", headers=bearer(reader))
        assert r.status_code == 200
        failures = [
            s
            for f in text_string_to_metric_families(r.text)
            if f.name == "lrpilot_auth_failures"
            for s in f.samples
        ]
        counted = {(s.labels["reason"], s.labels["status"]): s.value for s in failures}
        assert counted == {("missing", "401"): 1.0, ("unknown", "401"): 1.0}


def test_routes_are_templates_and_methods_bounded(api: TestClient) -> None:
    assert api.put("/v1/runs/a1", json=run_spec()).status_code == 201
    for run in ("a1", "a2", "a3"):
        api.get(f"/v1/runs/{run}")
        api.post(f"/v1/runs/{run}/observations", json={"step": 1, "value": 1.0})
    api.get("/no/such/path")
    api.head("/healthz")  # served as a GET on a copy of the request's scope (api/limits.py)
    api.head("/v1/runs/a1")
    api.request("BREW", "/v1/runs")
    counted = routes_counted(api.get("/metrics").text)
    assert counted == {
        ("PUT", "/v1/runs/{run_id}", "201"),
        ("GET", "/v1/runs/{run_id}", "200"),
        ("GET", "/v1/runs/{run_id}", "404"),
        ("POST", "/v1/runs/{run_id}/observations", "200"),
        ("POST", "/v1/runs/{run_id}/observations", "404"),
        ("GET", "unmatched", "404"),
        ("HEAD", "/healthz", "200"),
        ("HEAD", "/v1/runs/{run_id}", "200"),
        ("OTHER", "/v1/runs", "405"),
    }


def test_a_sane_request_id_is_echoed_any_other_replaced(api: TestClient) -> None:
    sane = "0af7651916cd43dd8448eb211c80319c"
    assert api.get("/healthz", headers={"X-Request-ID": sane}).headers["x-request-id"] == sane
    for bad in ("two words", "x" * 129, "a\tb", ""):
        got = api.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and got
    made = {api.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3
    refused = api.post("/v1/runs/none/observations", json={"step": 1, "value": 1.0})
    assert refused.status_code == 404 and refused.headers["x-request-id"]  # errors too


def test_the_version_is_everywhere(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "version": lrpilot.__version__}
    assert api.get("/openapi.json").json()["info"]["version"] == lrpilot.__version__
    for flag in ("--version", "-V"):
        result = lrpilot_cli(flag)
        assert result.exit_code == 0 and result.stdout == f"lrpilot {lrpilot.__version__}\n"


def record(fields: dict[str, object] | None, name: str = "lrpilot.access") -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, "request", None, None)
    if fields is not None:
        made.fields = fields
    return made


def test_the_formats_of_a_request_line() -> None:
    fields = {"request_id": "r-1", "status": 200, "token": None, "path": "/v1/runs/a b"}
    text = TextFormatter().format(record(fields))
    assert text == 'INFO:     request request_id=r-1 status=200 token=- path="/v1/runs/a b"'
    doc = json.loads(JsonFormatter().format(record(fields)))
    assert doc["message"] == "request" and doc["level"] == "info" and doc["token"] is None
    assert {k: doc[k] for k in fields} == fields
    # other lines say their fields in their message: in text, not twice
    assert TextFormatter().format(record(fields, "lrpilot")) == "INFO:     request"


def test_an_unknown_log_format_is_one_line() -> None:
    result = lrpilot_cli("serve", "--log-format", "xml")
    assert result.exit_code != 0
    assert "log_format (LRPILOT_LOG_FORMAT)" in one_line(result.output)


def test_a_locked_database_is_counted(database_url: str) -> None:
    path = Path(database_url.removeprefix("sqlite:///"))
    with app_client(database_url, migrate=False, db_timeout_s=0.3) as api:
        assert api.put("/v1/runs/a", json=run_spec()).status_code == 201
        with DatabaseLock(path):  # as an sqlite3 shell holding the write lock would
            observed = api.post("/v1/runs/a/observations", json={"step": 1, "value": 1.0})
            created = api.put("/v1/runs/b", json=run_spec())
        assert (observed.status_code, created.status_code) == (503, 503)
        text = api.get("/metrics").text
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "lrpilot_db_unavailable"
    ]
    counted = {s.labels["cause"]: s.value for s in family.samples}
    # the observation waited its bound in the group commit's queue; the run's creation in
    # SQLite's busy wait
    assert counted == {"timeout": 1.0, "locked": 1.0}


def value_of(text: str, name: str) -> float:
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    (sample,) = family.samples
    return sample.value


def test_export_and_import_bytes(api: TestClient) -> None:
    assert api.put("/v1/runs/a", json=run_spec()).status_code == 201
    assert api.post("/v1/runs/a/observations", json={"step": 1, "value": 1.0}).status_code == 200
    bundle = api.get("/v1/runs/a/export").content
    again = api.post(
        "/v1/runs/import", content=bundle, headers={"content-type": "application/x-ndjson"}
    )
    assert again.status_code == 200, again.text  # this very log is stored already
    text = api.get("/metrics").text
    assert value_of(text, "lrpilot_export_bytes") == len(bundle)
    assert value_of(text, "lrpilot_import_bytes") == len(bundle)
