"""The new policies (the schedule families, plateau@2, sequence@1, scaled@1, range_test@1) under
hostile or careless use, through the HTTP API and ``lrpilot plot``.

The standard every test holds the service to: bad input is a 4xx with a precise message; no
request is a 500 or hangs (over ``HANG_S``, a bound only a hang breaks, is a failure); what a
request costs is counted (the work it does per step or per group, never seconds: speed is
measured in bench/, not asserted here, where a loaded machine would fail it); responses are
strict JSON, with
an lr that is not finite written as a string; every decision verifies, and a run exported and
imported into another database verifies and answers the same lrs; ``GET /lrs`` says what
``GET /lr`` says, step by step.

Tests that use ``api`` run on SQLite and on PostgreSQL. Tests whose cost is computation, not the
database (simulate, the cost of ``GET /lrs`` over a composite), use one SQLite app of their own.
"""

from __future__ import annotations

import decimal
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lrpilot.audit.simulate import Setup
from lrpilot.policies import compose, range_test
from tests.conftest import app_client
from tests.helpers import lrpilot_cli, strict_json

B = 2**62  # the largest step anything holds
HANG_S = 60.0  # a request that takes longer than this hangs (generous: a loaded CI machine)
NAMED = {"NaN", "Infinity", "-Infinity"}  # how a response writes a number that is not finite
NAN, INF = math.nan, math.inf
BASE3 = [1e-320, 0.1, 1e308]  # a subnormal, an ordinary and a huge base lr


# -- helpers ---------------------------------------------------------------------------------


def sqlite_client(path: Path) -> AbstractContextManager[TestClient]:
    """The app on a fresh, migrated SQLite file; a 500 comes back as a response, not raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return app_client(f"sqlite:///{path}", raise_server_exceptions=False)


def send(client: TestClient, method: str, url: str, body: Any = None) -> tuple[Any, float]:
    """(response, seconds). The body is written by Python's json (NaN and Infinity as its
    tokens, which the API takes), never by the HTTP client (which may refuse them)."""
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs["content"] = json.dumps(body)
        kwargs["headers"] = {"content-type": "application/json"}
    started = time.perf_counter()
    response = client.request(method, url, **kwargs)
    return response, time.perf_counter() - started


def ok(client: TestClient, method: str, url: str, body: Any = None, status: int = 200) -> Any:
    """The strict-JSON document of a request that must succeed, and not hang."""
    response, took = send(client, method, url, body)
    assert response.status_code == status, (
        f"{method} {url}: {response.status_code} {response.text[:500]}"
    )
    assert took < HANG_S, f"{method} {url} took {took:.2f} s (> {HANG_S} s)"
    return strict_json(response.text)


def python_lines(work: Callable[[], object]) -> int:
    """How many lines of Python ``work()`` runs (in this thread): a cost that is the same on
    every machine, however loaded, where seconds are not."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(previous)
    return count


def spec(
    name: str, params: dict[str, Any], base_lrs: list[float], version: int = 1
) -> dict[str, Any]:
    return {
        "policy": {"name": name, "version": version, "params": params},
        "base_lrs": base_lrs,
        "metric": "loss",
    }


def ref(name: str, params: dict[str, Any] | None = None, version: int = 1) -> dict[str, Any]:
    return {"name": name, "version": version, "params": params or {}}


def phases(*items: tuple[dict[str, Any], int | None]) -> dict[str, Any]:
    out = []
    for policy, until in items:
        phase: dict[str, Any] = {"policy": policy}
        if until is not None:
            phase["until_step"] = until
        out.append(phase)
    return {"phases": out}


def lr_ok(x: Any) -> bool:
    """An lr as a response may write it: a finite number, or a named non-finite one."""
    if isinstance(x, str):
        return x in NAMED
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x)


def lrs_of(client: TestClient, run_id: str, step: int) -> list[Any]:
    doc = ok(client, "GET", f"/v1/runs/{run_id}/lr?step={step}")
    assert all(lr_ok(x) for x in doc["lrs"]), doc
    return doc["lrs"]


def import_elsewhere(client: TestClient, run_id: str, other: TestClient) -> None:
    """Export the run, import it into ``other``'s database: accepted, and it verifies there."""
    exported = client.get(f"/v1/runs/{run_id}/export")
    assert exported.status_code == 200, exported.text[:300]
    imported = other.post(
        "/v1/runs/import",
        content=exported.content,
        headers={"content-type": "application/x-ndjson"},
    )
    assert imported.status_code in (200, 201), imported.text[:500]
    report = ok(other, "POST", f"/v1/runs/{run_id}/verify", {})
    assert report["ok"], report


