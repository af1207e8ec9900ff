"""No request yields a 500: schemathesis fuzzes every operation of the OpenAPI schema."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from lrpilot.app import create_app
from lrpilot.domain import Posted, RunSpec
from lrpilot.settings import Settings
from lrpilot.store.db import upgrade
from tests.helpers import strict_json


def fuzz_app() -> FastAPI:
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='lrpilot-fuzz-')) / 'fuzz.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    # A run with decisions, so that fuzzed requests reach the decision path, not only 404s.
    decisions = app.state.decisions
    decisions.create_run("fuzz", RunSpec("plateau", 1, {"patience": 1}, (0.1,), "val", {}))
    decisions.decide_batch([Posted("fuzz", step, 1.0) for step in range(5)])
    return app


schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    fuzz_app(),
    config=SchemathesisConfig.from_dict({"parameters": {"path.run_id": "fuzz"}}),
)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_yields_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if response.content:
        strict_json(response.text)  # every body is strict JSON
