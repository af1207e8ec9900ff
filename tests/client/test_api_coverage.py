"""The client covers the whole HTTP API: every OpenAPI operation has a method in `Client` and
in `AsyncClient` (the table below), each takes every query parameter of its operation, and
each works against the real service (uvicorn) on SQLite and, when it is set up, PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lrpilot.app import create_app
from lrpilot.settings import Settings
from lrpilot_client import (
    AsyncClient,
    Client,
    Decision,
    LrAt,
    LrsAhead,
    LrsInForce,
    LrsRange,
    NotFoundError,
    ValidationError,
)
from lrpilot_client._ndjson import LineSplitter
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import SPLITS_LINES, plateau_stream

# (method, path) -> (Client method, AsyncClient method). A route without a row fails the test.
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("PUT", "/v1/runs/{run_id}"): ("create_run", "create_run"),
    ("GET", "/v1/runs/{run_id}"): ("get_run", "get_run"),
    ("GET", "/v1/runs"): ("list_runs", "list_runs"),
    ("POST", "/v1/runs/{run_id}/observations"): ("observe", "observe"),
    ("GET", "/v1/runs/{run_id}/lr"): ("lr_at", "lr_at"),
    ("GET", "/v1/runs/{run_id}/lrs"): ("lrs_range", "lrs_range"),
    ("GET", "/v1/runs/{run_id}/decisions"): ("decisions", "decisions"),
    ("POST", "/v1/runs/{run_id}/resize"): ("resize", "resize"),
    ("POST", "/v1/runs/{run_id}/applied"): ("acknowledge", "acknowledge"),
    ("POST", "/v1/runs/{run_id}/rewind"): ("rewind", "rewind"),
    ("POST", "/v1/runs/{run_id}/checkpoints"): ("declare_checkpoint", "declare_checkpoint"),
    ("GET", "/v1/runs/{run_id}/checkpoints"): ("checkpoints", "checkpoints"),
    ("POST", "/v1/runs/{run_id}/cooldown"): ("cooldown", "cooldown"),
    ("POST", "/v1/runs/{run_id}/retime"): ("retime", "retime"),
    ("GET", "/v1/runs/{run_id}/summary"): ("summary", "summary"),
    ("GET", "/v1/runs/{run_id}/plot"): ("plot", "plot"),
    ("GET", "/v1/runs/{run_id}/export"): ("export", "export"),
    ("POST", "/v1/runs/import"): ("import_bundle", "import_bundle"),
    ("POST", "/v1/runs/{run_id}/verify"): ("verify", "verify"),
    ("POST", "/v1/simulate"): ("simulate", "simulate"),
    ("GET", "/v1/policies"): ("policies", "policies"),
    ("POST", "/v1/tokens"): ("create_token", "create_token"),
    ("GET", "/v1/tokens"): ("list_tokens", "list_tokens"),
    ("POST", "/v1/tokens/{name}/revoke"): ("revoke_token", "revoke_token"),
    ("GET", "/healthz"): ("health", "health"),
    ("GET", "/readyz"): ("ready", "ready"),
    ("GET", "/metrics"): ("metrics", "metrics"),
}
# a query parameter whose client argument has another name (a Python keyword, a plural)
ARGUMENT_OF = {"from": "first", "label": "labels"}

PARAMS = {"patience": 1, "factor": 0.5}


def openapi_operations(where: Path) -> dict[tuple[str, str], dict[str, Any]]:
    spec = create_app(Settings(database_url=f"sqlite:///{where / 'openapi.db'}")).openapi()
    return {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def test_every_operation_has_a_method_in_both_clients(tmp_path: Path) -> None:
    operations = openapi_operations(tmp_path)
    served = {op for op in operations if op[0] != "HEAD"}
    # HEAD is GET without the body, answered by the same route: the GET's method covers it
    assert {("GET", path) for method, path in operations if method == "HEAD"} <= served
    assert served == set(OPERATIONS), (
        f"without a client method: {sorted(served - set(OPERATIONS))}; "
        f"in the table but not served: {sorted(set(OPERATIONS) - served)}"
    )
    for op, (sync_name, async_name) in OPERATIONS.items():
        sync_method = getattr(Client, sync_name)
        async_method = getattr(AsyncClient, async_name)
        assert not inspect.iscoroutinefunction(sync_method), op
        assert inspect.iscoroutinefunction(async_method), op
        query = {p["name"] for p in operations[op].get("parameters", []) if p["in"] == "query"}
        for params in (inspect.signature(sync_method), inspect.signature(async_method)):
            missing = {ARGUMENT_OF.get(q, q) for q in query} - set(params.parameters)
            assert not missing, f"{op}: the client takes no {sorted(missing)}"


def test_the_former_names_stay_aliases() -> None:
    assert LrsInForce is LrAt and LrsAhead is LrsRange
    for cls in (Client, AsyncClient):
        assert cls.lrs_in_force is cls.lr_at and cls.lrs_ahead is cls.lrs_range


# --- against the real service ---------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    where = tmp_path_factory.mktemp("coverage")
    live = LiveServer(empty_database(request.param, where), log=where / "serve.log").start()
    try:
        yield live
    finally:
        live.stop()


def client_of(server: LiveServer) -> Client:
    return Client(server.url, retries=1, on_unavailable="raise", identity={})


def recorded(lrpilot: Client, run_id: str, labels: dict[str, str] | None = None) -> None:
    """Twelve observations, a rewind to step 60 and four more: a log with both branches."""
    lrpilot.create_run(run_id, "plateau", 1, PARAMS, [0.1], "val_loss", labels)
    for step, value in plateau_stream(12):
        lrpilot.observe(run_id, step, value)
    lrpilot.rewind(run_id, 60)
    for step, value in plateau_stream(4, seed=3, start_step=70):
        lrpilot.observe(run_id, step, value)


def test_list_runs_filters_by_label_and_pages(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        for i in range(5):
            team = "a" if i % 2 else "b"
            lrpilot.create_run(f"list-{i}", base_lrs=[0.1], labels={"team": team, "k": "v"})
        page = lrpilot.list_runs({"team": "a"}, limit=1)
        assert [r.run_id for r in page.items] == ["list-1"] and page.next == "list-1"
        rest = lrpilot.list_runs({"team": "a"}, after=page.next, limit=10)
        assert [r.run_id for r in rest.items] == ["list-3"] and rest.next is None
        both = [r.run_id for r in lrpilot.iter_runs({"team": "b", "k": "v"}, limit=2)]
        assert both == ["list-0", "list-2", "list-4"]
        assert all(r.labels["k"] == "v" for r in lrpilot.iter_runs({"k": "v"}, limit=1))
        assert not lrpilot.list_runs({"team": "nobody"}).items
        with pytest.raises(ValidationError):
            lrpilot.list_runs({"": "no key"})


def test_plot_and_the_run_list_for_the_dashboard(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "plotted")
        plot = lrpilot.plot("plotted", points=5)
        live = list(lrpilot.iter_decisions("plotted", superseded=False))
        assert (plot.from_step, plot.to_step, plot.groups) == (10, 120, 1)
        assert len(plot.buckets) <= 5 and sum(b.count for b in plot.buckets) == len(live)
        assert plot.buckets[0].lr_max == (0.1,) and plot.buckets[0].step_lo == 10
        # a marker: an entry that is no hold, where its action begins (a reduce, a rewind:
        # every time)
        actions = [d.action for d in live]
        assert [e.seq for e in plot.events] == [
            d.seq
            for i, d in enumerate(live)
            if d.action != "hold"
            and (i == 0 or d.action != actions[i - 1] or d.action in ("reduce", "rewind"))
        ]
        rewind = next(e for e in plot.events if e.action == "rewind")
        assert rewind.metric is None and rewind.rewind and rewind.rewind["to_step"] == 60
        assert [b.from_seq for b in plot.superseded] == [
            min(d.seq for d in lrpilot.iter_decisions("plotted", superseded=True))
        ]
        zoom = lrpilot.plot("plotted", points=100, from_step=30, to_step=50)
        assert [b.step_lo for b in zoom.buckets] == [30, 40, 50]
        run = lrpilot.get_run("plotted")
        assert run.last_action == live[-1].action
        assert run.last_decision_at == live[-1].created_at
        newest = lrpilot.list_runs(sort="activity", limit=1).items[0]
        assert newest.run_id == "plotted"
        listed = [r.run_id for r in lrpilot.iter_runs(policy="plateau@1", state="active")]
        assert "plotted" in listed
        assert not lrpilot.list_runs(state="stopped").items
        with pytest.raises(NotFoundError):
            lrpilot.plot("nosuch")


def test_decision_filters_select_the_branch_the_steps_and_the_action(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "filters")
        every = list(lrpilot.iter_decisions("filters", limit=3))
        live = list(lrpilot.iter_decisions("filters", superseded=False, limit=3))
        gone = list(lrpilot.iter_decisions("filters", superseded=True))
        assert sorted(d.seq for d in live + gone) == [d.seq for d in every]
        assert [d.step for d in gone] == [70, 80, 90, 100, 110, 120]
        assert all(d.step <= 60 or d.seq > gone[-1].seq for d in live)
        window = lrpilot.decisions("filters", from_step=30, to_step=50, superseded=False)
        assert [d.step for d in window.items] == [30, 40, 50] and window.next is None
        rewinds = list(lrpilot.iter_decisions("filters", "rewind"))
        assert len(rewinds) == 1 and rewinds[0].rewind and rewinds[0].rewind["to_step"] == 60
        reduced = list(lrpilot.iter_decisions("filters", action="reduce", superseded=False))
        assert reduced and all(d.action == "reduce" for d in reduced)


def test_checkpoints_come_a_page_at_a_time(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        lrpilot.create_run("saved", "plateau", 1, PARAMS, [0.1], "val_loss")
        lrpilot.observe("saved", 50, 0.5)
        for step in range(10, 80, 10):
            lrpilot.declare_checkpoint("saved", step, f"ckpt-{step}")
        lrpilot.rewind("saved", 40)
        first = lrpilot.checkpoints("saved", limit=3)
        assert [c.step for c in first.items] == [10, 20, 30] and first.next == first.items[-1].seq
        every = list(lrpilot.iter_checkpoints("saved", limit=3))
        assert [(c.step, c.superseded) for c in every] == [(s, s > 40) for s in range(10, 80, 10)]
        rest = lrpilot.checkpoints("saved", after=first.next)
        assert rest.items == tuple(every[3:]) and rest.next is None
        summary = lrpilot.summary("saved")
        assert [c["step"] for c in summary.checkpoints] == [10, 20, 30, 40]
        assert summary.checkpoint_count == 4

    async def scenario() -> None:
        async with AsyncClient(server.url, retries=1, identity={}) as lrpilot:
            assert [c async for c in lrpilot.iter_checkpoints("saved", limit=2)] == every

    asyncio.run(scenario())


def test_summary_verify_and_the_rates(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "summary")
        run = lrpilot.get_run("summary")
        live = [d for d in lrpilot.iter_decisions("summary", superseded=False)]
        observed = [d for d in live if d.action != "rewind"]
        summary = lrpilot.summary("summary")
        assert summary.decisions == len(observed) and summary.superseded == 6
        assert summary.first_step == 10 and summary.last_step == run.last_step == 100
        assert summary.head_hash == run.head_hash and summary.lrs == run.lrs
        best = min(observed, key=lambda d: (d.value, d.step))
        assert (summary.best.value, summary.best.step, summary.best.mode) == (
            best.value, best.step, "min",
        )  # fmt: skip
        assert [c.step for c in summary.lr_changes] == [
            d.step for d in observed if d.lrs != d.previous_lrs
        ]
        verified = lrpilot.verify("summary", head=run.head_hash)
        assert verified.ok and verified.rewinds == 1 and verified.last_step == 100
        assert not lrpilot.verify("summary", head="0" * 64).ok
        at = lrpilot.lr_at("summary", 45, wait=1.0)
        assert at.certain is True and at.decided_at_step == 40
        assert lrpilot.lrs_in_force("summary", 45) == at
        ahead = lrpilot.lrs_range("summary", 40, 70)
        assert ahead.at(45) == at.lrs and ahead.at(100) == run.lrs
        with pytest.raises(NotFoundError):
            lrpilot.summary("nosuch")


def test_export_streams_and_import_checks_the_bundle(
    server: LiveServer, live_server: LiveServer, tmp_path: Path
) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "bundle")
        path = tmp_path / "bundle.ndjson"
        written = lrpilot.export("bundle", path)
        lines = list(lrpilot.export_lines("bundle"))
        assert path.stat().st_size == written and path.read_text().splitlines() == lines
        assert json.loads(lines[0])["run"]["run_id"] == "bundle"
        assert len(lines) == 2 + 12 + 1 + 4  # header, decisions, rewind, trailer
        again = lrpilot.import_bundle(path)  # the very log: nothing changes
        assert not again.created and again.run.head_hash == lrpilot.get_run("bundle").head_hash
        with pytest.raises(NotFoundError):
            lrpilot.export("nosuch", tmp_path / "nosuch.ndjson")
        assert not (tmp_path / "nosuch.ndjson").exists()
    with client_of(live_server) as elsewhere:  # another service: a new run
        imported = elsewhere.import_bundle(path)
        assert imported.created and imported.run.counts.decisions == 17
        assert elsewhere.verify("bundle").ok
        tampered = tmp_path / "tampered.ndjson"
        tampered.write_text(path.read_text().replace('"val_loss"', '"val_acc"', 1))
        with pytest.raises(ValidationError, match="refused, nothing of it was stored: line 2"):
            elsewhere.import_bundle(tampered)
        with pytest.raises(FileNotFoundError):
            elsewhere.import_bundle(tmp_path / "missing.ndjson")


def test_export_lines_end_at_line_ends_alone(server: LiveServer, tmp_path: Path) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "raw", {"note": SPLITS_LINES})
        lrpilot.declare_checkpoint("raw", 100, f"ckpt/{SPLITS_LINES}")
        path = tmp_path / "raw.ndjson"
        lrpilot.export("raw", path)
        written = path.read_bytes().decode().split("\n")[:-1]
        lines = list(lrpilot.export_lines("raw"))
    assert lines == written and len(lines) == 2 + 12 + 1 + 4 + 1  # and a checkpoint
    assert json.loads(lines[0])["run"]["labels"] == {"note": SPLITS_LINES}
    assert json.loads(lines[-2])["checkpoint"]["ref"] == f"ckpt/{SPLITS_LINES}"

    async def scenario() -> list[str]:
        async with AsyncClient(server.url, retries=1, identity={}) as lrpilot:
            return [line async for line in lrpilot.export_lines("raw")]

    assert asyncio.run(scenario()) == written


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_lines_split_from_chunks_of_any_size(size: int) -> None:
    """A chunk may end anywhere: within a line, at its line end, within a character."""
    body = f'{{"a":"{SPLITS_LINES}"}}\n{{"b":"\u00e9\U0001f600"}}\n\n{{}}'.encode()
    split, lines = LineSplitter(), []
    for at in range(0, len(body), size):
        lines += split.feed(body[at : at + size])
    assert lines + split.end() == body.decode().split("\n")


def test_simulate_values_and_a_run_with_other_params(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "whatif")
        values = [1.0, 0.9, 0.95, math.nan, 0.97]
        what = lrpilot.simulate("plateau", 1, PARAMS, [0.1], values)
        assert what.policy == "plateau@1" and what.count == 5 and what.differing is None
        assert [d.step for d in what.items] == [1, 2, 3, 4, 5]
        assert math.isnan(what.items[3].value) and what.items[-1].lrs[0] < 0.1
        same = lrpilot.simulate(run_id="whatif")
        live = [d for d in lrpilot.iter_decisions("whatif", superseded=False) if d.value]
        assert same.differing == 0 and [d.lrs for d in same.items] == [d.lrs for d in live]
        other = lrpilot.simulate("plateau", 1, {"patience": 4}, run_id="whatif")
        assert other.params["patience"] == 4 and other.params["factor"] == 0.5  # laid over
        assert other.differing and other.items[0].recorded is not None
        with pytest.raises(ValidationError):
            lrpilot.simulate("plateau", values=[1.0])  # no base_lrs


def test_policies_and_probes(server: LiveServer) -> None:
    with client_of(server) as lrpilot:
        refs = {p.ref: p for p in lrpilot.policies()}
        assert "plateau@1" in refs and refs["plateau@1"].defaults["factor"] == 0.1
        assert "reduce" in refs["plateau@1"].actions
        assert lrpilot.health().status == "ok" and lrpilot.ready().status == "ready"


def test_the_async_client_does_the_same(server: LiveServer, tmp_path: Path) -> None:
    with client_of(server) as lrpilot:
        recorded(lrpilot, "async", {"kind": "async"})
        want_lines = list(lrpilot.export_lines("async"))
        want_summary = lrpilot.summary("async")
        want_live = list(lrpilot.iter_decisions("async", superseded=False))

    async def scenario() -> None:
        async with AsyncClient(server.url, retries=1, identity={}) as lrpilot:
            runs = [r.run_id async for r in lrpilot.iter_runs({"kind": "async"}, limit=1)]
            assert runs == ["async"] and (await lrpilot.list_runs({"kind": "async"})).items
            assert await lrpilot.summary("async") == want_summary
            live: list[Decision] = [
                d async for d in lrpilot.iter_decisions("async", superseded=False, limit=4)
            ]
            assert live == want_live
            window = await lrpilot.decisions("async", from_step=20, to_step=30)
            assert [d.step for d in window.items] == [20, 30]
            assert [line async for line in lrpilot.export_lines("async")] == want_lines
            path = tmp_path / "async.ndjson"
            await lrpilot.export("async", path)
            assert path.read_text().splitlines() == want_lines
            assert not (await lrpilot.import_bundle(path)).created
            assert (await lrpilot.verify("async")).ok
            what = await lrpilot.simulate(run_id="async")
            assert what.differing == 0
            assert "plateau@1" in {p.ref for p in await lrpilot.policies()}
            assert (await lrpilot.health()).status == "ok"
            assert (await lrpilot.ready()).status == "ready"
            assert (await lrpilot.lr_at("async", 45)).lrs == (await lrpilot.lrs_range(
                "async", 45, 1)).lrs[0]  # fmt: skip

    asyncio.run(scenario())
