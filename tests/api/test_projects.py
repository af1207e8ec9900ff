"""Runs live in their project: the same run id in two projects is two runs (issue 14).

Each project creates, observes, reads, exports, imports, rewinds and verifies its own run of one
id without seeing or touching the other's; the two race on one id from many threads; their
aggregated ranks never share a report or a waiter. Both databases (``database_url``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from lrpilot.entries import verify_chain
from tests.conftest import app_client
from tests.helpers import bearer, make_token, run_spec, strict_json

GIVE_UP_S = 60.0  # only a hang takes this long


class Project:
    """One project's tokens (writer and admin), and its requests to the shared app."""

    def __init__(self, database_url: str, name: str) -> None:
        self.client: TestClient
        self.name = name
        self.writer = bearer(make_token(database_url, name, "writer"))
        self.admin = bearer(make_token(database_url, name, "admin"))

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.admin, **kwargs)

    def put(self, run_id: str, spec: dict[str, Any]) -> Any:
        return self.client.put(f"/v1/runs/{run_id}", json=spec, headers=self.writer)

    def observe(self, run_id: str, step: int, value: float, **more: int) -> Any:
        obs = {"step": step, "value": value, **more}
        return self.client.post(f"/v1/runs/{run_id}/observations", json=obs, headers=self.writer)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.client.post(path, headers=self.admin, **kwargs)

    def log(self, run_id: str) -> list[dict[str, Any]]:
        page = self.get(f"/v1/runs/{run_id}/decisions", params={"limit": 1000})
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items


@pytest.fixture
def projects(database_url: str) -> Iterator[tuple[Project, Project]]:
    p1, p2 = Project(database_url, "p1"), Project(database_url, "p2")
    with app_client(database_url, migrate=False) as client:  # tokens first: no open mode
        p1.client = p2.client = client
        yield p1, p2


def test_one_run_id_in_two_projects_is_two_runs(projects: tuple[Project, Project]) -> None:
    p1, p2 = projects
    spec1 = run_spec({"patience": 0}, base_lrs=[0.1], labels={"team": "one"})
    spec2 = run_spec({"patience": 5}, base_lrs=[0.5, 0.25], labels={"team": "two"})
    assert p1.put("shared", spec1).status_code == 201
    made = p2.put("shared", spec2)
    assert made.status_code == 201, made.text  # not a 404, not a 409: its own run
    assert p1.put("shared", spec1).status_code == 200  # each project's create is idempotent
    assert p2.put("shared", spec2).status_code == 200
    assert p2.put("shared", spec1).status_code == 409  # against p2's own spec, not p1's
    for step, value in ((1, 1.0), (2, 2.0), (3, 3.0)):  # p1: no improvement, patience 0
        assert p1.observe("shared", step, value).status_code == 200
    for step, value in ((10, 0.9), (20, 0.8)):
        assert p2.observe("shared", step, value).status_code == 200
    # a retry is checked against the project's own step: p2 never decided step 2
    assert p2.observe("shared", 2, 2.0).status_code == 409
    one, two = p1.get("/v1/runs/shared").json(), p2.get("/v1/runs/shared").json()
    assert (one["base_lrs"], one["last_step"], one["last_seq"]) == ([0.1], 3, 3)
    assert (two["base_lrs"], two["last_step"], two["last_seq"]) == ([0.5, 0.25], 20, 2)
    assert one["lrs"] != [0.1] and two["lrs"] == [0.5, 0.25]  # p1 reduced, p2 did not
    assert [d["step"] for d in p1.log("shared")] == [1, 2, 3]
    assert [d["step"] for d in p2.log("shared")] == [10, 20]
    assert [
        r["run_id"] for r in p1.get("/v1/runs", params={"label": "team:one"}).json()["items"]
    ] == ["shared"]
    assert p1.get("/v1/runs", params={"label": "team:two"}).json()["items"] == []
    assert p2.get("/v1/runs/shared/lr", params={"step": 15}).json()["lrs"] == [0.5, 0.25]
    assert p2.get("/v1/runs/shared/lrs", params={"from": 0, "count": 2}).json()["lrs"][0] == [
        0.5,
        0.25,
    ]
    assert p1.get("/v1/runs/shared/summary").json()["last_step"] == 3
    assert p2.get("/v1/runs/shared/summary").json()["last_step"] == 20
    # a rewind of p1's run leaves p2's as it was
    rewound = p1.post("/v1/runs/shared/rewind", json={"to_step": 1})
    assert rewound.status_code == 200 and rewound.json()["rewound"], rewound.text
    assert p2.get("/v1/runs/shared/summary").json()["superseded"] == 0
    assert p1.get("/v1/runs/shared/summary").json()["superseded"] == 2
    for p, head in ((p1, p1.get("/v1/runs/shared").json()["head_hash"]), (p2, two["head_hash"])):
        report = p.post("/v1/runs/shared/verify").json()
        assert report["ok"] and report["head_hash"] == head, report
        assert verify_chain(p.log("shared")).ok
    exports = [p.get("/v1/runs/shared/export").text for p in (p1, p2)]
    assert exports[0] != exports[1]
    assert all(strict_json(e.splitlines()[1])["run_id"] == "shared" for e in exports)
    # deciding in one project wakes no waiter of the other's run of that id
    waited = p2.get("/v1/runs/shared/lr", params={"step": 30, "wait": 0.3}).json()
    assert waited["certain"] is False and waited["decided_at_step"] == 20


