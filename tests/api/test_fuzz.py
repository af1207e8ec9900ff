"""Schemathesis fuzzes every operation of the OpenAPI document, on SQLite and on PostgreSQL:
no request yields a 5xx, and every response (status, content type, headers, body) is what
the document says, in strict JSON. With the database gone, every operation answers only what
it documents (its 503 included); and the document lists, for every operation, the statuses
its kind of route answers, so that a route added without them fails here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation, BaseSchema

from lrpilot.api.errors import MAX_ERROR_BYTES
from lrpilot.app import create_app
from lrpilot.settings import Settings
from tests.conftest import app_client
from tests.helpers import SPLITS_LINES, run_spec, strict_json

# POST /v1/runs/import takes an NDJSON bundle: schemathesis sends the generated string as is.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

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
    with app_client(database_url, migrate=False) as client:  # the lifespan run: as it serves
        # A run with decisions, so that fuzzed requests reach the decision path, not only 404s.
        assert client.put("/v1/runs/fuzz", json=run_spec({"patience": 1})).status_code == 201
        for step in range(5):
            r = client.post("/v1/runs/fuzz/observations", json={"step": step, "value": 1.0})
            assert r.status_code == 200, r.text
        # Every export of the run holds them, not only one the fuzzer happens to write.
        ref = f"ckpt/{SPLITS_LINES}"
        r = client.post("/v1/runs/fuzz/checkpoints", json={"step": 4, "ref": ref})
        assert r.status_code == 201, r.text
        yield schemathesis.openapi.from_asgi("/openapi.json", client.app)


def _fuzz(operation: APIOperation) -> None:
    @given(case=operation.as_strategy(), known_run=st.booleans())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case, known_run: bool) -> None:
        if known_run and case.path_parameters and "run_id" in case.path_parameters:
            case.path_parameters["run_id"] = "fuzz"  # half the cases reach a run's decisions
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0.1:
            case.query["wait"] = 0.1  # a long-poll answers as one that ran out: keep it short
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:  # api/errors.py: an error answer stays small
            assert len(response.content) < MAX_ERROR_BYTES, (response.status_code, case)
        content_type = (response.headers.get("content-type") or [""])[0]  # a list a header
        if content_type.startswith("application/x-ndjson"):  # an export (HEAD: no body)
            # every line strict JSON, split at "\n" alone as NDJSON is: str.splitlines also
            # splits at U+2028, U+2029 and U+0085, which a JSON string holds raw
            *lines, end = response.text.split("\n")
            assert end == "", "an export ends with a line end"
            for line in lines:
                strict_json(line)
        elif content_type.startswith("text/plain") and response.content:  # GET /metrics
            assert list(text_string_to_metric_families(response.text))  # Prometheus' format
        elif response.content:
            strict_json(response.text)  # every other body is strict JSON

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


# -- the document lists what each route answers, whoever adds the route --------------------

# The operations that never touch the database (the test below checks it: they answer 200
# with the database gone). Every other operation reads or writes it, and documents a 503.
NO_DATABASE = {"/healthz"}  # (every /v1 route looks its caller's token up: api/auth.py)
# Reads the database only as configured: GET /metrics looks a token up with
# LRPILOT_METRICS_ACCESS=reader (so it documents a 503), never with the default, loopback.
SOMETIMES_DATABASE = {"/metrics"}
# The operations with a run_id that cannot answer 404: they create the run.
CREATE_RUN = {("put", "/v1/runs/{run_id}")}
UNAVAILABLE_EXAMPLES = 25  # per operation: the database is gone, every request fails fast
CONFORMANCE = [check for check in CHECKS if check is not not_a_server_error]  # 503s expected


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, path): op for path, item in doc["paths"].items() for m, op in item.items()}


def _takes_run_id(doc: dict[str, Any], op: dict[str, Any]) -> bool:
    """A run_id in the path, or in the JSON body (POST /v1/simulate replays a stored run)."""
    if any(p["in"] == "path" and p["name"] == "run_id" for p in op.get("parameters", [])):
        return True
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = body.get("schema", {})
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return "run_id" in schema.get("properties", {})


def _schema_ref(response: dict[str, Any]) -> str | None:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref")
    return ref if isinstance(ref, str) else None


def _fuzz_without_database(operation: APIOperation) -> set[int]:
    """The statuses the operation answered, every one of them documented."""
    statuses: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=UNAVAILABLE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call()
        statuses.add(response.status_code)
        case.validate_response(response, checks=CONFORMANCE)
        if response.status_code == 503:
            assert operation.path not in NO_DATABASE, "a 503 from a route without the database"
            assert response.headers.get("retry-after"), "a 503 without Retry-After"

    fuzz()
    return statuses


def test_every_operation_documents_the_statuses_of_its_kind(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'never-created.db'}"))
    problems: list[str] = []
    doc = app.openapi()
    for (method, path), op in _operations(doc).items():
        responses = op["responses"]
        codes = set(responses)
        path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        expected = {"413"}  # limits.py: every request body is bounded
        if op.get("parameters") or "requestBody" in op:
            expected.add("422")
        if "run_id" in path_params and (method, path) not in CREATE_RUN:
            expected.add("404")
        if "404" in codes and not _takes_run_id(doc, op) and "name" not in path_params:
            problems.append(f"{method} {path}: documents a 404 but takes no run_id")
        if path.startswith("/v1/"):  # api/auth.py: every /v1 route checks its caller
            expected |= {"401", "403"}
        if path in NO_DATABASE:
            if "503" in codes:
                problems.append(f"{method} {path}: documents a 503 but never reads the database")
        else:
            expected.add("503")
            retry_after = responses.get("503", {}).get("headers", {}).get("Retry-After", {})
            if "503" in codes and not retry_after.get("required"):
                problems.append(f"{method} {path}: its 503 does not document Retry-After")
        if expected - codes:
            problems.append(f"{method} {path}: does not document {sorted(expected - codes)}")
        if method != "head":  # HEAD answers carry no body, so document none
            for code, model in (("404", "Message"), ("422", "ValidationErrorOut")):
                ref = _schema_ref(responses[code]) if code in codes else None
                if code in codes and ref != f"#/components/schemas/{model}":
                    problems.append(f"{method} {path}: its {code} is not {model} but {ref}")
    assert not problems, "\n".join(problems)


def test_with_the_database_gone_every_operation_answers_only_what_it_documents(
    tmp_path: Path,
) -> None:
    # A file that was never migrated: the store opens it read-write and never creates it, so
    # every query fails as with an unreachable database.
    failures: list[str] = []
    with app_client(f"sqlite:///{tmp_path / 'gone.db'}", migrate=False) as client:
        for path in sorted(NO_DATABASE):
            for method in ("GET", "HEAD"):
                r = client.request(method, path)
                if r.status_code != 200:
                    failures.append(f"{method} {path} needs the database: {r.status_code}")
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        for result in schema.get_all_operations():
            operation = result.ok()
            try:
                statuses = _fuzz_without_database(operation)
            except Exception as exc:  # a hypothesis failure, with its falsifying example
                failures.append(f"{operation.label}: {exc}")
                continue
            # Without a body to get right, a generated request reaches the database: a route
            # that needs it answered 503, so the test above did check its 503 against the
            # document. (A body may be refused before the database, as most generated are.)
            reaches_database = operation.path not in NO_DATABASE | SOMETIMES_DATABASE and not len(
                operation.body
            )
            if reaches_database and 503 not in statuses:
                failures.append(f"{operation.label}: never reached the database: {statuses}")
    assert not failures, "\n\n".join(failures)
