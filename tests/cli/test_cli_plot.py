"""``lrpilot plot`` (project issue 7): the plotted series against the policies' own ``lrs_at``
(from a spec, offline, and from a live run), the PNG it writes, and its one-line errors."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from lrpilot.audit.simulate import Setup
from lrpilot.cli.plot import (
    PlotError,
    changes_lrs,
    describe,
    plotted_steps,
    read_spec,
    read_values,
    run_series,
    spec_series,
    use_log_scale,
)
from lrpilot.policies import Observation
from lrpilot_client import Client
from tests.harness import LiveServer
from tests.helpers import lrpilot_cli, one_line, plateau_stream

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLATEAU: dict[str, Any] = {
    "policy": {"name": "plateau", "version": 1, "params": {"patience": 2, "factor": 0.5}},
    "base_lrs": [0.1, 0.01],
    "metric": "val_loss",
}
RANGE_TEST: dict[str, Any] = {
    "policy": {"name": "range_test", "version": 1, "params": {"num_steps": 200, "smoothing": 0.9}},
    "base_lrs": [0.1],
    "metric": "train_loss",
}


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def setup_of(spec: dict[str, Any]) -> Setup:
    p = spec["policy"]
    return Setup.of(p["name"], p["version"], p["params"], spec["base_lrs"], spec["metric"])


def expected_lrs(
    spec: dict[str, Any], steps: list[int], stream: list[tuple[int, float]]
) -> list[tuple[float, ...]]:
    """lrs_at(s) from the state of the last evaluation at or before s, worked out with the
    policy's own step() and lrs_at(): what GET lr?step=s answers."""
    setup = setup_of(spec)
    policy, params = setup.policy, setup.params
    states = [(-1, policy.init(params, setup.base_lrs))]  # (step decided, state after it)
    state = states[0][1]
    for step, value in stream:
        _, state = policy.step(params, state, Observation(step, value, setup.metric))
        states.append((step, state))
    out = []
    for s in steps:
        in_force = [st for at, st in states if at <= s][-1]
        out.append(policy.lrs_at(params, in_force, s))
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, data[:8]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def range_test_losses(n: int) -> list[tuple[int, float]]:
    """A training loss along range_test's ramp (RANGE_TEST's params): falls, then explodes."""
    setup = setup_of(RANGE_TEST)
    state = setup.policy.init(setup.params, setup.base_lrs)
    out = []
    for s in range(n):
        lr = setup.policy.lrs_at(setup.params, state, s)[0]
        x = math.log(lr)
        out.append((s, 1 + 0.5 * (1 - math.tanh((x - math.log(1e-3)) / 0.7)) + 0.05 * math.exp(
            (x - math.log(0.3)) / 0.25)))  # fmt: skip
    return out


# -- the series ---------------------------------------------------------------------------------


def test_plateau_series_is_lrs_at_from_the_state_in_force() -> None:
    stream = plateau_stream(30, start_step=100, every=100)
    series = spec_series(setup_of(PLATEAU), 3500, stream)
    assert series.steps == list(range(3501))
    assert series.lrs == expected_lrs(PLATEAU, series.steps, stream)
    assert series.evaluations == stream
    # a mark at every reduction, none elsewhere
    setup = setup_of(PLATEAU)
    state = setup.policy.init(setup.params, setup.base_lrs)
    reductions = []
    for step, value in stream:
        outcome, state = setup.policy.step(setup.params, state, Observation(step, value))
        if outcome.action == "reduce":
            reductions.append((step, "reduce"))
    assert reductions and series.marks == reductions
    assert series.lrs[0] == (0.1, 0.01) and series.lrs[-1] == state.lrs
    assert series.title.startswith("plateau@1 with ") and "patience 2" in series.title