def test_an_export_imports_into_another_project_under_its_id(
    projects: tuple[Project, Project],
) -> None:
    p1, p2 = projects
    assert p1.put("moved", run_spec({"patience": 1})).status_code == 201
    for step in range(1, 6):
        assert p1.observe("moved", step, 1.0).status_code == 200
    bundle = p1.get("/v1/runs/moved/export").content
    imported = p2.post("/v1/runs/import", content=bundle)
    assert imported.status_code == 201, imported.text
    original = p1.get("/v1/runs/moved").json()
    assert imported.json()["head_hash"] == original["head_hash"]
    assert p2.post("/v1/runs/moved/verify").json()["ok"]
    assert p2.get("/v1/runs/moved/export").content == bundle  # the same bytes, as imported
    # from here the two runs go their own ways
    assert p2.observe("moved", 6, 0.5).status_code == 200
    assert p1.get("/v1/runs/moved").json() == original
    assert p1.post("/v1/runs/import", content=bundle).status_code == 200  # p1 holds that log
    again = p2.post("/v1/runs/import", content=bundle)
    assert again.status_code == 409 and "exists with another log" in again.text  # p2's own
    assert p1.observe("moved", 6, 2.0).json()["value"] == 2.0
    assert p2.log("moved")[-1]["value"] == 0.5


def test_two_projects_racing_on_one_run_id_each_get_their_own(
    projects: tuple[Project, Project],
) -> None:
    p1, p2 = projects
    barrier = threading.Barrier(8)

    def create(p: Project) -> int:
        barrier.wait(GIVE_UP_S)
        status: int = p.put("race", run_spec({"patience": 2})).status_code
        return status

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(create, [p1, p2] * 4))
    for k in (0, 1):  # each project: one 201, three 200
        assert sorted(created[k::2]) == [200, 200, 200, 201], created
    values = {"p1": lambda s: 1.0 / (1 + s), "p2": lambda s: 2.0 + s}
    steps = list(range(1, 21))

    def post(p: Project) -> list[float]:
        # every step posted twice from each project (a retry), both projects at once: their
        # observations share the group commit's batches
        out = []
        for step in steps:
            for _ in range(2):
                r = p.observe("race", step, values[p.name](step))
                assert r.status_code == 200, r.text
                out.append(r.json()["value"])
        return out

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, [p1, p2, p1, p2]))
    for p, answered in ((p1, answers[0]), (p2, answers[1])):
        expected = [values[p.name](s) for s in steps for _ in range(2)]
        assert answered == expected
        log = p.log("race")
        assert [d["value"] for d in log] == [values[p.name](s) for s in steps]
        assert verify_chain(log).ok
        assert p.post("/v1/runs/race/verify").json()["ok"]


def test_aggregated_ranks_of_two_projects_never_share_a_step(
    projects: tuple[Project, Project], database_url: str
) -> None:
    """p1's rank 0 waits on step 1 of its run "agg" while p2's ranks decide step 1 of theirs:
    p1's rank gets nothing of it (no report counted, no decision handed over), and p1's step
    is decided from p1's ranks alone."""
    p1, p2 = projects
    spec = run_spec() | {"aggregate": {"timeout_s": GIVE_UP_S, "on_timeout": "decide"}}
    for p in (p1, p2):
        assert p.put("agg", spec).status_code == 201

    def rank(p: Project, r: int, value: float) -> dict[str, Any]:
        answer = p.observe("agg", 1, value, rank=r, world_size=2)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(rank, p1, 0, 1.0)
        _wait_for_report(database_url, "p1")
        theirs = [pool.submit(rank, p2, r, v) for r, v in ((0, 10.0), (1, 20.0))]
        two = [t.result(GIVE_UP_S) for t in theirs]
        assert two[0] == two[1] and two[0]["value"] == 15.0
        assert not first.done()  # p2's decision was not p1's
        last = pool.submit(rank, p1, 1, 3.0).result(GIVE_UP_S)
        assert first.result(GIVE_UP_S) == last
    assert last["value"] == 2.0 and [r["value"] for r in last["ranks"]] == [1.0, 3.0]
    for p in (p1, p2):
        assert p.post("/v1/runs/agg/verify").json()["ok"]


def _wait_for_report(database_url: str, project: str) -> None:
    """Until a rank's report of ``project`` is stored (its rank then waits for the others)."""
    engine = sa.create_engine(database_url)
    try:
        give_up = time.monotonic() + GIVE_UP_S
        while time.monotonic() < give_up:
            with engine.connect() as conn:
                found = conn.execute(
                    sa.text("SELECT count(*) FROM reports WHERE project = :p"), {"p": project}
                ).scalar()
            if found:
                return
            time.sleep(0.01)
        raise AssertionError(f"no report of {project} was stored")
    finally:
        engine.dispose()
