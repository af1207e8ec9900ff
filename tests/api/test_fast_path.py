"""The observation route's fast path (api/fast_path.py) answers exactly as the FastAPI route
does: same statuses, headers and bytes, the same parse of every number, and every request it
would refuse left to the route."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lrpilot.api.models import ObservationIn
from tests.conftest import app_client
from tests.helpers import run_spec, strict_json


@pytest.fixture
def both(database_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps on one database: one with the fast path, one through FastAPI alone."""
    with (
        app_client(database_url, migrate=False) as fast,
        app_client(database_url, migrate=False, fast_path=False) as route,
    ):
        yield fast, route


def answer(client: TestClient, path: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
    r = client.post(path, **kwargs)  # type: ignore[arg-type]
    headers = {k: v for k, v in r.headers.items() if k in ("content-type", "retry-after")}
    return r.status_code, headers, r.content


REQUESTS: list[tuple[str, dict[str, object]]] = [
    ("/v1/runs/r/observations", {"json": {"step": 5, "value": 0.5}}),  # a retry: 200, stored
    ("/v1/runs/r/observations", {"json": {"step": 5, "value": 0.25}}),  # 409, another value
    ("/v1/runs/r/observations", {"json": {"step": 2, "value": 0.5}}),  # 409, never decided
    ("/v1/runs/nope/observations", {"json": {"step": 1, "value": 0.5}}),  # 404
    ("/v1/runs/r/observations", {"json": {"step": 9, "value": True}}),  # 422 (route)
    ("/v1/runs/r/observations", {"json": {"step": "9", "value": 0.5}}),  # 422 (route)
    ("/v1/runs/r/observations", {"json": {"step": 9, "value": 0.5, "rank": 2, "world_size": 2}}),
    ("/v1/runs/r/observations", {"json": {"step": 9}}),  # 422: no value
    (
        "/v1/runs/r/observations",
        {"content": b'{"step": 9, "value": 0.5', "headers": {"content-type": "application/json"}},
    ),  # 422: truncated JSON
    (
        "/v1/runs/r/observations",
        {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
    ),  # 422: not UTF-8
    ("/v1/runs/r/observations", {"content": b'{"step": 9, "value": 0.5}'}),  # no content type
    ("/v1/runs/bad%20id/observations", {"json": {"step": 9, "value": 0.5}}),  # 422: run_id
    ("/v1/runs/" + "a" * 129 + "/observations", {"json": {"step": 9, "value": 0.5}}),
]


def test_both_paths_answer_the_same_bytes(both: tuple[TestClient, TestClient]) -> None:
    fast, route = both
    assert fast.put("/v1/runs/r", json=run_spec()).status_code == 201
    first = answer(fast, "/v1/runs/r/observations", json={"step": 5, "value": 0.5})
    assert first[0] == 200
    assert answer(route, "/v1/runs/r/observations", json={"step": 5, "value": 0.5}) == first
    for path, kwargs in REQUESTS:
        got, want = answer(fast, path, **kwargs), answer(route, path, **kwargs)
        assert got == want, (path, kwargs)
        assert got[0] != 500


def test_decisions_made_by_either_path_form_one_chain(both: tuple[TestClient, TestClient]) -> None:
    fast, route = both
    assert fast.put("/v1/runs/c", json=run_spec(params={"patience": 0})).status_code == 201
    bodies = []
    for step in range(1, 9):
        client = fast if step % 2 else route
        r = client.post("/v1/runs/c/observations", json={"step": step, "value": 1.0})
        assert r.status_code == 200, r.text
        bodies.append(strict_json(r.content))
    log = strict_json(fast.get("/v1/runs/c/decisions").content)["items"]
    assert log == bodies
    assert [d["seq"] for d in log] == list(range(1, 9))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(log))


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1e400", "-0.0", "1e-400"]),
)


@settings(max_examples=400, deadline=None)
@given(value=numbers, step=st.integers(min_value=-1, max_value=2**63))
def test_the_fast_parse_reads_every_body_as_the_route_does(value: object, step: int) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        text = json.dumps({"step": step, "value": value})  # NaN, Infinity tokens, as clients send
    elif isinstance(value, str) and value in ("1e400", "-0.0", "1e-400"):
        text = f'{{"step": {step}, "value": {value}}}'  # a number token, written as such
    else:
        text = json.dumps({"step": step, "value": value})
    try:
        fast = ObservationIn.model_validate_json(text)
    except ValidationError:
        fast = None
    try:
        route = ObservationIn.model_validate(json.loads(text))
    except ValidationError:
        route = None
    if fast is None or route is None:
        assert fast is None, f"the fast path accepted what the route refuses: {text}"
        return  # the fast path left it to the route
    assert fast.step == route.step
    assert repr(fast.value) == repr(route.value), text