def test_the_title_is_a_sentence_of_the_policy_and_its_params() -> None:
    phases = {
        "phases": [
            {"policy": {"name": "linear", "version": 1, "params": {"total_iters": 1000}},
             "until_step": 1000},
            {"policy": {"name": "plateau", "version": 1, "params": {"min_lr": [0.0, 1e-05]}}},
        ]
    }  # fmt: skip
    assert describe("sequence@1", phases) == (
        "sequence@1 with phases linear@1 (total_iters 1000) until_step 1000, then plateau@1 "
        "(min_lr [0.0, 1e-05])"
    )
    assert describe("plateau@2", {"on_plateau": {"action": "decay", "steps": 3}, "x": True}) == (
        "plateau@2 with on_plateau (action decay, steps 3), x true"
    )
    assert describe("cosine@1", {}) == "cosine@1 (its defaults)"


def test_range_test_series_is_the_ramp_then_held_at_the_stop() -> None:
    setup = setup_of(RANGE_TEST)
    bare = spec_series(setup, 250)  # no losses: the bare ramp, clamped at max_lr after it
    initial = setup.policy.init(setup.params, setup.base_lrs)
    assert bare.lrs == [setup.policy.lrs_at(setup.params, initial, s) for s in range(251)]
    assert bare.lrs[0] == (1e-7,) and bare.lrs[199] == bare.lrs[250] == (10.0,)
    assert bare.marks == [] and bare.evaluations == []

    stream = range_test_losses(200)
    series = spec_series(setup, 250, stream)
    assert series.lrs == expected_lrs(RANGE_TEST, series.steps, stream)
    assert len(series.marks) == 1  # the stop; the warmups are the ramp's own course
    (stop, action) = series.marks[0]
    assert action == "stop" and 100 < stop < 199
    assert series.lrs[stop] == bare.lrs[stop]  # the ramp up to the stop ...
    assert set(series.lrs[stop:]) == {bare.lrs[stop]}  # ... then the lr at the stop, held


def test_every_samples_steps_and_keeps_each_evaluation_and_the_last() -> None:
    assert plotted_steps(10, 4) == [0, 4, 8, 10]
    assert plotted_steps(10, 4, [3, 9, 11]) == [0, 3, 4, 8, 9, 10]
    stream = plateau_stream(30, start_step=100, every=100)
    full = spec_series(setup_of(PLATEAU), 3500, stream)
    sampled = spec_series(setup_of(PLATEAU), 3500, stream, every=250)
    assert set(sampled.steps) >= {s for s, _ in stream} | {0, 250, 3500}
    by_step = dict(zip(full.steps, full.lrs, strict=True))
    assert sampled.lrs == [by_step[s] for s in sampled.steps]
    assert sampled.marks == full.marks
    with pytest.raises(PlotError, match="--every"):
        plotted_steps(10**9, 1)


def test_evaluations_past_the_plot_are_not_replayed() -> None:
    stream = [(10, 1.0), (20, 2.0), (30, 3.0)]
    series = spec_series(setup_of(PLATEAU), 25, stream)
    assert series.evaluations == stream[:2] and len(series.steps) == 26


def test_marks_rule() -> None:
    assert changes_lrs("reduce", [0.1], [0.01])
    assert not changes_lrs("hold", [0.1], [0.1])
    assert not changes_lrs("warmup", [0.1], [0.2]) and not changes_lrs("decay", [0.2], [0.1])
    assert changes_lrs("stop", [0.1], [0.1]) and not changes_lrs("stop", [0.1], [0.1], "stop")


def test_log_scale_over_more_than_a_decade() -> None:
    assert use_log_scale([(0.1,), (0.001,)]) and not use_log_scale([(0.1,), (0.02,)])
    assert not use_log_scale([(0.1,), (0.0,)])  # a zero has no place on a log axis


