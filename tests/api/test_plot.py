"""GET /v1/runs/{run_id}/plot: the run at a screen's resolution, checked against the decision
log itself: each bucket's min and max are those of the entries of its steps, every marker is an
entry whole, superseded branches are apart from the live one; the answer's size is bounded by
``points`` and the markers' bound, whatever the run's length."""

from __future__ import annotations

import math
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient

from lrpilot.canonical import parse_float
from lrpilot.store import plots
from lrpilot.store.db import alembic_config, upgrade
from tests.conftest import app_client
from tests.helpers import bearer, make_token, run_spec


def observe(client: TestClient, run_id: str, values: list[tuple[int, Any]]) -> None:
    for step, value in values:
        r = client.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text


def log(client: TestClient, run_id: str, superseded: bool | None = None) -> list[dict[str, Any]]:
    """The whole decision log (or one branch), oldest first."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        params: dict[str, Any] = {"after": after, "limit": 1000}
        if superseded is not None:
            params["superseded"] = superseded
        page = client.get(f"/v1/runs/{run_id}/decisions", params=params).json()
        items += page["items"]
        if page["next"] is None:
            return items
        after = page["next"]


def expected_bucket(entries: list[dict[str, Any]], groups: int) -> dict[str, Any]:
    metrics = [parse_float(e["value"]) for e in entries if e["value"] is not None]
    finite = [m for m in metrics if math.isfinite(m)]
    return {
        "step_lo": min(e["step"] for e in entries),
        "step_hi": max(e["step"] for e in entries),
        "count": len(entries),
        "lr_min": [min(e["lrs"][g] for e in entries) for g in range(groups)],
        "lr_max": [max(e["lrs"][g] for e in entries) for g in range(groups)],
        "metric_min": min(finite) if finite else None,
        "metric_max": max(finite) if finite else None,
    }


def check_buckets(
    buckets: list[dict[str, Any]], entries: list[dict[str, Any]], plot: dict[str, Any]
) -> None:
    """Each bucket is what the entries of its steps make (buckets are aligned on multiples of
    bucket_steps), and every entry is in one."""
    width = plot["bucket_steps"]
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        if plot["from_step"] <= e["step"] <= plot["to_step"]:
            by_bucket.setdefault(e["step"] // width, []).append(e)
    assert buckets == [expected_bucket(by_bucket[b], plot["groups"]) for b in sorted(by_bucket)]


def test_the_plot_is_the_log_reduced(database_url: str) -> None:
    with app_client(database_url, peer="127.0.0.1") as client:
        spec = run_spec(params={"patience": 2, "cooldown": 2}, base_lrs=[0.1, 0.02])
        assert client.put("/v1/runs/r", json=spec).status_code == 201
        values: list[tuple[int, Any]] = [(s, 1.0 - 0.01 * s) for s in range(1, 21)]
        values += [(s, 0.9) for s in range(21, 41)]  # plateaus: reductions, cooldowns
        values += [(41, "NaN"), (42, 0.5)]
        observe(client, "r", values)
        r = client.post("/v1/runs/r/rewind", json={"to_step": 30})
        assert r.status_code == 200, r.text
        observe(client, "r", [(s, 0.95) for s in range(31, 46)])

        plot = client.get("/v1/runs/r/plot", params={"points": 7}).json()
        live = log(client, "r", superseded=False)
        assert (plot["from_step"], plot["to_step"], plot["groups"]) == (1, 45, 2)
        assert len(plot["buckets"]) <= 7
        check_buckets(plot["buckets"], live, plot)
        # the markers: the entries that changed something, whole, from the log
        kept, previous = [], None
        for e in live:
            if e["action"] != "hold" and (
                e["action"] != previous or e["action"] in ("reduce", "rewind")
            ):
                kept.append(e)
            previous = e["action"]
        assert [e["action"] for e in kept].count("reduce") >= 2
        assert "rewind" in [e["action"] for e in kept] and "cooldown" in [e["action"] for e in kept]
        assert plot["events"] == [
            {
                "seq": e["seq"],
                "step": e["step"],
                "action": e["action"],
                "reason": e["reason"],
                "lrs": e["lrs"],
                "previous_lrs": e["previous_lrs"],
                "metric": e["value"],
                **({"rewind": e["rewind"]} if "rewind" in e else {}),
            }
            for e in kept
        ]
        assert plot["truncated_events"] is False
        # the rewind superseded steps 31..42 of the first branch: drawn apart, never live
        gone = log(client, "r", superseded=True)
        assert [b["from_seq"] for b in plot["superseded"]] == [gone[0]["seq"]]
        assert plot["superseded"][0]["to_seq"] == gone[-1]["seq"]
        check_buckets(plot["superseded"][0]["buckets"], gone, plot)

        # a zoomed range: only its steps, at its own resolution
        zoom = client.get(
            "/v1/runs/r/plot", params={"points": 100, "from_step": 10, "to_step": 20}
        ).json()
        assert zoom["bucket_steps"] == 1 and len(zoom["buckets"]) == 11
        check_buckets(zoom["buckets"], live, zoom)
        assert all(10 <= e["step"] <= 20 for e in zoom["events"])


def test_a_long_phase_is_one_marker_and_markers_are_bounded(database_url: str) -> None:
    with app_client(database_url, peer="127.0.0.1") as client:
        spec = {
            "policy": {"name": "cosine", "version": 1, "params": {"T_max": 400}},
            "base_lrs": [0.1],
        }
        assert client.put("/v1/runs/c", json=spec).status_code == 201, spec
        observe(client, "c", [(s, 1.0) for s in range(0, 300, 3)])
        plot = client.get("/v1/runs/c/plot", params={"points": 10}).json()
        assert [e["action"] for e in plot["events"]] == ["decay"]  # where the decay began
        assert sum(b["count"] for b in plot["buckets"]) == 100
        assert len(plot["buckets"]) <= 10
        check_buckets(plot["buckets"], log(client, "c"), plot)
        sparkline = client.get("/v1/runs/c/plot", params={"points": 1}).json()["buckets"]
        assert len(sparkline) == 1 and sparkline[0]["lr_max"] == [0.1]


def test_bad_queries_are_422_and_other_runs_404(database_url: str) -> None:
    with app_client(database_url, peer="127.0.0.1") as client:
        assert client.put("/v1/runs/e", json=run_spec()).status_code == 201
        empty = client.get("/v1/runs/e/plot").json()  # no entry yet: an empty plot
        assert empty["buckets"] == [] and empty["events"] == [] and empty["superseded"] == []
        for params in (
            {"points": 0},
            {"points": 10_001},
            {"from_step": -1},
            {"from_step": 5, "to_step": 4},
            {"points": "x"},
        ):
            r = client.get("/v1/runs/e/plot", params=params)
            assert r.status_code == 422, (params, r.text)
        assert client.get("/v1/runs/nope/plot").status_code == 404
        big = client.get("/v1/runs/e/plot", params={"from_step": 0, "to_step": 2**62}).json()
        assert big["buckets"] == [] and big["bucket_steps"] > 0


def markers(entries: list[dict[str, Any]], first: int, last: int) -> list[int]:
    """The seqs of the markers of steps first..last, by the rule, from the live log."""
    kept, previous = [], None
    for e in entries:
        marker = e["action"] != "hold" and (
            e["action"] != previous or e["action"] in ("reduce", "rewind", "scale")
        )
        if marker and first <= e["step"] <= last:
            kept.append(e["seq"])
        previous = e["action"]
    return kept


def test_a_long_runs_tiles_answer_as_the_log_does(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run long enough keeps its tiles (a cache, store.plots.Tiles): made on the first plot,
    caught up with new entries, made anew after a rewind; every answer checked against the
    log, for the whole run, zooms with partial edges, and a range finer than the tiles."""
    monkeypatch.setattr(plots, "CACHED_FROM", 40)
    monkeypatch.setattr(plots, "SLICE_TILES_LOG2", 1)  # made in slices of 2 tiles
    with app_client(database_url, peer="127.0.0.1") as client:
        spec = run_spec(params={"patience": 3, "cooldown": 1}, base_lrs=[0.1, 0.02])
        assert client.put("/v1/runs/t", json=spec).status_code == 201
        noisy = [(10 * s, 1.0 / s + (0.3 if s % 7 == 0 else 0.0)) for s in range(1, 121)]
        observe(client, "t", [*noisy[:60], (610, "NaN"), *noisy[61:]])

        def checked() -> None:
            live = log(client, "t", superseded=False)
            last = (
                live[-1]["step"] if live[-1]["action"] != "rewind" else max(e["step"] for e in live)
            )
            for params in (
                {"points": 1000},
                {"points": 7},
                {"points": 3},
                {"points": 5, "from_step": 95, "to_step": 777},
                {"points": 1000, "from_step": 95, "to_step": 777},
                {"points": 2, "from_step": 0, "to_step": 10_000},
            ):
                plot = client.get("/v1/runs/t/plot", params=params).json()
                assert len(plot["buckets"]) <= params["points"], params
                check_buckets(plot["buckets"], live, plot)
                seqs = [e["seq"] for e in plot["events"]]
                assert seqs == markers(live, plot["from_step"], plot["to_step"]), params
            assert plot["to_step"] == 10_000 and last <= 10_000

        checked()  # the tiles made
        kept = client.app.state.store._tiles._runs  # type: ignore[attr-defined]
        assert list(kept) == [("default", "t")]  # the run's tiles answered the wide plots
        observe(client, "t", [(1210 + 10 * k, 0.5 + 0.01 * k) for k in range(30)])
        checked()  # caught up with 30 entries
        r = client.post("/v1/runs/t/rewind", json={"to_step": 800})
        assert r.status_code == 200, r.text
        observe(client, "t", [(810 + 10 * k, 0.2) for k in range(10)])
        checked()  # made anew: the rewind moved the live branch back
        plot = client.get("/v1/runs/t/plot", params={"points": 4}).json()
        gone = log(client, "t", superseded=True)
        assert [(b["from_seq"], b["to_seq"]) for b in plot["superseded"]] == [
            (gone[0]["seq"], gone[-1]["seq"])
        ]


