"""Bounded work per request (issue 14): whatever a request's fields hold, it costs a bounded
amount of CPU, memory, database time and answer size, and past a bound it gets a 4xx naming
the bound (and its setting); every error answer stays under 16 kB.

Each test is an attack as it was first seen against main, now refused (or answered small) on
both databases, and the run it aimed at still decides afterwards.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lrpilot.entries import MAX_LISTED_MISSING, Ranks, missing_ranges
from tests.conftest import app_client
from tests.helpers import run_spec, strict_json

MAX_ERROR = 16 * 1024  # the largest error answer, whatever the request
JSON = {"content-type": "application/json"}


def aggregated(timeout_s: float = 1.0, on_timeout: str = "decide") -> dict[str, Any]:
    spec = run_spec()
    spec["aggregate"] = {"timeout_s": timeout_s, "on_timeout": on_timeout}
    return spec


def refused(r: httpx.Response, status: int, *words: str) -> Any:
    """``r`` is a ``status`` refusal, small, whose text names each of ``words``."""
    assert r.status_code == status, r.text[:2000]
    assert len(r.content) < MAX_ERROR, len(r.content)
    for word in words:
        assert word in r.text, (word, r.text[:2000])
    return strict_json(r.text)["detail"]


def still_decides(api: TestClient, run_id: str, step: int, **ranks: int) -> None:
    body = {"step": step, "value": 0.5, **ranks}
    r = api.post(f"/v1/runs/{run_id}/observations", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["step"] == step
    assert api.post(f"/v1/runs/{run_id}/verify", json={}).json()["ok"] is True


# -- world sizes: a decision's size follows the ranks that reported ----------------------------


@pytest.mark.parametrize("world", [10**7, 2**31 - 1])
def test_a_world_size_past_the_bound_is_refused_before_any_work(
    api: TestClient, world: int
) -> None:
    # main: 10**7 stalled the service 17 s and stored a 168 MB decision; 2**31-1 a MemoryError
    assert api.put("/v1/runs/agg", json=aggregated()).status_code == 201
    path = "/v1/runs/agg/observations"
    r = api.post(path, json={"step": 1, "value": 1.0, "rank": 0, "world_size": world})
    refused(r, 422, "world_size", "65536", "LRPILOT_MAX_WORLD_SIZE")
    r = api.post(path, json={"step": 1, "value": 1.0, "rank": 70_000})
    refused(r, 422, "rank", "LRPILOT_MAX_WORLD_SIZE")
    assert api.get("/v1/runs/agg/decisions").json()["items"] == []
    still_decides(api, "agg", 1, rank=0, world_size=1)


def test_a_resize_past_the_world_bound_is_refused(api: TestClient) -> None:
    spec = run_spec()
    spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 8}
    assert api.put("/v1/runs/elastic", json=spec).status_code == 201
    r = api.post("/v1/runs/elastic/resize", json={"step": 0, "world_size": 2**31 - 1})
    refused(r, 422, "world_size", "LRPILOT_MAX_WORLD_SIZE")
    r = api.post(
        "/v1/runs/elastic/observations", json={"step": 1, "value": 1.0, "world_size": 10**6}
    )
    refused(r, 422, "LRPILOT_MAX_WORLD_SIZE")
    still_decides(api, "elastic", 1, world_size=16)
    assert api.get("/v1/runs/elastic").json()["scale"]["size"] == 16


def test_one_rank_of_the_largest_world_decides_a_small_entry(api: TestClient) -> None:
    # at the bound itself, one report and the timeout: the missing ranks are one range
    assert api.put("/v1/runs/lone", json=aggregated()).status_code == 201
    r = api.post(
        "/v1/runs/lone/observations",
        json={"step": 5, "value": 2.0, "rank": 3, "world_size": 65_536},
    )
    assert r.status_code == 200, r.text[:2000]
    assert len(r.content) < 4096, len(r.content)
    decision = r.json()
    assert decision["missing_ranges"] == [[0, 2], [4, 65_535]]
    assert "missing_ranks" not in decision and decision["timeout_s"] == 1.0
    assert (
        "ranks 3 of 65536 counted; 65535 ranks (0-2, 4-65535) did not report" in decision["reason"]
    )
    assert api.post("/v1/runs/lone/verify", json={}).json()["ok"] is True
    exported = api.get("/v1/runs/lone/export")
    assert exported.status_code == 200 and len(exported.content) < 8192
    still_decides(api, "lone", 6, rank=0, world_size=1)


def test_a_refused_timeout_names_the_missing_ranks_as_ranges(api: TestClient) -> None:
    assert api.put("/v1/runs/strict", json=aggregated(on_timeout="refuse")).status_code == 201
    body = {"step": 5, "value": 2.0, "rank": 0, "world_size": 65_536}
    r = api.post("/v1/runs/strict/observations", json=body)
    refused(r, 409, "ranks 1-65535 of 65536 did not report")
    assert len(r.content) < 1024


def test_a_service_that_takes_any_world_stays_bounded_by_the_reports(database_url: str) -> None:
    # the bound is a setting; raised to the largest, the entry still follows the reports
    with app_client(database_url, migrate=False, max_world_size=2**31 - 1) as api:
        assert api.put("/v1/runs/huge", json=aggregated()).status_code == 201
        body = {"step": 1, "value": 1.0, "rank": 0, "world_size": 2**31 - 1}
        r = api.post("/v1/runs/huge/observations", json=body)
        assert r.status_code == 200, r.text[:2000]
        assert len(r.content) < 4096 and r.json()["missing_ranges"] == [[1, 2**31 - 2]]
        assert api.post("/v1/runs/huge/verify", json={}).json()["ok"] is True
    with app_client(database_url, migrate=False, max_world_size=8) as api:
        r = api.post("/v1/runs/huge/observations", json={**body, "step": 2, "world_size": 9})
        refused(r, 422, "largest world size 8")


def test_few_missing_ranks_keep_the_listed_shape() -> None:
    # entries written before ranges keep their bytes: up to MAX_LISTED_MISSING they are listed
    counted = [{"rank": 0, "value": 1.0, "weight": 1.0}]
    listed = Ranks.at_timeout(counted, MAX_LISTED_MISSING + 1, 1.0)
    assert listed.missing == list(range(1, MAX_LISTED_MISSING + 1))
    assert listed.missing_ranges is None
    ranged = Ranks.at_timeout(counted, MAX_LISTED_MISSING + 2, 1.0)
    assert ranged.missing == [] and ranged.missing_ranges == [[1, MAX_LISTED_MISSING + 1]]
    assert missing_ranges([0, 1, 5, 9], 10) == [(2, 4), (6, 8)]
    assert missing_ranges([], 3) == [(0, 2)] and missing_ranges([0, 1, 2], 3) == []