def test_values_files(tmp_path: Path) -> None:
    lines = tmp_path / "v.txt"
    lines.write_text("# step value\n10 0.5\n\n20, nan\n30 inf  # diverged\n40 -Infinity\n")
    got = read_values(lines)
    assert [s for s, _ in got] == [10, 20, 30, 40] and got[0][1] == 0.5
    assert math.isnan(got[1][1]) and got[2][1] == math.inf and got[3][1] == -math.inf
    pairs = write(tmp_path / "v.json", [[1, 0.5], [2, "NaN"], [3, 1]])
    got = read_values(pairs)
    assert got[0] == (1, 0.5) and math.isnan(got[1][1]) and got[2] == (3, 1.0)
    for text, what in [
        ("1 0.5\n1 0.4\n", "not above the step before it"),
        ("1 0.5\nx\n", "line 2: expected 'step value'"),
        ("1.5 0.5\n", "line 1: expected 'step value'"),
        ("-1 0.5\n", "line 1: step -1"),
        ("[[1, 0.5], [2]]", "item 2 is not [step, value]"),
        ("[[true, 0.5]]", "item 1 is not [step, value]"),
        ('[[1, "x"]]', "item 1 is not [step, value]"),
        ("[[1, 0.5]", "not valid JSON"),
    ]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(PlotError, match=re.escape(what)):
            read_values(bad)


def test_read_spec_validates_as_the_service_does(tmp_path: Path) -> None:
    setup, given = read_spec(write(tmp_path / "s.json", PLATEAU))
    assert setup.policy_id == "plateau@1" and given == {"patience": 2, "factor": 0.5}
    bad = {**PLATEAU, "base_lrs": [-0.1]}
    with pytest.raises(PlotError, match=re.escape("not a run spec: base_lrs.0")):
        read_spec(write(tmp_path / "s.json", bad))
    bad = {**RANGE_TEST, "policy": {**RANGE_TEST["policy"], "params": {"num_steps": 1}}}
    with pytest.raises(PlotError, match=re.escape("invalid spec: params.num_steps")):
        read_spec(write(tmp_path / "s.json", bad))


# -- the command --------------------------------------------------------------------------------