def test_a_freshly_started_app_plots_a_long_run_as_the_long_lived_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run's tiles in the database (store.plots: a CHUNK of seqs at a time, written with
    the entries, cut back by a rewind) give an app that holds none in memory the plot that the
    app which watched the run grow served: two param groups, a scale entry, two rewinds; and
    the same run imported (its tiles written by the import)."""
    monkeypatch.setattr(plots, "CACHED_FROM", 40)
    monkeypatch.setattr(plots, "CHUNK", 16)
    mine, theirs = make_token(database_url, "p", "admin"), make_token(database_url, "q", "admin")

    def observe_as(client: TestClient, values: list[tuple[int, float]]) -> None:
        for step, value in values:
            obs = {"step": step, "value": value}
            r = client.post("/v1/runs/t/observations", json=obs, headers=bearer(mine))
            assert r.status_code == 200, r.text

    spec = run_spec(params={"patience": 3, "cooldown": 1}, base_lrs=[0.1, 0.02])
    spec["scaling"] = {"rule": "linear", "by": "world_size", "base": 2}
    with app_client(database_url, migrate=False) as client:
        assert client.put("/v1/runs/t", json=spec, headers=bearer(mine)).status_code == 201
        observe_as(client, [(10 * s, 1.0 / s + (0.3 if s % 7 == 0 else 0.0)) for s in range(1, 61)])
        served(client, bearer(mine))  # the long-lived app's tiles made, then caught up
        resize = {"step": 610, "world_size": 4}
        r = client.post("/v1/runs/t/resize", json=resize, headers=bearer(mine))
        assert r.status_code == 200, r.text
        observe_as(client, [(10 * s, 0.5 + 0.01 * (s % 5)) for s in range(61, 101)])
        served(client, bearer(mine))
        for to_step, values in ((800, [(810 + 10 * k, 0.2) for k in range(25)]), (705, [])):
            r = client.post("/v1/runs/t/rewind", json={"to_step": to_step}, headers=bearer(mine))
            assert r.status_code == 200, r.text
            observe_as(client, values)
        observe_as(client, [(710 + 10 * k, 0.3 - 0.001 * k) for k in range(37)])
        watched = served(client, bearer(mine))
        live = log_of(client, bearer(mine))
        assert {"scale", "rewind", "reduce"} <= {e["action"] for e in live}
        for plot in watched:
            check_buckets(plot["buckets"], live, plot)
            assert [e["seq"] for e in plot["events"]] == markers(
                live, plot["from_step"], plot["to_step"]
            )
        assert watched[0]["superseded"]  # both rewinds' branches, drawn apart
        bundle = client.get("/v1/runs/t/export", headers=bearer(mine)).content
    with app_client(database_url, migrate=False) as fresh:
        assert served(fresh, bearer(mine)) == watched
        kept = fresh.app.state.store._tiles._runs  # type: ignore[attr-defined]
        assert kept[("p", "t")].tiled > 0  # read from the database's tiles, not the log
        r = fresh.post("/v1/runs/import", content=bundle, headers=bearer(theirs))
        assert r.status_code == 201, r.text
        assert served(fresh, bearer(theirs)) == watched


# the plots of run t compared: the whole run, wide and narrow, and zooms with partial edges
QUERIES: list[dict[str, Any]] = [
    {"points": 1000},
    {"points": 7},
    {"points": 3},
    {"points": 5, "from_step": 95, "to_step": 777},
    {"points": 1000, "from_step": 95, "to_step": 777},
]


def served(client: TestClient, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [client.get("/v1/runs/t/plot", params=q, headers=headers).json() for q in QUERIES]


def test_migration_0014_makes_the_tiles_of_the_runs_that_exist(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database whose long run was written before the tiles existed (0013: downgraded to
    it) gets them from migration 0014, and a fresh app plots the run from them as the app
    that wrote it did."""
    monkeypatch.setattr(plots, "CACHED_FROM", 40)
    monkeypatch.setattr(plots, "CHUNK", 16)
    with app_client(database_url, peer="127.0.0.1") as client:
        spec = run_spec(params={"patience": 3, "cooldown": 1}, base_lrs=[0.1, 0.02])
        assert client.put("/v1/runs/t", json=spec).status_code == 201
        observe(client, "t", [(10 * s, 1.0 / s + 0.3 * (s % 7 == 0)) for s in range(1, 91)])
        assert client.post("/v1/runs/t/rewind", json={"to_step": 555}).status_code == 200
        observe(client, "t", [(560 + 10 * k, 0.25) for k in range(20)])
        watched = served(client)
    command.downgrade(alembic_config(database_url), "0013")
    upgrade(database_url)
    with app_client(database_url, migrate=False, peer="127.0.0.1") as fresh:
        assert served(fresh) == watched
        kept = fresh.app.state.store._tiles._runs  # type: ignore[attr-defined]
        assert kept[("default", "t")].tiled > 0  # read from the tiles the migration made


def log_of(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The live branch of run t, oldest first, read with ``headers``."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        params: dict[str, Any] = {"after": after, "limit": 1000, "superseded": False}
        page = client.get("/v1/runs/t/decisions", params=params, headers=headers).json()
        items += page["items"]
        if page["next"] is None:
            return items
        after = page["next"]