def check_run(client: TestClient, run_id: str, upto: int, elsewhere: Path) -> None:
    """Every invariant a run's readers rely on, over steps 0..upto - 1."""
    many = ok(client, "GET", f"/v1/runs/{run_id}/lrs?from=0&count={upto}")
    assert len(many["lrs"]) == upto
    for k in range(upto):
        assert lrs_of(client, run_id, k) == many["lrs"][k], f"{run_id}: /lr and /lrs differ at {k}"
    # a live decision's lrs are the lrs in force at its step
    page = ok(client, "GET", f"/v1/runs/{run_id}/decisions?superseded=false&limit=1000")
    for d in page["items"]:
        if d["action"] != "rewind":
            assert lrs_of(client, run_id, d["step"]) == d["lrs"], (run_id, d["seq"], d["step"])
    report = ok(client, "POST", f"/v1/runs/{run_id}/verify", {})
    assert report["ok"], report
    ok(client, "GET", f"/v1/runs/{run_id}/summary")
    what_if = ok(client, "POST", "/v1/simulate", {"run_id": run_id})
    assert what_if["differing"] == 0, f"{run_id}: its own replay differs from its log"
    with sqlite_client(elsewhere / f"{run_id}.db") as other:
        import_elsewhere(client, run_id, other)
        again = ok(other, "GET", f"/v1/runs/{run_id}/lrs?from=0&count={upto}")
        assert again["lrs"] == many["lrs"], f"{run_id}: the imported run answers other lrs"


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One SQLite app for the tests whose cost is computation, not the database."""
    with sqlite_client(tmp_path_factory.mktemp("hostile") / "solo.db") as client:
        yield client


# -- extreme params, every family --------------------------------------------------------------

ACCEPTED: list[tuple[str, dict[str, Any], int]] = [
    ("step", {"step_size": B, "gamma": 0.5}, 1),
    ("step", {"step_size": 1, "gamma": 1e308}, 1),
    ("step", {"step_size": 1, "gamma": 5e-324}, 1),
    ("multistep", {"milestones": [B] * 10_000, "gamma": 0.999}, 1),
    ("multistep", {"milestones": list(range(10_000)), "gamma": 1e-300}, 1),
    ("exponential", {"gamma": 1e308}, 1),
    ("exponential", {"gamma": 0.999999}, 1),
    ("exponential", {"gamma": 1.0 + 2**-52}, 1),
    ("inverse_time", {"decay_steps": 5e-324, "decay_rate": 1e308}, 1),
    ("inverse_time", {"decay_steps": 1e308, "decay_rate": 1e308, "staircase": True}, 1),
    ("linear", {"start_factor": 5e-324, "end_factor": 1.0, "total_iters": B}, 1),
    ("constant", {"factor": 5e-324, "total_iters": B}, 1),
    ("cosine", {"T_max": B}, 1),
    ("cosine", {"T_max": 1, "eta_min": 1e308}, 1),
    ("polynomial", {"total_iters": B, "power": 1e308}, 1),
    ("polynomial", {"total_iters": 1, "power": 5e-324}, 1),
    ("cosine_restarts", {"T_0": 1, "T_mult": B}, 1),
    ("cosine_restarts", {"T_0": B, "T_mult": 2, "eta_min": 1e-320}, 1),
    (
        "cyclic",
        {
            "base_lr": 0.0,
            "max_lr": 1.7e308,
            "step_size_up": B,
            "step_size_down": B,
            "mode": "exp_range",
            "gamma": 5e-324,
        },
        1,
    ),
    (
        "cyclic",
        {"base_lr": [0.0, 1e-320, 1.0], "max_lr": 1e308, "step_size_up": 1, "step_size_down": 0},
        1,
    ),
    ("one_cycle", {"max_lr": 1e308, "total_steps": B}, 1),
    (
        "one_cycle",
        {"max_lr": [1e-320, 1.0, 1e300], "total_steps": 3, "pct_start": 2 / 3, "three_phase": True},
        1,
    ),
    ("range_test", {"min_lr": 5e-324, "max_lr": 1.7e308, "num_steps": B}, 1),
    ("range_test", {"min_lr": 5e-324, "max_lr": 1.7e308, "num_steps": B, "mode": "linear"}, 1),
    (
        "plateau",
        {
            "factor": 5e-324,
            "patience": 2**31 - 1,
            "window": 1000,
            "best_of": 1000,
            "on_plateau": {"action": "decay", "shape": "cosine", "steps": B, "floor": 0.0},
            "stop_after": 0,
        },
        2,
    ),
    ("plateau", {"patience": 0, "min_lr": [0.0, 1e-320, 1e307], "threshold_mode": "abs"}, 2),
]

REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("step", {"step_size": 0}, 1, "step_size"),
    ("step", {"step_size": -1}, 1, "step_size"),
    ("step", {"step_size": B + 1}, 1, "step_size"),
    ("step", {"step_size": 10, "gamma": 0.0}, 1, "gamma"),
    ("step", {"step_size": 10, "gamma": -0.5}, 1, "gamma"),
    ("exponential", {"gamma": INF}, 1, "gamma"),
    ("exponential", {"gamma": NAN}, 1, "gamma"),
    ("exponential", {"gamma": "0.5"}, 1, "gamma"),
    ("multistep", {"milestones": [1] * 100_000}, 1, "milestones"),
    ("multistep", {"milestones": [5, -1]}, 1, "milestones"),
    ("cosine", {"T_max": 0}, 1, "T_max"),
    ("cosine", {"T_max": -5}, 1, "T_max"),
    ("cosine", {"T_max": 1.5}, 1, "T_max"),
    ("cyclic", {"base_lr": 0.0, "max_lr": 1.0, "step_size_up": 0}, 1, "step_size_up"),
    ("cyclic", {"base_lr": [0.0, 0.1], "max_lr": 1.0}, 1, "base_lr"),
    ("one_cycle", {"max_lr": 1.0, "total_steps": 0}, 1, "total_steps"),
    ("one_cycle", {"max_lr": 1.0, "total_steps": 10, "pct_start": 0.1}, 1, "pct_start"),
    ("constant", {"factor": 0.0}, 1, "factor"),
    ("linear", {"start_factor": 0.0}, 1, "start_factor"),
    ("polynomial", {"power": -1.0}, 1, "power"),
    ("inverse_time", {"decay_steps": 0.0, "decay_rate": 1.0}, 1, "decay_steps"),
    ("range_test", {"min_lr": 0.0}, 1, "min_lr"),
    ("range_test", {"min_lr": 1.0, "max_lr": 0.5}, 1, "max_lr"),
    ("range_test", {"num_steps": 1}, 1, "num_steps"),
    ("plateau", {"window": 1001}, 2, "window"),
    ("plateau", {"best_of": 0}, 2, "best_of"),
    ("plateau", {"window": 3, "ema": 0.5}, 2, "ema"),
    (
        "plateau",
        {"on_plateau": {"action": "decay", "shape": "linear", "steps": 0}},
        2,
        "on_plateau",
    ),
]


def test_extreme_params_of_every_family_are_taken_or_refused_precisely(api: TestClient) -> None:
    """Huge, zero, negative and subnormal params: a 201 or a 422 naming the param, never a 500;
    a taken run answers any step up to 2**62 fast, finite or named, /lrs as /lr, a clamped
    range at the top, and an observation at 2**62 that verifies."""
    problems: list[str] = []
    for i, (name, params, version, field) in enumerate(REFUSED):
        response, _ = send(api, "PUT", f"/v1/runs/no-{i}", spec(name, params, [0.1], version))
        where = f"{name}@{version} {json.dumps(params)[:80]}"
        if response.status_code != 422:
            problems.append(f"{where}: {response.status_code}, not 422")
            continue
        detail = strict_json(response.text)["detail"]
        if not any(field in ".".join(map(str, d["loc"])) + d["msg"] for d in detail):
            problems.append(f"{where}: the 422 does not name {field}: {detail}")
    for i, (name, params, version) in enumerate(ACCEPTED):
        run = f"ok-{i}"
        where = f"{name}@{version} {json.dumps(params)[:80]}"
        response, took = send(api, "PUT", f"/v1/runs/{run}", spec(name, params, BASE3, version))
        if response.status_code != 201 or took > HANG_S:
            problems.append(
                f"{where}: PUT {response.status_code} in {took:.2f} s {response.text[:200]}"
            )
            continue
        try:
            singles = {
                s: lrs_of(api, run, s)
                for s in (0, 1, 2, 3, B // 2, B - 5, B - 4, B - 3, B - 2, B - 1, B)
            }
            top = ok(api, "GET", f"/v1/runs/{run}/lrs?from={B - 5}&count=10000")
            assert top["count"] == 6 and len(top["lrs"]) == 6, top
            assert top["lrs"] == [singles[B - 5 + k] for k in range(6)], (
                "/lrs and /lr differ at the top"
            )
            for first in (0, B - 1999):
                window = ok(api, "GET", f"/v1/runs/{run}/lrs?from={first}&count=2000")
                assert all(len(row) == 3 and all(lr_ok(x) for x in row) for row in window["lrs"])
            assert window["lrs"][-1] == singles[B], "/lrs and /lr differ at 2**62"
            decision = ok(api, "POST", f"/v1/runs/{run}/observations", {"step": B, "value": 1.0})
            assert decision["lrs"] == lrs_of(api, run, B), "a decision at 2**62 is not /lr's answer"
            report = ok(api, "POST", f"/v1/runs/{run}/verify", {})
            assert report["ok"], report
        except AssertionError as exc:
            problems.append(f"{where}: {str(exc)[:300]}")
    assert not problems, "\n".join(problems)


def test_lrs_answer_stays_bounded_with_many_param_groups(solo: TestClient) -> None:
    """count is capped at 10,000 steps, but not count x param groups: with 1024 groups (the
    most base_lrs takes) one GET /lrs writes 2.5 million numbers at count 2500 (at count 10,000:
    208 MB and ~7 s). An answer must stay bounded: a 422 naming the limit, or at most 16 MiB."""
    ok(solo, "PUT", "/v1/runs/wide-cos", spec("cosine", {"T_max": 100}, [0.1] * 1024), 201)
    response, took = send(solo, "GET", "/v1/runs/wide-cos/lrs?from=0&count=2500")
    assert response.status_code in (200, 422), response.text[:300]
    if response.status_code == 422:
        assert "count" in response.text
    else:
        assert len(response.content) <= 16 * 2**20, (
            f"GET /lrs?count=2500 over 1024 groups answered {len(response.content) / 2**20:.0f} "
            f"MiB in {took:.1f} s: an answer's size is not bounded"
        )


class CountingContext(decimal.Context):
    """range_test's decimal context, its exps counted (each one the real, 40-digit exp)."""

    exps = 0

    def exp(self, x: Any, context: Any = None) -> decimal.Decimal:
        CountingContext.exps += 1
        return super().exp(x)