def test_plot_plateau_with_a_stream(tmp_path: Path) -> None:
    spec = write(tmp_path / "plateau.json", PLATEAU)
    values = tmp_path / "val_loss.txt"
    values.write_text("".join(f"{s} {v!r}\n" for s, v in plateau_stream(30, 100, 100)))
    out = tmp_path / "plateau.png"
    result = lrpilot_cli("plot", str(spec), "--steps", "3500", "--values", str(values),
                         "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 3501 steps, 30 evaluations" in one_line(result.output)
    assert png_size(out) == (1200, 600) and out.stat().st_size > 20_000


def test_plot_range_test_with_and_without_losses(tmp_path: Path) -> None:
    spec = write(tmp_path / "rt.json", RANGE_TEST)
    values = write(tmp_path / "loss.json", [[s, v] for s, v in range_test_losses(200)])
    for name, extra in (("bare", []), ("losses", ["--values", str(values)])):
        out = tmp_path / f"{name}.png"
        result = lrpilot_cli("plot", str(spec), "--steps", "220", *extra, "-o", str(out))
        assert result.exit_code == 0, result.output
        assert png_size(out) == (1200, 600) and out.stat().st_size > 15_000
    assert "1 marks" in result.output
    linear = tmp_path / "linear.png"
    result = lrpilot_cli("plot", str(spec), "--steps", "220", "--linear", "--every", "10",
                         "-o", str(linear))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert png_size(linear) == (1200, 600)


def test_plot_errors_are_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write(tmp_path / "rt.json", RANGE_TEST)
    out = str(tmp_path / "x.png")
    (tmp_path / "bad.json").write_text("{not json")
    invalid = write(tmp_path / "invalid.json", {**RANGE_TEST, "policy": {
        "name": "range_test", "version": 1, "params": {"min_lr": 1.0, "max_lr": 0.5}}})  # fmt: skip
    unknown = write(tmp_path / "unknown.json", {**RANGE_TEST, "policy": {
        "name": "nope", "version": 1, "params": {}}})  # fmt: skip
    cases = [
        (["plot", str(tmp_path / "missing.json"), "--steps", "5", "-o", out], "no such file"),
        (["plot", str(tmp_path / "bad.json"), "--steps", "5", "-o", out], "not valid JSON"),
        (["plot", str(invalid), "--steps", "5", "-o", out],
         "invalid spec: params.max_lr: max_lr must be above min_lr"),
        (["plot", str(unknown), "--steps", "5", "-o", out], "unknown policy 'nope@1'"),
        (["plot", str(spec), "-o", out], "give --steps N"),
        (["plot", "--steps", "5", "-o", out], "give SPEC.json"),
        (["plot", str(spec), "--steps", "5", "--values", str(tmp_path / "no.txt"), "-o", out],
         "no such file"),
        (["plot", str(spec), "--steps", "5", "-o", str(tmp_path / "no" / "x.png")],
         "cannot write"),
        (["plot", "--from-run", "r", "--url", "http://127.0.0.1:9", "-o", out], "cannot reach"),
        (["plot", str(spec), "--from-run", "r", "-o", out], "give no SPEC.json"),
    ]  # fmt: skip
    for args, what in cases:
        result = lrpilot_cli(*args)
        assert result.exit_code == 1, (args, result.output)
        text = result.output.strip()
        assert text.startswith("lrpilot: ") and what in one_line(text), (args, text)
        assert "Traceback" not in text
    assert not (tmp_path / "x.png").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    result = lrpilot_cli("plot", str(spec), "--steps", "5", "-o", out)
    assert result.exit_code == 1
    assert result.output.strip() == "lrpilot: plot needs matplotlib: pip install 'lrpilot[plot]'"


# -- a live run ---------------------------------------------------------------------------------


def test_plot_a_live_run_matches_the_offline_replay(
    live_server: LiveServer, tmp_path: Path
) -> None:
    stream = plateau_stream(25, start_step=100, every=100)
    rt_stream = range_test_losses(200)
    with (
        httpx.Client(base_url=live_server.url, timeout=30) as client,
        Client(live_server.url) as lrpilot,
    ):
        for run_id, spec, feed in (("p", PLATEAU, stream), ("rt", RANGE_TEST, rt_stream)):
            assert client.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
            for step, value in feed:
                r = client.post(f"/v1/runs/{run_id}/observations",
                                json={"step": step, "value": value})  # fmt: skip
                assert r.status_code == 200, r.text
        for run_id, spec, feed, steps in (("p", PLATEAU, stream, 2700),
                                          ("rt", RANGE_TEST, rt_stream, 230)):  # fmt: skip
            live = run_series(lrpilot, run_id, steps, every=1)
            offline = spec_series(setup_of(spec), steps, feed)
            assert live.steps == offline.steps
            assert live.lrs == offline.lrs
            assert live.evaluations == offline.evaluations
            assert live.marks == offline.marks and live.marks
        default = run_series(lrpilot, "p", None, every=7)
        assert default.steps[-1] == stream[-1][0]
        with pytest.raises(PlotError, match="not found"):
            run_series(lrpilot, "nope", 10)
    out = tmp_path / "live.png"
    result = lrpilot_cli("plot", "--from-run", "rt", "--url", live_server.url, "--steps", "230",
                         "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert png_size(out) == (1200, 600)


def test_plot_a_run_clocked_in_tokens_reads_its_positions_with_a_stride(
    live_server: LiveServer,
) -> None:
    steps = plateau_stream(25, start_step=100, every=100)
    stream = [(step * 2**20, value) for step, value in steps]
    every = 2**27  # 2,700 steps of 2**20 tokens: 22 points on the grid, and the evaluations
    with (
        httpx.Client(base_url=live_server.url, timeout=30) as client,
        Client(live_server.url) as lrpilot,
    ):
        assert client.put("/v1/runs/tok", json=PLATEAU | {"clock": "tokens"}).status_code == 201
        for step, value in stream:
            r = client.post("/v1/runs/tok/observations", json={"step": step, "value": value})
            assert r.status_code == 200, r.text
        live = run_series(lrpilot, "tok", None, every=every)
    offline = spec_series(setup_of(PLATEAU), stream[-1][0], stream, every)
    assert live.unit == "tokens" and offline.unit == "step"
    assert live.steps == offline.steps and len(live.steps) < 50
    assert live.lrs == offline.lrs and live.marks == offline.marks
