"""range_test@1, the LR range test: the ramp in closed form, the smoothing and stop rules against
a plain full-history reference, the suggestion on a loss curve whose answer is known, params
validation, the golden file's coverage, and runs through the service (summary, simulate,
verify, rewind)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrpilot.audit.simulate import Setup
from lrpilot.canonical import canonical_json, parse_float
from lrpilot.policies import Observation, PolicyError, get_policy
from lrpilot.policies.range_test import RangeTestParams, RangeTestState
from lrpilot.replay import replay
from tests.harness import GOLDEN_DIR
from tests.helpers import strict_json

POLICY = get_policy("range_test", 1)
NAN, INF = math.nan, math.inf
GOLDEN = GOLDEN_DIR / "range_test@1.jsonl"


def setup(params: dict[str, Any], base_lrs: tuple[float, ...] = (0.1,)) -> tuple[Any, Any]:
    resolved = POLICY.resolve(params, base_lrs)
    return resolved, POLICY.init(resolved, base_lrs)


def run(
    params: dict[str, Any],
    values: list[float],
    base_lrs: tuple[float, ...] = (0.1,),
    steps: Any = None,
) -> list[tuple[str, tuple[float, ...], str, RangeTestState]]:
    resolved, state = setup(params, base_lrs)
    out = []
    for step, value in zip(steps or range(len(values)), values, strict=True):
        outcome, state = POLICY.step(resolved, state, Observation(step, value, "loss"))
        assert isinstance(state, RangeTestState)
        out.append((outcome.action, outcome.lrs, outcome.reason, state))
    return out


# -- a plain reference: every point kept, the suggestion worked out from the whole curve ---------


def reference_lr(p: dict[str, Any], step: int, group: int = 0) -> float:
    """The ramp's closed form, in plain float arithmetic."""
    n = p["num_steps"]
    lo = p["min_lr"][group] if isinstance(p["min_lr"], list) else p["min_lr"]
    hi = p["max_lr"][group] if isinstance(p["max_lr"], list) else p["max_lr"]
    t = min(max(step, 0), n - 1) / (n - 1)
    return float(lo * (hi / lo) ** t if p["mode"] == "exp" else lo + (hi - lo) * t)