def test_range_test_lrs_over_many_groups_costs_one_exp_a_step(
    solo: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """range_test@1 works its exp ramp out in 40-digit decimal; groups that share min_lr and
    max_lr share that work: 500 steps of 1024 such groups cost 500 exps, not 512,000 (which
    took seconds; count=10000 took ~90 s)."""
    real = range_test._CTX
    counting = CountingContext(
        prec=real.prec,
        rounding=real.rounding,
        Emin=real.Emin,
        Emax=real.Emax,
        traps=[signal for signal, on in real.traps.items() if on],
    )
    monkeypatch.setattr(range_test, "_CTX", counting)
    ok(
        solo,
        "PUT",
        "/v1/runs/wide-rt",
        spec("range_test", {"num_steps": 100_000}, [0.1] * 1024),
        201,
    )
    CountingContext.exps = 0
    response, _ = send(solo, "GET", "/v1/runs/wide-rt/lrs?from=0&count=500")
    assert response.status_code == 200, response.text[:300]
    assert 0 < CountingContext.exps <= 500, f"{CountingContext.exps} exps for 500 steps"


def test_lrs_of_a_composite_costs_what_its_parts_cost(
    solo: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multistep of 10,000 milestones answers 10,000 steps of /lrs cheaply; as a phase of
    sequence@1 (or the schedule of scaled@1), every step's lrs_at re-serialised the whole phase
    (canonical JSON of its params, 10,000 milestones) to find it in a cache: the serialisations
    of a request are counted, and do not grow with its steps."""
    milestones = ref("multistep", {"milestones": [B] * 10_000, "gamma": 0.5})
    ok(solo, "PUT", "/v1/runs/ms", spec("multistep", milestones["params"], [0.1]), 201)
    ok(solo, "GET", "/v1/runs/ms/lrs?from=0&count=10000")
    seq = phases((ref("constant"), 10), (milestones, None))
    ok(solo, "PUT", "/v1/runs/ms-seq", spec("sequence", seq, [0.1]), 201)
    serialised = []
    real = compose.canonical_json
    monkeypatch.setattr(compose, "canonical_json", lambda doc: serialised.append(1) or real(doc))
    response, _ = send(solo, "GET", "/v1/runs/ms-seq/lrs?from=0&count=2000")
    assert response.status_code == 200, response.text[:300]
    assert len(serialised) <= 2 * 2, (
        f"GET /lrs?count=2000 of sequence@1[constant, multistep] serialised a phase "
        f"{len(serialised)} times"
    )


# -- composites: phase switches, clocks, nesting ------------------------------------------------


def test_a_phase_switch_that_moves_the_lrs_is_not_logged_as_hold(api: TestClient) -> None:
    """Every phase starts from the base lrs, so a switch can raise or drop the lrs at once; the
    decision must say so (action and reason), and the summary must list the drop, instead of
    "hold ... lr 0.1 held" next to previous_lrs [0.05]."""
    seq = phases(
        (ref("constant", {"factor": 0.5, "total_iters": 100}), 10),
        (ref("cosine", {"T_max": 100}), 20),
        (ref("constant", {"factor": 0.1, "total_iters": 100}), None),
    )
    ok(api, "PUT", "/v1/runs/switch", spec("sequence", seq, [0.1]), 201)
    plat = phases(
        (ref("plateau", {"patience": 0}, 2), 10),
        (ref("constant", {"factor": 1.0, "total_iters": 0}), None),
    )
    ok(api, "PUT", "/v1/runs/switch2", spec("sequence", plat, [0.1]), 201)
    moved = []
    for run, stream in (
        ("switch", [(5, 1.0), (10, 1.0), (25, 1.0)]),
        ("switch2", [(1, 1.0), (2, 2.0), (10, 2.0)]),
    ):
        for step, value in stream:
            d = ok(api, "POST", f"/v1/runs/{run}/observations", {"step": step, "value": value})
            if d["lrs"] != d["previous_lrs"]:
                moved.append(d)
    assert len(moved) == 4, [(d["run_id"], d["step"]) for d in moved]
    wrong = [
        f"{d['run_id']} step {d['step']}: {d['previous_lrs']} -> {d['lrs']} is "
        f"'{d['action']}': {d['reason']}"
        for d in moved
        # the reason must name the jump; the new phase's own sentence may follow it
        if d["action"] == "hold" or (" held" in d["reason"] and "as it begins" not in d["reason"])
    ]
    assert not wrong, "\n".join(wrong)
    summary = ok(api, "GET", "/v1/runs/switch/summary")
    assert 25 in [c["step"] for c in summary["lr_changes"]], (
        f"the 10x drop at step 25 (a phase switch) is not in lr_changes: {summary['lr_changes']}"
    )


def test_range_test_as_a_later_phase_ramps_from_the_phase_start(api: TestClient) -> None:
    """sequence@1 takes range_test@1 as a phase, but a range test sees the run's real step, not
    the phase's: after 1000 warmup steps a 100-step ramp is already over, so its first step
    jumps to max_lr (10,000 x min_lr) and stops ("the ramp reached max_lr") with nothing
    tested. Either the ramp counts from the phase's start, or the spec is refused."""
    rt = ref("range_test", {"min_lr": 1e-4, "max_lr": 1.0, "num_steps": 100, "skip_start": 2})
    seq = phases((ref("constant", {"factor": 1.0, "total_iters": 0}), 1000), (rt, None))
    response, _ = send(api, "PUT", "/v1/runs/late-rt", spec("sequence", seq, [0.1]))
    if response.status_code == 422:
        assert "range_test" in response.text, response.text
        return
    assert response.status_code == 201, response.text[:300]
    assert lrs_of(api, "late-rt", 1000) == [1e-4], "the range test's phase does not start at min_lr"
    first = ok(api, "POST", "/v1/runs/late-rt/observations", {"step": 1000, "value": 1.0})
    assert first["action"] == "warmup", f"{first['action']}: {first['reason']}"


def test_composites_nest_to_the_cap_and_refuse_beyond_with_a_422(
    api: TestClient, tmp_path: Path
) -> None:
    """16 phases, each a scaled@1 or a sequence@1 (three levels of policies), with boundaries up
    to 2**62: observations either side of every boundary decide, verify and round-trip; one
    level more, or a 17th phase, is a 422 that says so."""
    schedules = [
        ref("cosine", {"T_max": 1000}),
        ref("step", {"step_size": 7, "gamma": 0.5}),
        ref(
            "cyclic",
            {"base_lr": 0.01, "max_lr": [0.1, 0.2], "step_size_up": 5, "mode": "triangular2"},
        ),
        ref("one_cycle", {"max_lr": 0.5, "total_steps": 50}),
        ref("exponential", {"gamma": 0.99}),
    ]
    plateaus = [
        ref("plateau", {"patience": 0, "window": 2, "best_of": 3}, 2),
        ref("plateau", {"patience": 1}, 1),
        ref(
            "plateau",
            {"patience": 0, "on_plateau": {"action": "decay", "shape": "linear", "steps": 9}},
            2,
        ),
    ]
    bounds = [2 ** (4 * i + 2) for i in range(14)] + [B]  # 4, 64, ..., 2**54, 2**62
    items: list[tuple[dict[str, Any], int | None]] = []
    for i in range(16):
        if i % 4 == 3:
            inner = ref("sequence", phases((schedules[i % 5], 3), (plateaus[i % 3], None)))
        else:
            inner = ref("scaled", {"schedule": schedules[i % 5], "plateau": plateaus[i % 3]})
        items.append((inner, bounds[i] if i < 15 else None))
    ok(api, "PUT", "/v1/runs/wide", spec("sequence", phases(*items), [0.1, 0.05]), 201)
    steps = sorted({s for b in bounds for s in (b - 1, b, b + 1) if s <= B} | {0})
    for n, step in enumerate(steps):
        value = [1.0, 2.0, NAN, 0.5, INF, 3.0][n % 6]
        d = ok(api, "POST", "/v1/runs/wide/observations", {"step": step, "value": value})
        assert d["lrs"] == lrs_of(api, "wide", step)
    for b in bounds[:6]:
        near = ok(api, "GET", f"/v1/runs/wide/lrs?from={b - 2}&count=5")
        assert near["lrs"] == [lrs_of(api, "wide", s) for s in range(b - 2, b + 3)]
    assert ok(api, "POST", "/v1/runs/wide/verify", {})["ok"]
    with sqlite_client(tmp_path / "wide" / "elsewhere.db") as other:
        import_elsewhere(api, "wide", other)
    # one level deeper than the cap: sequence -> scaled -> sequence -> schedule
    too_deep = phases(
        (
            ref(
                "scaled",
                {
                    "schedule": ref("cosine", {"T_max": 5}),
                    "plateau": ref("sequence", phases((plateaus[0], None))),
                },
            ),
            None,
        )
    )
    response, _ = send(api, "PUT", "/v1/runs/deep", spec("sequence", too_deep, [0.1]))
    assert response.status_code == 422 and "nest" in response.text, response.text[:300]
    seventeen = phases(*[(ref("constant"), k + 1) for k in range(16)], (ref("constant"), None))
    response, _ = send(api, "PUT", "/v1/runs/p17", spec("sequence", seventeen, [0.1]))
    assert response.status_code == 422 and "16" in response.text, response.text[:300]


def test_a_bad_phase_is_named_without_a_false_claim_about_the_others(solo: TestClient) -> None:
    """One phase whose version is 1.0: the 422 names phases.0.policy.version, and does not also
    claim that the phases are empty ("Tuple should have at least 1 item ..., not 0")."""
    seq = {"phases": [{"policy": {"name": "constant", "version": 1.0, "params": {}}}]}
    response, _ = send(solo, "PUT", "/v1/runs/badphase", spec("sequence", seq, [0.1]))
    assert response.status_code == 422, response.text[:300]
    detail = strict_json(response.text)["detail"]
    assert any(d["loc"][-1] == "version" for d in detail), detail
    false = [d["msg"] for d in detail if "at least 1 item" in d["msg"]]
    assert not false, f"the 422 says the phases are empty though one was given: {false}"


# -- observations: NaN, retries, going back, rewinds; then every invariant ------------------------

P2_DECAY = ref(
    "plateau",
    {
        "patience": 1,
        "window": 3,
        "best_of": 4,
        "on_plateau": {"action": "decay", "shape": "cosine", "steps": 20, "floor": [0.001, 0.0]},
        "stop_after": 3,
    },
    2,
)
P2_F32 = ref(
    "plateau",
    {
        "patience": 0,
        "ema": 0.5,
        "lr_dtype": "float32",
        "min_lr": [1e-4, 1e-5],
        "cooldown": 2,
        "stop_after": 2,
    },
    2,
)


def parse_script(text: str) -> list[tuple[Any, ...]]:
    """A scenario's requests, written "kind step [value]" and comma-separated: ``obs`` and
    ``retry`` (the same step and value again) post, ``back`` (a step below the last) and
    ``conflict`` (a decided step with another value) expect a 409, ``rewind`` takes a step."""
    ops: list[tuple[Any, ...]] = []
    for op in text.split(","):
        kind, step, *value = op.split()
        ops.append((kind, int(step), *(float(v) for v in value)))
    return ops


SCENARIOS: dict[str, tuple[str, dict[str, Any], list[tuple[Any, ...]]]] = {
    "seq": (
        "sequence",
        phases(
            (ref("linear", {"start_factor": 0.1, "total_iters": 20}), 20),
            (P2_DECAY, 60),
            (ref("cosine", {"T_max": 50}), 90),
            (P2_F32, None),
        ),
        parse_script(
            "obs 5 1.0, obs 10 nan, obs 15 inf, retry 15 inf, back 12 1.0, conflict 15 2.0, "
            "obs 21 1.0, obs 25 1.0, obs 30 1.0, obs 35 nan, obs 40 1.0, retry 40 1.0, "
            "obs 95 0.5, obs 96 -inf, obs 97 1e+308, obs 98 -1e+308, rewind 12, obs 13 1.0, "
            "obs 22 0.5, obs 28 0.6, obs 31 0.7, obs 33 0.8, rewind 32, obs 34 nan, obs 45 0.9, "
            "obs 70 1.0, retry 34 nan, obs 100 1.0, obs 101 5e-324"
        ),
    ),
    "scaled": (
        "scaled",
        {"schedule": ref("cosine_restarts", {"T_0": 10, "T_mult": 2}), "plateau": P2_DECAY},
        parse_script(
            "obs 1 1.0, obs 2 1.0, obs 3 1.0, obs 4 1.0, obs 6 nan, retry 6 nan, obs 9 1.0, "
            "obs 12 -inf, back 11 1.0, rewind 5, obs 7 0.5, obs 8 0.6, obs 9 0.7, obs 30 0.8, "
            "obs 31 0.9, obs 60 1.0, obs 61 1.0, obs 62 1.0, obs 63 1.0"
        ),
    ),
    "scaled-seq": (
        "scaled",
        {
            "schedule": ref("one_cycle", {"max_lr": [0.5, 0.2], "total_steps": 100}),
            "plateau": ref(
                "sequence", phases((ref("plateau", {"patience": 1}), 30), (P2_F32, None))
            ),
        },
        parse_script(
            "obs 5 1.0, obs 10 2.0, obs 15 3.0, obs 29 nan, obs 30 1.0, obs 31 2.0, rewind 20, "
            "obs 25 0.1, obs 35 inf, obs 36 0.2, obs 37 0.3, obs 38 0.4, obs 150 0.5"
        ),
    ),
    "rt": (
        "range_test",
        {"min_lr": [1e-5, 1e-6], "max_lr": [1.0, 0.1], "num_steps": 80, "skip_start": 0},
        [
            *[("obs", s, 2.0 - s * 0.1) for s in range(10)],
            *parse_script("retry 5 1.5, obs 11 nan, obs 12 1.0, rewind 8"),
            *[("obs", s, 1.0 + (s - 9) ** 2) for s in range(9, 20)],
        ],
    ),
    "seq-rt": (
        "sequence",
        phases(
            (ref("range_test", {"num_steps": 50, "skip_start": 1}), 40),
            (
                ref(
                    "scaled",
                    {
                        "schedule": ref(
                            "cyclic",
                            {
                                "base_lr": 0.01,
                                "max_lr": [0.1, 0.2],
                                "step_size_up": 5,
                                "mode": "exp_range",
                                "gamma": 0.99,
                            },
                        ),
                        "plateau": P2_DECAY,
                    },
                ),
                None,
            ),
        ),
        [
            *[("obs", s, 1.0 / (s + 1)) for s in range(0, 12)],
            *parse_script(
                "obs 13 1e+308, obs 41 1.0, obs 42 1.0, obs 43 1.0, obs 44 nan, rewind 13, "
                "obs 20 0.5, obs 45 1.0, obs 46 1.0, obs 47 1.0"
            ),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_nan_retries_rewinds_then_every_invariant_holds(
    api: TestClient, tmp_path: Path, name: str
) -> None:
    """NaN and infinite values, a retry of a step (the same answer), a step below the last (409),
    a changed value (409), rewinds into an earlier phase and into a running plateau@2 decay,
    then: /lrs is /lr step by step, each decision's lrs are /lr at its step, verify is ok, the
    run's own replay (simulate run_id) does not differ, export -> import elsewhere verifies."""
    policy, params, script = SCENARIOS[name]
    ok(api, "PUT", f"/v1/runs/{name}", spec(policy, params, [0.1, 0.05]), 201)
    answers: dict[int, str] = {}
    for op in script:
        kind = op[0]
        if kind == "rewind":
            ok(api, "POST", f"/v1/runs/{name}/rewind", {"to_step": op[1]})
            answers = {s: a for s, a in answers.items() if s <= op[1]}
            continue
        _, step, value = op
        response, took = send(
            api, "POST", f"/v1/runs/{name}/observations", {"step": step, "value": value}
        )
        assert took < HANG_S, f"{op} took {took:.2f} s"
        if kind in ("back", "conflict"):
            assert response.status_code == 409, (
                f"{op}: {response.status_code} {response.text[:300]}"
            )
            assert str(step) in strict_json(response.text)["detail"]
            continue
        assert response.status_code == 200, f"{op}: {response.status_code} {response.text[:300]}"
        doc = strict_json(response.text)
        assert all(lr_ok(x) for x in doc["lrs"] + doc["previous_lrs"]), doc
        if kind == "retry":
            assert response.text == answers[step], f"{op}: a retry answered another decision"
        answers[step] = response.text
    check_run(api, name, 160, tmp_path)


def test_plateau2_largest_window_keeps_state_bounded_and_posts_flat(api: TestClient) -> None:
    """window 1000 and best_of 1000 (the largest): the state holds 1000 values and 1000 (step, m)
    pairs, so once both are full a decision stops growing (and with it the work of a post)."""
    params = {"window": 1000, "best_of": 1000, "patience": 5}
    ok(api, "PUT", "/v1/runs/big-window", spec("plateau", params, [0.1], 2), 201)
    sizes = []
    for i in range(1, 1151):
        value = [1.0, 1.25, 1.5, 1.375, 1.125, 2.0, 1.75][i % 7] if i % 97 else NAN
        response, _ = send(
            api, "POST", "/v1/runs/big-window/observations", {"step": 10 * i, "value": value}
        )
        assert response.status_code == 200, response.text[:300]
        sizes.append(len(response.content))
    assert max(sizes) < 128 * 1024, f"a decision of plateau@2 grew to {max(sizes)} bytes"
    assert sizes[-1] <= sizes[1049] * 1.01 + 256, (
        f"still growing past a full window: {sizes[1049]} -> {sizes[-1]}"
    )
    ok(api, "GET", "/v1/runs/big-window/lrs?from=0&count=10000")
    assert ok(api, "POST", "/v1/runs/big-window/verify", {})["ok"]


# -- simulate ---------------------------------------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    1.0,
    "NaN",
    0.5,
    "Infinity",
    NAN,
    -INF,
    1e308,
    -1e308,
    5e-324,
    0.0,
    2.0,
    2.0,
    2.0,
]


def test_simulate_takes_every_new_policy_and_hostile_values(solo: TestClient) -> None:
    """Every new policy with extreme params and NaN, infinities, +-1e308 and subnormal values
    at steps up to 2**62: a strict-JSON 200 with one item a value, lrs finite or named."""
    steps = [0, 1, 2, 3, 1000, 2**31, 2**40, 2**50, 2**60, B - 3, B - 2, B - 1, B]
    policies = [(n, p, v) for n, p, v in ACCEPTED] + [
        ("sequence", phases((ref("linear"), 2), (P2_DECAY, 2**40), (P2_F32, None)), 1),
        ("scaled", {"schedule": ref("cosine", {"T_max": B}), "plateau": P2_DECAY}, 1),
    ]
    for name, params, version in policies:
        body = {
            "policy": ref(name, params, version),
            "base_lrs": BASE3[:2] if name in ("sequence", "scaled") else BASE3,
            "values": HOSTILE_VALUES,
            "steps": steps,
        }
        if name in ("sequence", "scaled"):
            body["policy"]["params"] = json.loads(
                json.dumps(params).replace("[0.001, 0.0]", "[1e-321, 0.0]")
            )
        doc = ok(solo, "POST", "/v1/simulate", body)
        assert doc["count"] == len(HOSTILE_VALUES) and len(doc["items"]) == len(HOSTILE_VALUES)
        assert all(lr_ok(x) for item in doc["items"] for x in item["lrs"]), name


def test_simulate_a_composite_run_with_other_base_lrs(solo: TestClient) -> None:
    """simulate {"run_id", "base_lrs"} asks what the run's stream would have given with other
    base lrs, as it does for a plateau run. For a sequence@1 or scaled@1 run it is refused: its
    stored params carry the run's base_lrs, and the 422 blames a params.base_lrs the request
    never sent ("base_lrs is the run's, not a param")."""
    seq = phases((ref("linear"), 5), (ref("plateau", {"patience": 0}, 2), None))
    scaled = {
        "schedule": ref("cosine", {"T_max": 50}),
        "plateau": ref("plateau", {"patience": 0}, 2),
    }
    for run, name, params in (
        ("sim-seq", "sequence", seq),
        ("sim-scaled", "scaled", scaled),
        ("sim-p2", "plateau", {"patience": 0}),
    ):
        ok(
            solo,
            "PUT",
            f"/v1/runs/{run}",
            spec(name, params, [0.1, 0.2], 2 if name == "plateau" else 1),
            201,
        )
        for step, value in ((1, 1.0), (6, 2.0), (7, NAN), (8, 3.0)):
            ok(solo, "POST", f"/v1/runs/{run}/observations", {"step": step, "value": value})
        assert ok(solo, "POST", "/v1/simulate", {"run_id": run})["differing"] == 0
    refused = []
    for run in ("sim-p2", "sim-seq", "sim-scaled"):
        response, _ = send(solo, "POST", "/v1/simulate", {"run_id": run, "base_lrs": [0.3, 0.4]})
        if response.status_code != 200:
            refused.append(f"{run}: {response.status_code} {response.text[:200]}")
        else:
            assert strict_json(response.text)["base_lrs"] == [0.3, 0.4]
    assert not refused, "\n".join(refused)


def simulated(policy: dict[str, Any], values: list[float]) -> Callable[[], object]:
    """What POST /v1/simulate computes for ``policy`` over ``values``, in this thread."""
    setup = Setup.of(policy["name"], policy["version"], policy["params"], [0.1], "metric")
    stream = list(enumerate(values, start=1))
    return lambda: list(setup.decisions(stream))


def test_simulate_through_plateau2_window_1000_costs_about_window_1(solo: TestClient) -> None:
    """100,000 values (the most simulate takes) through plateau@2 with window 1000 and best_of
    1000 answer. The mean is the window summed oldest first, one addition at a time (the same
    float on every Python: not sum(), whose rounding changed in 3.12), so a value costs
    O(window), done in C (a left fold, and min/max for best_of): in lines of Python, about what
    window 1 costs (Python loops of up to 1,000 a value made it 20x, before)."""
    values = [(i % 7) + 1.0 for i in range(100_000)]
    cheap = ref("plateau", {"patience": 5}, 2)
    big = ref("plateau", {"patience": 5, "window": 1000, "best_of": 1000}, 2)
    response, _ = send(solo, "POST", "/v1/simulate", {"policy": big, "base_lrs": [0.1],
                                                      "values": values})  # fmt: skip
    assert response.status_code == 200, response.text[:300]
    assert strict_json(response.text)["count"] == len(values)
    few = values[:3000]  # the window full for two thirds of them
    cheap_lines = python_lines(simulated(cheap, few))
    big_lines = python_lines(simulated(big, few))
    assert big_lines < 2 * cheap_lines, (
        f"3,000 values: window 1000 runs {big_lines} lines of Python, window 1 {cheap_lines}"
    )


def test_simulate_through_a_composite_costs_what_its_parts_cost(
    solo: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same 8,000 values through plateau@2 (window 1000, best_of 1000) alone and as the
    plateau phase of sequence@1: the composite advances the inner policy's own stepper (made
    once a phase), where it stepped through a frozen state built, validated and dumped again
    at every value (~10x the cost): the inner steppers made are counted."""
    values = [(i % 7) + 1.0 for i in range(8000)]
    p2 = ref("plateau", {"patience": 5, "window": 1000, "best_of": 1000}, 2)
    seq = ref("sequence", phases((ref("linear"), 5), (p2, None)))
    plateau2 = type(compose._registry("plateau", 2))
    made = []
    real = plateau2.stepper
    monkeypatch.setattr(
        plateau2, "stepper", lambda self, *args: made.append(1) or real(self, *args)
    )
    made_by = {}
    for name, policy in (("alone", p2), ("sequence@1", seq)):
        made.clear()
        response, _ = send(
            solo, "POST", "/v1/simulate", {"policy": policy, "base_lrs": [0.1], "values": values}
        )
        assert response.status_code == 200, response.text[:300]
        assert strict_json(response.text)["count"] == len(values)
        made_by[name] = len(made)
    assert 1 <= made_by["alone"] <= 2 and 1 <= made_by["sequence@1"] <= 2, (
        f"8k values: plateau@2 steppers made {made_by}"
    )


# -- lrpilot plot --------------------------------------------------------------------------------


def plot(args: list[str]) -> Any:
    return lrpilot_cli("plot", *args, catch_exceptions=True)


def refused_badly(what: str, res: Any) -> list[str]:
    """[] when the command refused with one "lrpilot: ..." line and exit 1, else the problem."""
    if res.exit_code == 1 and isinstance(res.exception, SystemExit) and "lrpilot: " in res.output:
        return []
    kind = type(res.exception).__name__
    return [f"{what}: exit {res.exit_code}, {kind}: {res.output[-200:]!r}"]


def test_plot_refuses_hostile_files_with_one_line(tmp_path: Path) -> None:
    """Every bad spec or values file is one "lrpilot: ..." line and exit 1, never a traceback:
    binary garbage, unsorted steps, a step past 2**62, deeply nested JSON, a value beyond the
    largest double, 10 million steps asked for."""
    good = tmp_path / "spec.json"
    good.write_text(json.dumps(spec("plateau", {"patience": 1, "window": 3}, [0.1], 2)))
    files = {
        "garbage.bin": bytes(range(256)) * 16,
        "unsorted.txt": b"5 1.0\n3 1.0\n",
        "past.txt": f"{B + 1} 1.0\n".encode(),
        "deep.json": b"[" * 100_000,
        "bigint.json": b"[[1, " + b"9" * 400 + b"]]",
        "objects.json": b'[{"step": 1}]',
    }
    problems = []
    out = tmp_path / "out.png"
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        res = plot([str(good), "--steps", "100", "--values", str(path), "-o", str(out)])
        problems += refused_badly(f"--values {name}", res)
    deep_spec = tmp_path / "deep-spec.json"
    deep_spec.write_bytes(b'{"policy": ' * 50_000)
    for args in (
        [str(deep_spec), "--steps", "10"],
        [str(good), "--steps", "10000000"],
        [str(good), "--steps", "100", "--every", "0"],
    ):
        what = " ".join([Path(args[0]).name, *args[1:]])
        problems += refused_badly(what, plot([*args, "-o", str(out)]))
    assert not problems, "\n".join(problems)


def test_plot_draws_non_finite_values_and_huge_steps(tmp_path: Path) -> None:
    """NaN and infinite values are drawn (as marks), and a plot up to 2**62 with --every works."""
    path = tmp_path / "spec.json"
    path.write_text(
        json.dumps(spec("sequence", phases((ref("linear"), 10), (P2_DECAY, None)), [0.1, 0.05]))
    )
    values = tmp_path / "values.txt"
    values.write_text("1 1.0\n2 nan\n3 inf\n4 -inf\n12 1.0\n13 1.0\n14 1.0\n15 1.0\n")
    out = tmp_path / "a.png"
    res = plot([str(path), "--steps", "100", "--values", str(values), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(b"\x89PNG")
    res = plot([str(path), "--steps", str(B), "--every", str(2**58), "-o", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
