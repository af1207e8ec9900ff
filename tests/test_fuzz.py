"""Schemathesis fuzzes every operation of the OpenAPI document, on SQLite and on PostgreSQL:
no request yields a 5xx, and every response (status, content type, headers, body) is what
the document says, in strict JSON."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation, BaseSchema

from lrpilot.app import create_app
from lrpilot.settings import Settings
from tests.helpers import run_spec, strict_json

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 150  # per operation and backend: ~15 s each; CI must stay under 15 minutes


@pytest.fixture
def fuzz_schema(database_url: str) -> Iterator[BaseSchema]:
    app = create_app(Settings(database_url=database_url))
    with TestClient(app) as client:  # runs the lifespan: the app as it serves
        # A run with decisions, so that fuzzed requests reach the decision path, not only 404s.
        assert client.put("/v1/runs/fuzz", json=run_spec({"patience": 1})).status_code == 201
        for step in range(5):
            r = client.post("/v1/runs/fuzz/observations", json={"step": step, "value": 1.0})
            assert r.status_code == 200, r.text
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: APIOperation) -> None:
    @given(case=operation.as_strategy(), known_run=st.booleans())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case, known_run: bool) -> None:
        if known_run and case.path_parameters and "run_id" in case.path_parameters:
            case.path_parameters["run_id"] = "fuzz"  # half the cases reach a run's decisions
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        if response.content:
            strict_json(response.text)  # every body is strict JSON

    fuzz()


# schemathesis' own pytest loader for a fixture's schema does not run on pytest 9, so the
# operations are walked here; every failing operation is reported, not only the first.
def test_every_response_is_documented_and_none_is_a_server_error(fuzz_schema: BaseSchema) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        try:
            _fuzz(operation)
        except Exception as exc:  # a hypothesis failure, with its falsifying example
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