def reference(p: dict[str, Any], stream: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """(action, stop step, steepest step, best step) after each observation, from the whole
    history each time (p: resolved params)."""
    beta, factor, skip, last = p["smoothing"], p["diverge_factor"], p["skip_start"], p["num_steps"]
    points: list[tuple[int, float]] = []  # (step, smoothed)
    avg, power, stop, out = 0.0, 1.0, None, []
    steep_step = best_step = None
    for step, value in stream:
        if stop is None:
            stopping = not math.isfinite(value)
            if not stopping:
                # beta**k as a running product, as the policy keeps it: the same roundings
                avg2, power2 = beta * avg + (1 - beta) * value, power * beta
                smoothed = avg2 / (1 - power2)
                stopping = not math.isfinite(smoothed)
                if not stopping:
                    avg, power = avg2, power2
                    points.append((step, smoothed))
                    best = min(s for _, s in points)
                    limit = factor * best if best > 0 else best + (factor - 1) * abs(best)
                    stopping = smoothed > limit or step >= last - 1
            if stopping:
                stop = step
                if points:
                    best_step = min(points, key=lambda q: q[1])[0]
                slopes = []
                for k in range(skip + 1, len(points)):
                    (s0, y0), (s1, y1) = points[k - 1], points[k]
                    dx = math.log(reference_lr(p, s1)) - math.log(reference_lr(p, s0))
                    if dx > 0:
                        slopes.append(((y1 - y0) / dx, s0))
                negative = [q for q in slopes if q[0] < 0]
                steep_step = min(negative, key=lambda q: q[0])[1] if negative else None
        out.append(
            {
                "action": "warmup" if stop is None else "stop",
                "stop_step": stop,
                "steepest_step": steep_step,
                "best_step": best_step,
            }
        )
    return out


def loss_curve(lr: float) -> float:
    """A loss that falls fastest at lr 1e-3 (a tanh step in ln lr) and explodes past 0.3: its
    minimum is at lr 0.0411 (found on a dense grid, see test_known_curve)."""
    x = math.log(lr)
    a, w, b, v = math.log(1e-3), 0.7, math.log(0.3), 0.25
    return 1.0 + 0.5 * (1 - math.tanh((x - a) / w)) + 0.05 * math.exp((x - b) / v)


# -- the ramp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exp", "linear"])
@pytest.mark.parametrize("n", [2, 3, 10, 100, 1001])
def test_ramp_is_the_closed_form(mode: str, n: int) -> None:
    params, state = setup({"min_lr": 1e-6, "max_lr": 1.0, "num_steps": n, "mode": mode,
                           "skip_start": 0})  # fmt: skip
    p = params.model_dump()

    def lrs_at(s: int) -> float:
        return POLICY.lrs_at(params, state, s)[0]

    assert lrs_at(0) == 1e-6 and state.lrs == (1e-6,)  # exactly min_lr at step 0
    assert lrs_at(n - 1) == 1.0  # exactly max_lr at the ramp's last step
    assert lrs_at(n) == lrs_at(10 * n) == 1.0  # clamped after
    for s in sorted({1, n // 2, n - 2, (n - 1) // 3}):
        if 0 < s < n - 1:
            assert lrs_at(s) == pytest.approx(reference_lr(p, s), rel=1e-13), s
    if n == 3:  # hand-checked: the midpoint
        want = 1e-3 if mode == "exp" else 0.5000005
        assert lrs_at(1) == pytest.approx(want, rel=1e-14)
    ramp = [lrs_at(s) for s in range(n)]
    assert ramp == sorted(ramp) and len(set(ramp)) == n  # rises strictly


def test_ramp_by_hand_exp_and_linear_at_0_half_and_n() -> None:
    # exp over 5 decades in 101 steps: step 50 is 1e-7 * 10**(5 * 50/100) = 10**-4.5
    params, state = setup({"min_lr": 1e-7, "max_lr": 1e-2, "num_steps": 101})
    at = [POLICY.lrs_at(params, state, s)[0] for s in (0, 50, 100, 101)]
    assert at[0] == 1e-7 and at[2] == at[3] == 1e-2
    assert at[1] == pytest.approx(10**-4.5, rel=1e-14)
    params, state = setup({"min_lr": 0.5, "max_lr": 2.5, "num_steps": 101, "mode": "linear"})
    at = [POLICY.lrs_at(params, state, s)[0] for s in (0, 50, 100, 101)]
    assert at == [0.5, 1.5, 2.5, 2.5]


def test_per_group_ramps() -> None:
    base = (0.1, 0.2)
    params, state = setup({"min_lr": [1e-6, 1e-4], "max_lr": [1e-2, 1.0], "num_steps": 5,
                           "skip_start": 0}, base)  # fmt: skip
    p = params.model_dump()
    for s in range(6):
        lrs = POLICY.lrs_at(params, state, s)
        for g in (0, 1):
            assert lrs[g] == pytest.approx(reference_lr(p, s, g), rel=1e-13)
    assert POLICY.lrs_at(params, state, 2) == pytest.approx((1e-4, 1e-2), rel=1e-14)
    # the same scalar for every group
    params, state = setup({"num_steps": 5, "skip_start": 0}, base)
    assert POLICY.lrs_at(params, state, 4) == (10.0, 10.0)
    assert state.lrs == (1e-7, 1e-7)


def test_ramp_is_the_same_through_the_decisions_and_lrs_at() -> None:
    params, state = setup({"num_steps": 50, "skip_start": 3})
    for s in range(49):
        outcome, after = POLICY.step(params, state, Observation(s, 1.0, "loss"))
        assert outcome.action == "warmup"
        # a decision's lrs are the lrs in force at its step (the lr its loss was trained with)
        assert outcome.lrs == POLICY.lrs_at(params, state, s) == POLICY.lrs_at(params, after, s)
        assert f"at step {s + 1}" in outcome.reason
        state = after


# -- stops -------------------------------------------------------------------------------------


def test_stops_on_divergence_and_answers_stop_afterwards() -> None:
    values = [2.0] * 10 + [1.0] * 10 + [50.0] * 30
    out = run({"num_steps": 100, "smoothing": 0.0, "skip_start": 0}, values)
    actions = [a for a, *_ in out]
    first = actions.index("stop")
    assert actions[:first] == ["warmup"] * first and first == 20  # 50 > 4 x 1.0 at once
    assert set(actions[first:]) == {"stop"}
    action, lrs, reason, state = out[first]
    assert state.stop_step == 20 and "diverged" in reason and "smoothed 50.0 > 4.0" in reason
    assert state.best == 1.0 and state.best_step == 10
    params, initial = setup({"num_steps": 100, "smoothing": 0.0, "skip_start": 0})
    assert state.min_loss_lrs_div_10 == (POLICY.lrs_at(params, initial, 10)[0] / 10,)
    # later observations: "stop" again, nothing changes, the lr at the stop held
    for action, later_lrs, reason, later in out[first + 1 :]:
        assert action == "stop" and later_lrs == lrs
        assert "range test stopped at step 20" in reason and "is not used" in reason
        assert later == state
    assert POLICY.lrs_at(params, state, 20) == POLICY.lrs_at(params, state, 10**9) == lrs
    assert POLICY.lrs_at(params, state, 19) != lrs  # before the stop: the ramp


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_loss_is_divergence(bad: float) -> None:
    values = [3.0, 2.9, 2.8, 2.7, bad, 1.0, 1.0]
    out = run({"num_steps": 100, "skip_start": 0}, values)
    assert [a for a, *_ in out] == ["warmup"] * 4 + ["stop"] * 3
    _, lrs, reason, state = out[4]
    assert "is not a finite number: diverged" in reason
    assert state.stop_step == 4 and state.evaluations == 4  # the non-finite loss is not smoothed
    params, initial = setup({"num_steps": 100, "skip_start": 0})
    assert lrs == POLICY.lrs_at(params, initial, 4) == POLICY.lrs_at(params, state, 10**6)
    assert state.suggested_lrs is not None and state.min_loss_lrs_div_10 is not None


def test_nan_as_the_first_loss_stops_with_no_suggestion() -> None:
    out = run({"num_steps": 10, "skip_start": 0}, [NAN, 1.0])
    assert [a for a, *_ in out] == ["stop", "stop"]
    state = out[0][3]
    assert state.suggested_lrs is None and state.min_loss_lrs_div_10 is None
    assert "no suggested lr" in out[0][2] and "no min-loss lr" in out[0][2]


def test_a_smoothed_loss_that_overflows_is_divergence() -> None:
    # the largest float twice: avg / (1 - 0.9**2) rounds past it
    out = run({"num_steps": 10, "skip_start": 0, "smoothing": 0.9}, [1.7976931348623157e308] * 3)
    assert [a for a, *_ in out] == ["warmup", "stop", "stop"]
    assert "the smoothed loss overflows: diverged" in out[1][2]
    assert out[1][3].evaluations == 1 and out[1][3].best == 1.7976931348623157e308


def test_stops_at_the_ramps_last_step_with_the_loss_at_max_lr_in() -> None:
    out = run({"num_steps": 20, "skip_start": 2}, [1.0 - 0.01 * s for s in range(25)])
    actions = [a for a, *_ in out]
    assert actions == ["warmup"] * 19 + ["stop"] * 6
    _, lrs, reason, state = out[19]
    assert lrs == (10.0,) and state.stop_step == 19 and state.evaluations == 20
    assert "the ramp reached max_lr" in reason and "range test done" in reason
    assert state.best_step == 19  # still falling: the lowest loss is the last


def test_first_observation_past_the_ramp_stops_at_once() -> None:
    out = run({"num_steps": 5, "skip_start": 0}, [1.0, 0.5], steps=[7, 8])
    assert [a for a, *_ in out] == ["stop", "stop"]
    assert out[0][1] == (10.0,) and out[0][3].suggested_lrs is None
    assert out[0][3].min_loss_lrs_div_10 == (1.0,)


def test_negative_losses_diverge_by_distance_from_best() -> None:
    # best -1: the limit is best + (4 - 1) x |best| = 2, not 4 x best = -4 (which stops at once)
    out = run({"num_steps": 100, "smoothing": 0.0, "skip_start": 0}, [-1.0, -0.5, 1.9, 2.1])
    assert [a for a, *_ in out] == ["warmup", "warmup", "warmup", "stop"]
    assert "2.1 > 2.0 (best -1.0 + (diverge_factor 4.0 - 1) x |best|)" in out[3][2]


def test_smoothing_is_the_bias_corrected_ema() -> None:
    beta = 0.9
    values = [5.0, 4.0, 4.5, 3.0, 3.5, 2.0]
    out = run({"num_steps": 100, "smoothing": beta, "skip_start": 0}, values)
    avg = 0.0
    for k, (v, (_, _, reason, state)) in enumerate(zip(values, out, strict=True)):
        avg = beta * avg + (1 - beta) * v
        assert state.smoothed == pytest.approx(avg / (1 - beta ** (k + 1)), rel=1e-15)
        assert f"smoothed {state.smoothed!r}" in reason
    assert out[0][3].smoothed == pytest.approx(5.0, rel=1e-15)  # bias corrected: no pull to 0


def test_the_slope_is_taken_between_consecutive_points_after_skip_start() -> None:
    # no smoothing: the smoothed losses are the losses. Exp ramp over num_steps - 1 = 10
    # equal steps in ln lr, so the slope is proportional to the loss difference.
    values = [1.0, 0.1, 0.9, 0.8, 0.5, 0.45, 0.44, 0.43, 0.42, 0.41, 0.40]
    p = {"min_lr": 1e-5, "max_lr": 1e5, "num_steps": 11, "smoothing": 0.0,
         "diverge_factor": 100.0}  # fmt: skip
    dx = math.log(1e10) / 10
    # skip_start 0: the steepest is 1.0 -> 0.1, from step 0
    state = run({**p, "skip_start": 0}, values)[-1][3]
    assert state.steepest_step == 0 and state.steepest_slope == pytest.approx(-0.9 / dx)
    # skip_start 2: slopes from the pair (2, 3) on: the steepest is 0.8 -> 0.5, from step 3
    state = run({**p, "skip_start": 2}, values)[-1][3]
    assert state.steepest_step == 3 and state.steepest_slope == pytest.approx(-0.3 / dx)
    assert state.suggested_lrs == pytest.approx((1e-2,), rel=1e-14)  # the earlier point's lr
    # the lowest loss counts every point: 0.1 at step 1 (lr 1e-4), / 10
    assert state.min_loss_lrs_div_10 == pytest.approx((1e-5,), rel=1e-14)


def test_a_rising_curve_gives_no_suggested_lr() -> None:
    out = run({"num_steps": 6, "skip_start": 0, "smoothing": 0.0}, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    state = out[-1][3]
    assert out[-1][0] == "stop" and state.suggested_lrs is None
    assert state.min_loss_lrs_div_10 == (1e-8,)
    assert "no suggested lr (no falling slope" in out[-1][2]


def test_known_curve_suggestion_lands_near_the_true_values() -> None:
    # the true values, on a dense grid of ln lr: the steepest descent and the minimum
    lo, hi = math.log(1e-7), math.log(10.0)
    xs = [lo + i * (hi - lo) / 100_000 for i in range(100_001)]
    ys = [loss_curve(math.exp(x)) for x in xs]
    true_min = math.exp(xs[min(range(len(ys)), key=ys.__getitem__)])
    slopes = [(ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k]) for k in range(len(xs) - 1)]
    true_steep = math.exp(xs[min(range(len(slopes)), key=slopes.__getitem__)])
    assert true_steep == pytest.approx(1e-3, rel=1e-3) and 0.03 < true_min < 0.05
    for mode in ("exp", "linear"):
        params, state = setup({"num_steps": 500, "smoothing": 0.9, "mode": mode})
        if mode == "linear":  # a linear ramp from 1e-7 spends nearly every step above 1e-3
            params, state = setup({"min_lr": 1e-4, "max_lr": 1.0, "num_steps": 2000,
                                   "smoothing": 0.9, "mode": mode})  # fmt: skip
        stepper = POLICY.stepper(params, state, "loss")
        for s in range(3000):
            if stepper.advance(s, loss_curve(POLICY.lrs_at(params, state, s)[0])) == "stop":
                break
        final = stepper.state()
        assert isinstance(final, RangeTestState)
        assert final.stop_step is not None and final.stop_step < params.num_steps - 1  # diverged
        assert final.suggested_lrs is not None and final.min_loss_lrs_div_10 is not None
        if mode == "exp":
            assert true_steep / 2 < final.suggested_lrs[0] < true_steep * 2, final
        assert true_min / 10 / 2 < final.min_loss_lrs_div_10[0] < true_min / 10 * 2, final


# -- against the reference ---------------------------------------------------------------------

losses = st.one_of(
    st.floats(min_value=-5.0, max_value=50.0),
    st.sampled_from([NAN, INF, -INF, 0.0, 1e300]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 40),
    mode=st.sampled_from(["exp", "linear"]),
    smoothing=st.sampled_from([0.0, 0.5, 0.9, 0.98]),
    factor=st.sampled_from([1.5, 4.0, 10.0]),
    skip=st.integers(0, 5),
    values=st.lists(st.one_of(st.floats(min_value=0.1, max_value=3.0), losses), max_size=50),
    stride=st.integers(1, 3),
)
def test_matches_the_full_history_reference(
    n: int, mode: str, smoothing: float, factor: float, skip: int, values: list[float], stride: int
) -> None:
    params = {"num_steps": n, "mode": mode, "smoothing": smoothing, "diverge_factor": factor,
              "skip_start": min(skip, n - 2), "min_lr": 1e-5, "max_lr": 1.0}  # fmt: skip
    stream = [(i * stride, v) for i, v in enumerate(values)]
    resolved = POLICY.resolve(params, (0.1,)).model_dump()
    want = reference(resolved, stream)
    got = run(params, values, steps=[s for s, _ in stream])
    for (action, lrs, _, state), ref, (step, _) in zip(got, want, stream, strict=True):
        assert action == ref["action"]
        assert state.stop_step == ref["stop_step"]
        at = step if state.stop_step is None else min(step, state.stop_step)
        assert lrs[0] == pytest.approx(reference_lr(resolved, at), rel=1e-12)
        if state.stop_step is not None:
            assert state.steepest_step == ref["steepest_step"]
            assert state.best_step == ref["best_step"]


# -- the stepper and the frozen state -----------------------------------------------------------


def test_stepper_state_doc_is_the_logged_state_and_load_state_round_trips() -> None:
    params, state = setup({"num_steps": 30, "skip_start": 1})
    values = [2.0, 1.9, 1.7, 1.2, 1.0, 0.9, NAN, 3.0]
    stepper = POLICY.stepper(params, state, "loss")
    for i, v in enumerate(values):
        stepper.advance(i, v)
        frozen = stepper.state()
        logged = json.loads(canonical_json(frozen.model_dump()))
        assert stepper.state_doc() == logged
        assert POLICY.load_state(logged) == frozen
        # a stepper from the loaded state decides the rest identically
        rest = POLICY.stepper(params, POLICY.load_state(logged), "loss")
        again = POLICY.stepper(params, frozen, "loss")
        for j, w in enumerate(values[i + 1 :], start=i + 1):
            assert rest.advance(j, w) == again.advance(j, w)
            assert rest.reason() == again.reason() and rest.lrs == again.lrs


def test_replay_runs_the_stepper() -> None:
    params, state = setup({"num_steps": 20, "skip_start": 0})
    stream = [(s, 1.0 / (s + 1)) for s in range(25)]
    actions = [s.action for s in replay(POLICY, params, state, stream)]
    assert actions == ["warmup"] * 19 + ["stop"] * 6
    with pytest.raises(RuntimeError):
        POLICY.stepper(params, state).reason()


# -- params ------------------------------------------------------------------------------------


def test_defaults_and_schema() -> None:
    assert POLICY.defaults() == {
        "min_lr": 1e-7,
        "max_lr": 10.0,
        "num_steps": 100,
        "mode": "exp",
        "smoothing": 0.98,
        "diverge_factor": 4.0,
        "skip_start": 10,
    }
    schema = POLICY.params_schema()
    assert json.dumps(schema)
    assert schema["examples"] and "base_lrs" in schema["description"]
    assert set(schema["properties"]) == set(POLICY.defaults())
    assert POLICY.open_loop is False and set(POLICY.actions) == {"warmup", "stop"}
    for example in schema["examples"]:
        POLICY.resolve(example, (0.1,))
    params = POLICY.resolve({}, (0.1,))
    assert isinstance(params, RangeTestParams)
    assert canonical_json(POLICY.resolve(params.model_dump(), (0.1,)).model_dump()) == (
        canonical_json(params.model_dump())
    )


@pytest.mark.parametrize(
    "params,base_lrs,loc",
    [
        ({"min_lr": 1.0, "max_lr": 1.0}, (0.1,), ("params", "max_lr")),
        ({"min_lr": 2.0, "max_lr": 1.0}, (0.1,), ("params", "max_lr")),
        ({"min_lr": [1e-5, 1.0], "max_lr": [1.0, 0.5]}, (0.1, 0.1), ("params", "max_lr")),
        ({"min_lr": 0.0}, (0.1,), ("params", "min_lr")),
        ({"min_lr": -1e-3}, (0.1,), ("params", "min_lr")),
        ({"max_lr": NAN}, (0.1,), ("params", "max_lr")),
        ({"max_lr": INF}, (0.1,), ("params", "max_lr")),
        ({"min_lr": []}, (0.1,), ("params", "min_lr")),
        ({"min_lr": "1e-5"}, (0.1,), ("params", "min_lr")),
        ({"min_lr": [1e-5, 1e-4]}, (0.1,), ("params", "min_lr")),
        ({"max_lr": [1.0]}, (0.1, 0.2), ("params", "max_lr")),
        ({"num_steps": 1}, (0.1,), ("params", "num_steps")),
        ({"num_steps": 100.0}, (0.1,), ("params", "num_steps")),
        ({"num_steps": True}, (0.1,), ("params", "num_steps")),
        ({"smoothing": 1.0}, (0.1,), ("params", "smoothing")),
        ({"smoothing": -0.1}, (0.1,), ("params", "smoothing")),
        ({"smoothing": NAN}, (0.1,), ("params", "smoothing")),
        ({"diverge_factor": 1.0}, (0.1,), ("params", "diverge_factor")),
        ({"diverge_factor": INF}, (0.1,), ("params", "diverge_factor")),
        ({"mode": "cosine"}, (0.1,), ("params", "mode")),
        ({"skip_start": -1}, (0.1,), ("params", "skip_start")),
        ({"num_steps": 10}, (0.1,), ("params", "skip_start")),  # default skip_start 10 > 8
        ({"patience": 3}, (0.1,), ("params", "patience")),
    ],
)
def test_invalid_params_name_the_field(
    params: dict[str, Any], base_lrs: tuple[float, ...], loc: tuple[str, ...]
) -> None:
    with pytest.raises(PolicyError) as exc:
        POLICY.resolve(params, base_lrs)
    assert loc in [tuple(e[0])[: len(loc)] for e in exc.value.errors], exc.value.errors
    assert loc[-1] in str(exc.value)


def test_num_steps_two_is_the_smallest_ramp() -> None:
    out = run({"num_steps": 2, "skip_start": 0, "min_lr": 0.01, "max_lr": 1.0}, [1.0, 0.5, 0.4])
    assert [(a, lrs) for a, lrs, _, _ in out] == [
        ("warmup", (0.01,)),
        ("stop", (1.0,)),
        ("stop", (1.0,)),
    ]
    assert out[1][3].suggested_lrs == (0.01,)  # the only slope, from step 0


# -- the golden file ---------------------------------------------------------------------------


def test_golden_file_covers_modes_stops_and_non_finite_losses() -> None:
    lines = [json.loads(x) for x in GOLDEN.read_text(encoding="utf-8").splitlines()]
    assert len(lines) >= 10
    assert {line["policy"] for line in lines} == {"range_test@1"}
    assert {line["params"]["mode"] for line in lines} == {"exp", "linear"}
    values = [parse_float(v) for line in lines for _, v in line["observations"]]
    assert any(math.isnan(v) for v in values) and INF in values and -INF in values
    assert {d["action"] for line in lines for d in line["decisions"]} == {"warmup", "stop"}
    reasons = " ".join(d["reason"] for line in lines for d in line["decisions"])
    for what in ("diverged", "is not a finite number", "range test done", "is not used",
                 "overflows", "suggested lr", "no suggested lr", "lrs ["):  # fmt: skip
        assert what in reasons, what
    assert any(len(line["base_lrs"]) > 1 for line in lines)


# -- through the service -----------------------------------------------------------------------


def spec(params: dict[str, Any], base_lrs: list[float] | None = None) -> dict[str, Any]:
    return {
        "policy": {"name": "range_test", "version": 1, "params": params},
        "base_lrs": base_lrs or [0.1],
        "metric": "train_loss",
    }


def test_a_range_test_run_through_the_service(api: TestClient) -> None:
    params = {"num_steps": 500, "smoothing": 0.9}
    assert api.put("/v1/runs/rt", json=spec(params)).status_code == 201
    resolved, state = setup(params)
    decisions = []
    for step in range(600):
        lr = api.get(f"/v1/runs/rt/lr?step={step}").json()["lrs"][0]
        assert lr == POLICY.lrs_at(resolved, state, step)[0]
        r = api.post("/v1/runs/rt/observations", json={"step": step, "value": loss_curve(lr)})
        assert r.status_code == 200, r.text
        decision = strict_json(r.text)
        decisions.append(decision)
        assert decision["lrs"] == [lr]
        state = POLICY.load_state(decision["state"])
        if decision["action"] == "stop":
            break
    stop = decisions[-1]
    assert [d["action"] for d in decisions[:-1]] == ["warmup"] * (len(decisions) - 1)
    assert "diverged" in stop["reason"] and stop["state"]["stop_step"] == stop["step"]
    # every later observation: "stop" again, the lr at the stop held
    later = api.post("/v1/runs/rt/observations", json={"step": stop["step"] + 5, "value": "NaN"})
    assert later.json()["action"] == "stop" and later.json()["lrs"] == stop["lrs"]
    assert later.json()["state"] == stop["state"]
    held = api.get(f"/v1/runs/rt/lr?step={stop['step'] + 100}").json()
    assert held["lrs"] == stop["lrs"]
    page = api.get(f"/v1/runs/rt/lrs?from={stop['step'] - 2}&count=5").json()
    assert page["lrs"][2:] == [stop["lrs"]] * 3 and page["open_loop"] is False
    assert page["lrs"][0] == decisions[-3]["lrs"]

    summary = strict_json(api.get("/v1/runs/rt/summary").text)
    rt = summary["range_test"]
    assert rt["stop_step"] == stop["step"]
    assert rt["suggested_lrs"] == stop["state"]["suggested_lrs"]
    assert rt["suggested_lr"] == stop["state"]["suggested_lrs"][0]
    assert rt["min_loss_lr_div_10"] == stop["state"]["min_loss_lrs_div_10"][0]
    assert 5e-4 < rt["suggested_lr"] < 2e-3 and 2e-3 < rt["min_loss_lr_div_10"] < 8e-3
    assert rt["best_step"] == stop["state"]["best_step"]
    stops = api.get("/v1/runs/rt/decisions?action=stop").json()["items"]
    assert [d["step"] for d in stops] == [stop["step"], stop["step"] + 5]

    # the log verifies; a rewind before the stop ramps again
    assert api.post("/v1/runs/rt/verify", json={}).json()["ok"] is True
    back = api.post("/v1/runs/rt/rewind", json={"to_step": 100})
    assert back.status_code == 200, back.text
    assert strict_json(api.get("/v1/runs/rt/summary").text)["range_test"]["stop_step"] is None
    again = api.post("/v1/runs/rt/observations", json={"step": 101, "value": 1.0}).json()
    assert again["action"] == "warmup" and again["lrs"] == [POLICY.lrs_at(resolved, state, 101)[0]]
    assert api.post("/v1/runs/rt/verify", json={}).json()["ok"] is True


def test_summary_before_the_stop_gives_the_suggestion_so_far(api: TestClient) -> None:
    api.put("/v1/runs/early", json=spec({"num_steps": 100, "skip_start": 0, "smoothing": 0.0}))
    for step, value in enumerate([3.0, 2.0, 1.5, 1.4]):
        api.post("/v1/runs/early/observations", json={"step": step, "value": value})
    rt = api.get("/v1/runs/early/summary").json()["range_test"]
    resolved, state = setup({"num_steps": 100})
    ramp = [POLICY.lrs_at(resolved, state, s)[0] for s in range(4)]
    assert rt["stop_step"] is None and rt["evaluations"] == 4
    assert rt["suggested_lr"] == ramp[0]  # 3.0 -> 2.0 is the steepest
    assert rt["min_loss_lr_div_10"] == ramp[3] / 10
    # other policies' summaries have no range_test entry
    api.put("/v1/runs/p", json={"policy": {"name": "plateau", "version": 1, "params": {}},
                                "base_lrs": [0.1]})  # fmt: skip
    assert "range_test" not in api.get("/v1/runs/p/summary").json()


def test_invalid_spec_is_a_422_naming_the_field(api: TestClient) -> None:
    r = api.put("/v1/runs/bad", json=spec({"min_lr": 1.0, "max_lr": 0.1}))
    assert r.status_code == 422
    assert "max_lr" in r.text


def test_simulate(api: TestClient) -> None:
    values: list[Any] = [2.0, 1.8, 1.5, 1.0, 0.8, "NaN", 1.0]
    r = api.post(
        "/v1/simulate",
        json={
            "policy": {"name": "range_test", "version": 1, "params": {"num_steps": 10,
                                                                      "skip_start": 0}},
            "base_lrs": [0.1, 0.2],
            "values": values,
            "steps": list(range(len(values))),
        },
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = strict_json(r.text)
    assert [i["action"] for i in body["items"]] == ["warmup"] * 5 + ["stop"] * 2
    assert body["params"]["num_steps"] == 10 and body["params"]["smoothing"] == 0.98
    setup_ = Setup.of("range_test", 1, {"num_steps": 10, "skip_start": 0}, [0.1, 0.2], "metric")
    offline = list(setup_.decisions(list(enumerate([parse_float(v) for v in values]))))
    assert [i["reason"] for i in body["items"]] == [d["reason"] for d in offline]
    assert body["items"][5]["lrs"] == body["items"][6]["lrs"]
