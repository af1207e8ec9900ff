"""Elastic jobs under arbitrary interleavings (hypothesis): observations with and without a
world_size, resizes by request, rewinds, on one run. Whatever the order, the service answers
every valid request, its log verifies (in the service and offline, from the export), the run
row is where the log ends, and the export imports into another database byte for byte."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrpilot.audit.verify import check_bundle
from tests.conftest import app_client

BASE = 4
SIZES = st.sampled_from([1, 2, 3, 4, 6, 8, 16])
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("observe"),
            st.integers(1, 30),  # steps ahead
            st.one_of(st.floats(0.1, 2.0), st.just(math.nan)),
            st.one_of(st.none(), SIZES),
        ),
        st.tuples(st.just("resize"), st.integers(0, 30), SIZES),
        st.tuples(st.just("rewind"), st.integers(0, 60)),
    ),
    min_size=1,
    max_size=25,
)
POLICIES = [
    {"name": "plateau", "version": 1, "params": {"patience": 1, "factor": 0.5}},
    {"name": "cosine", "version": 1, "params": {"T_max": 200, "eta_min": 0.001}},
    {
        "name": "sequence",
        "version": 1,
        "params": {
            "phases": [
                {
                    "policy": {"name": "linear", "version": 1, "params": {"start_factor": 0.1}},
                    "until_step": 40,
                },
                {"policy": {"name": "plateau", "version": 1, "params": {"patience": 0}}},
            ]
        },
    },
]
_ids = itertools.count()


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, TestClient]]:
    here, there = (f"sqlite:///{tmp_path_factory.mktemp(n) / 'x.db'}" for n in ("here", "there"))
    with app_client(here) as api, app_client(there) as other:
        yield api, other


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, policy=st.sampled_from(POLICIES), rule=st.sampled_from(["linear", "sqrt"]))
def test_any_interleaving_verifies_and_round_trips(
    apps: tuple[TestClient, TestClient],
    ops: list[tuple[Any, ...]],
    policy: dict[str, Any],
    rule: str,
) -> None:
    api, other = apps
    run_id = f"p{next(_ids)}"
    spec = {
        "policy": policy,
        "base_lrs": [0.1, 0.01],
        "scaling": {"rule": rule, "by": "world_size", "base": BASE},
    }
    created = api.put(f"/v1/runs/{run_id}", json=spec)
    assert created.status_code == 201, created.text
    floor = 0  # no request below it may be taken: the last decided step or the last resize
    for op in ops:
        if op[0] == "observe":
            _, ahead, value, world = op
            body: dict[str, Any] = {
                "step": floor + ahead,
                "value": "NaN" if math.isnan(value) else value,
            }
            if world is not None:
                body["world_size"] = world
            r = api.post(f"/v1/runs/{run_id}/observations", json=body)
            assert r.status_code == 200, (op, r.text)
            floor = body["step"]
        elif op[0] == "resize":
            _, ahead, world = op
            r = api.post(
                f"/v1/runs/{run_id}/resize", json={"step": floor + ahead, "world_size": world}
            )
            assert r.status_code == 200, (op, r.text)
            if r.json()["resized"]:
                floor += ahead
        else:
            to_step = max(0, floor - op[1])
            r = api.post(f"/v1/runs/{run_id}/rewind", json={"to_step": to_step})
            assert r.status_code == 200, (op, r.text)
            if r.json()["rewound"]:
                floor = to_step
        run = api.get(f"/v1/runs/{run_id}").json()
        factor = run["scale"]["factor"]
        size = run["scale"]["size"]
        want = size / BASE if rule == "linear" else math.sqrt(size / BASE)
        assert factor == want, run
        at = api.get(f"/v1/runs/{run_id}/lr?step={floor}").json()["lrs"]
        assert api.get(f"/v1/runs/{run_id}/lrs?from={floor}&count=1").json()["lrs"] == [at]

    report = api.post(f"/v1/runs/{run_id}/verify").json()
    assert report["ok"], report
    text = api.get(f"/v1/runs/{run_id}/export").text
    raw = text.encode()
    offline = check_bundle(lambda: iter(raw.splitlines(keepends=True)))
    assert offline.ok, offline.report.as_dict()
    assert other.post("/v1/runs/import", content=text).status_code == 201
    assert other.get(f"/v1/runs/{run_id}/export").text == text
    mine, theirs = api.get(f"/v1/runs/{run_id}").json(), other.get(f"/v1/runs/{run_id}").json()
    for key in ("lrs", "scale", "last_step", "head_hash", "counts"):
        assert mine[key] == theirs[key], key
    assert other.post(f"/v1/runs/{run_id}/verify").json()["ok"]
