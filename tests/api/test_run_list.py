"""GET /v1/runs for the dashboard's list: each run's last entry (action, time), filters by
policy and state, and the order by last activity, paged with the same `after`/`next` as the
run_id order; a token sees its project's runs only."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import app_client
from tests.helpers import bearer, make_token, run_spec

RANGE_TEST = {"policy": {"name": "range_test", "version": 1, "params": {}}, "base_lrs": [0.1]}


def ids(client: TestClient, **params: Any) -> list[str]:
    r = client.get("/v1/runs", params=params)
    assert r.status_code == 200, r.text
    return [item["run_id"] for item in r.json()["items"]]


def pages(client: TestClient, **params: Any) -> list[str]:
    """Every run, a page of one at a time."""
    seen: list[str] = []
    after = None
    while True:
        query = {**params, "limit": 1, **({"after": after} if after else {})}
        page = client.get("/v1/runs", params=query).json()
        seen += [item["run_id"] for item in page["items"]]
        after = page["next"]
        if after is None:
            return seen


def observe(client: TestClient, run_id: str, step: int, value: Any) -> None:
    r = client.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value})
    assert r.status_code == 200, r.text


def test_filters_activity_order_and_the_last_entry(database_url: str) -> None:
    with app_client(database_url, peer="127.0.0.1") as client:
        for run_id, spec in (
            ("a", run_spec()),
            ("b", run_spec(params={"patience": 0})),
            ("c", RANGE_TEST),
            ("d", {**run_spec(), "policy": {"name": "plateau", "version": 2, "params": {}}}),
        ):
            assert client.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
        fresh = client.get("/v1/runs/a").json()
        assert fresh["last_action"] is None and fresh["last_decision_at"] is None
        observe(client, "c", 0, 1.0)
        observe(client, "c", 1, "NaN")  # the range test diverged: stop
        observe(client, "a", 1, 1.0)
        observe(client, "b", 1, 1.0)
        observe(client, "b", 2, 2.0)  # patience 0: reduce
        # the last activity first; a run without entries by its creation
        assert ids(client, sort="activity") == ["b", "a", "c", "d"]
        assert pages(client, sort="activity") == ["b", "a", "c", "d"]
        assert pages(client) == ["a", "b", "c", "d"]  # the default order stays
        runs = {r["run_id"]: r for r in client.get("/v1/runs").json()["items"]}
        decisions = client.get("/v1/runs/b/decisions").json()["items"]
        assert runs["b"]["last_action"] == "reduce" and runs["b"]["last_step"] == 2
        assert runs["b"]["last_decision_at"] == decisions[-1]["created_at"]
        assert runs["b"]["lrs"] == decisions[-1]["lrs"]
        assert ids(client, state="stopped") == ["c"]
        assert ids(client, state="active") == ["a", "b", "d"]
        assert ids(client, policy="plateau") == ["a", "b", "d"]
        assert ids(client, policy="plateau@2") == ["d"]
        assert ids(client, policy="range_test", state="active") == []
        assert ids(client, policy="plat") == []  # a family is a whole name
        # a rewind is activity, and the stop is no longer the last entry
        r = client.post("/v1/runs/c/rewind", json={"to_step": 0})
        assert r.status_code == 200, r.text
        assert ids(client, sort="activity")[0] == "c"
        assert ids(client, state="stopped") == []
        assert client.post("/v1/runs/c/verify").json()["ok"] is True
        for bad in (
            {"sort": "time"},
            {"state": "done"},
            {"policy": "Plateau"},
            {"policy": "plateau@x"},
            {"sort": "activity", "after": "nope"},
        ):
            r = client.get("/v1/runs", params=bad)
            assert r.status_code == 422, (bad, r.text)


def test_a_token_lists_its_projects_runs_only(database_url: str) -> None:
    mine, theirs = (
        make_token(database_url, "p1", "writer"),
        make_token(database_url, "p2", "reader"),
    )
    with app_client(database_url, migrate=False) as client:
        for run_id in ("x", "y"):
            r = client.put(f"/v1/runs/{run_id}", json=run_spec(), headers=bearer(mine))
            assert r.status_code == 201
        for params in ({}, {"sort": "activity"}, {"state": "active"}, {"policy": "plateau"}):
            r = client.get("/v1/runs", params=params, headers=bearer(theirs))
            assert r.json() == {"items": [], "next": None}, params
        r = client.get(
            "/v1/runs", params={"sort": "activity", "after": "x"}, headers=bearer(theirs)
        )
        assert r.status_code == 422  # another project's run is no cursor either
