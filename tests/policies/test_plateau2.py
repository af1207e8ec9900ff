"""plateau@2: torch's rule with smoothing, a recent reference, divergence, float32 lrs, a decay
on the first plateau and a stop signal.

* differential: with lr_dtype float32 and torch's configuration (window 1, no ema, best_of null,
  multiply, no stop, finite values) plateau@2 is torch's ReduceLROnPlateau over an optimizer
  built with tensor lrs, lr by lr, step by step, reduction by reduction; with float64 it is
  torch over float lrs (and plateau@1);
* each feature with hand-checked expectations;
* hypothesis: the stepper and step() agree one observation at a time, the state's JSON reads
  back to the stepper's state_doc(), lrs_at at a decision's step is its lrs;
* the service: a run of plateau@2 through the API (observations, lr?step=k inside a decay,
  lrs?from, decisions, simulate).
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lrpilot.canonical import canonical_json, parse_float
from lrpilot.policies import Observation, PolicyError, get_policy
from lrpilot.policies.common import to_f32
from lrpilot.policies.plateau2 import Plateau2, Plateau2State, remaining
from lrpilot.replay import replay
from tests.harness import GOLDEN_DIR
from tests.helpers import strict_json
from tests.streams import Stream, make_stream

P2 = Plateau2()
P1: Any = get_policy("plateau", 1)
NAN, INF = math.nan, math.inf
N_TENSOR_STREAMS = 400
N_FLOAT_STREAMS = 200


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def decide(
    params: dict[str, Any],
    base_lrs: tuple[float, ...],
    values: list[float],
    steps: list[int] | None = None,
    policy: Any = P2,
) -> list[tuple[Any, Any]]:
    """(outcome, state) after each observation, through step()."""
    resolved = policy.resolve(params, base_lrs)
    state = policy.init(resolved, base_lrs)
    out = []
    for step, value in zip(steps or range(1, len(values) + 1), values, strict=True):
        outcome, state = policy.step(resolved, state, Observation(step, value, "val_loss"))
        out.append((outcome, state))
    return out


def decay(shape: str, steps: int, floor: float | list[float] = 0.0) -> dict[str, Any]:
    return {"action": "decay", "shape": shape, "steps": steps, "floor": floor}


def actions(decided: list[tuple[Any, Any]]) -> list[str]:
    return [o.action for o, _ in decided]


def lrs(decided: list[tuple[Any, Any]]) -> list[tuple[float, ...]]:
    return [o.lrs for o, _ in decided]


# ------------------------------------------------------------- differential against torch


def finite(stream: Stream) -> Stream:
    """The stream without its non-finite values (they are divergence in plateau@2)."""
    kept = [(s, v) for s, v in zip(stream.steps, stream.values, strict=True) if math.isfinite(v)]
    return Stream(
        seed=stream.seed,
        flavor="torch",
        params=stream.reference_kwargs(),
        base_lrs=stream.base_lrs,
        values=tuple(v for _, v in kept),
        steps=tuple(s for s, _ in kept),
    )


def torch_scheduler(
    base_lrs: tuple[float, ...], kwargs: dict[str, Any], tensor_lrs: bool
) -> tuple[torch.optim.Optimizer, ReduceLROnPlateau]:
    def lr(x: float) -> Any:
        return torch.tensor(x) if tensor_lrs else x

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr(x)} for x in base_lrs]
    opt = torch.optim.SGD(groups, lr=lr(base_lrs[0]))
    return opt, ReduceLROnPlateau(opt, **kwargs)


def replay_against_torch(stream: Stream, lr_dtype: str) -> int:
    """Step plateau@2 and torch side by side; assert agreement after every evaluation; return
    the number of reductions (evaluations after which some lr changed)."""
    tensor_lrs = lr_dtype == "float32"
    params = P2.resolve({**stream.params, "lr_dtype": lr_dtype}, stream.base_lrs)
    state = P2.init(params, stream.base_lrs)
    opt, sched = torch_scheduler(stream.base_lrs, stream.params, tensor_lrs)
    if tensor_lrs:
        assert all(g["lr"].dtype == torch.float32 for g in opt.param_groups)
    assert [bits(x) for x in state.lrs] == [bits(float(g["lr"])) for g in opt.param_groups]
    torch_reductions = ours = 0
    for i, (step, value) in enumerate(zip(stream.steps, stream.values, strict=True)):
        before = [float(g["lr"]) for g in opt.param_groups]
        was_cooling = sched.cooldown_counter > 0
        sched.step(value)
        expected = [float(g["lr"]) for g in opt.param_groups]
        outcome, state = P2.step(params, state, Observation(step, value, "val_loss"))
        where = f"{stream.describe()} lr_dtype={lr_dtype}\n  mismatch at index {i}"
        assert [bits(x) for x in outcome.lrs] == [bits(x) for x in expected], (
            f"{where}: lrs {outcome.lrs!r} != torch {expected!r}"
        )
        assert state.lrs == outcome.lrs, where
        changed = expected != before
        torch_reductions += changed
        ours += outcome.reduced
        want = "reduce" if changed else ("cooldown" if was_cooling else "hold")
        assert outcome.action == want, f"{where}: action {outcome.action!r} != {want!r}"
        assert repr(state.best) == repr(float(sched.best)), where
        assert state.bad_evaluations == sched.num_bad_epochs, where
        assert state.cooldown_counter == sched.cooldown_counter, where
        assert outcome.reason, where
    assert ours == torch_reductions, f"{stream.describe()}: {ours} != torch {torch_reductions}"
    return torch_reductions


@pytest.mark.parametrize("seed", range(N_TENSOR_STREAMS))
def test_float32_lrs_match_torch_with_tensor_lrs(seed: int) -> None:
    replay_against_torch(finite(make_stream(seed, "torch")), "float32")


@pytest.mark.parametrize("seed", range(N_FLOAT_STREAMS))
def test_float64_lrs_match_torch_with_float_lrs_and_plateau1(seed: int) -> None:
    stream = finite(make_stream(seed, "torch"))
    replay_against_torch(stream, "float64")
    ours = decide(stream.params, stream.base_lrs, list(stream.values), list(stream.steps))
    theirs = decide(
        stream.params, stream.base_lrs, list(stream.values), list(stream.steps), policy=P1
    )
    assert [(o.lrs, o.action) for o, _ in ours] == [(o.lrs, o.action) for o, _ in theirs]


def test_the_differential_streams_reduce_often_over_several_groups() -> None:
    """The streams above are worth comparing: many reductions, many multi-group streams, and
    float32 rounding that makes the tensor-lr trajectory differ from the float one."""
    reductions = groups = differ = evaluations = 0
    for seed in range(N_TENSOR_STREAMS):
        stream = finite(make_stream(seed, "torch"))
        groups += len(stream.base_lrs) > 1
        evaluations += len(stream.values)
        f32 = decide({**stream.params, "lr_dtype": "float32"}, stream.base_lrs, list(stream.values))
        f64 = decide(stream.params, stream.base_lrs, list(stream.values))
        reductions += sum(o.reduced for o, _ in f32)
        differ += lrs(f32) != lrs(f64)
    assert evaluations > 20_000 and reductions > 2_000 and groups > 150, (
        evaluations,
        reductions,
        groups,
    )
    assert differ > 0.9 * N_TENSOR_STREAMS  # float32 lrs (0.5 and 1.0 are float32 values)


# ------------------------------------------------------------------------ the features

SPIKE = [1.0, 0.9, 0.2, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]


def test_a_lucky_spike_stalls_torch_but_best_of_recovers() -> None:
    # 0.2 at the third evaluation is a lucky spike; the metric then improves steadily and
    # plateaus at 0.5 from the tenth evaluation on.
    torch_rule = decide({"patience": 2, "factor": 0.5}, (0.1,), SPIKE, policy=P1)
    assert [i for i, a in enumerate(actions(torch_rule)) if a == "reduce"] == [5, 8, 11, 14]
    assert lrs(torch_rule)[-1] == (0.00625,)  # four reductions while the metric improved
    assert all(s.best == 0.2 for _, s in torch_rule[2:])  # the spike stays the reference

    same = decide({"patience": 2, "factor": 0.5}, (0.1,), SPIKE)
    assert lrs(same) == lrs(torch_rule)  # plateau@2 without best_of is torch's rule

    recent = decide({"patience": 2, "factor": 0.5, "best_of": 2}, (0.1,), SPIKE)
    # the spike is out of the last 2 values at the sixth evaluation: 0.7 improves on 0.75
    assert [o.action for o, _ in recent] == ["hold"] * 12 + ["reduce", "hold", "hold"]
    assert lrs(recent) == [(0.1,)] * 12 + [(0.05,)] * 3
    outcome, state = recent[5]
    assert outcome.reason.startswith(
        "val_loss 0.7 improved on 0.75 (step 5), the best of the last 2 values compared "
        "(best_of 2), beyond rel threshold 0.0001"
    )
    assert state.history == ((5, 0.75), (6, 0.7)) and (state.best, state.best_step) == (0.7, 6)
    reduce, _ = recent[12]
    assert "for 3 evaluations > patience 2: lr 0.1 -> 0.05" in reduce.reason


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_non_finite_metric_reduces_at_once(bad: float, mode: str) -> None:
    params = {"mode": mode, "patience": 5, "factor": 0.5, "cooldown": 2, "min_lr": [0.0, 0.04]}
    decided = decide(params, (0.1, 0.05), [1.0, 1.0, bad, bad, 1.0, 1.0])
    assert actions(decided) == ["hold", "hold", "reduce", "reduce", "cooldown", "cooldown"]
    assert lrs(decided)[2:4] == [(0.05, 0.04), (0.025, 0.04)]
    name = {True: "NaN", False: "Infinity" if bad > 0 else "-Infinity"}[math.isnan(bad)]
    reason = decided[2][0].reason
    assert reason.startswith(f"diverged: val_loss is {name}: lrs [0.1, 0.05] -> [0.05, 0.04]")
    assert reason.endswith("then cooldown 2, and the patience count restarts")
    # counting restarts: no bad evaluations, the cooldown runs; the value is no reference
    state = decided[2][1]
    assert (state.bad_evaluations, state.cooldown_counter) == (0, 2)
    assert state.best == 1.0 and state.best_step == 1
    assert decided[3][0].reduced  # in cooldown too: divergence does not wait
    # plateau@1 (torch) keeps silent: a NaN or an inf is just another bad evaluation
    torch_rule = decide(params, (0.1, 0.05), [1.0, 1.0, bad, bad, 1.0, 1.0], policy=P1)
    assert set(actions(torch_rule)) == {"hold"}


def test_divergence_first_and_at_the_floor() -> None:
    first = decide({"factor": 0.1}, (0.1,), [NAN, 1.0])
    assert actions(first) == ["reduce", "hold"] and lrs(first)[0] == (0.1 * 0.1,)
    floored = decide({"patience": 0, "factor": 0.1, "min_lr": 0.1}, (0.1,), [1.0, NAN])
    assert actions(floored) == ["hold", "hold"]
    assert "but no lr can go lower" in floored[1][0].reason


def test_divergence_never_enters_the_smoothing_or_the_reference() -> None:
    window = decide({"window": 3, "patience": 9}, (0.1,), [3.0, NAN, 1.0, INF, 2.0])
    assert window[-1][1].recent == (3.0, 1.0, 2.0)
    ema = decide({"ema": 0.5, "patience": 9}, (0.1,), [4.0, NAN, 2.0, -INF])
    assert ema[-1][1].ema_value == 3.0
    best_of = decide({"best_of": 3, "patience": 9}, (0.1,), [4.0, NAN, 2.0])
    assert best_of[-1][1].history == ((1, 4.0), (3, 2.0))


def test_window_compares_the_mean_of_the_last_values() -> None:
    decided = decide({"window": 3, "patience": 0, "factor": 0.5}, (0.1,), [3.0, 1.0, 2.0, 6.0])
    # means 3, 2, 2, 3: improved, improved, not (2 is not below 2 * (1 - 1e-4)), not
    assert [s.best for _, s in decided] == [3.0, 2.0, 2.0, 2.0]
    assert actions(decided) == ["hold", "hold", "reduce", "reduce"]
    assert decided[3][1].recent == (1.0, 2.0, 6.0)
    assert decided[3][0].reason.startswith(
        "val_loss 6.0 (mean of the last 3 values: 3.0) did not improve on best 2.0 (step 2)"
    )


def test_ema_compares_the_moving_average() -> None:
    decided = decide({"ema": 0.5, "patience": 0, "factor": 0.5}, (0.1,), [4.0, 2.0, 2.0, 6.0])
    assert [s.ema_value for _, s in decided] == [4.0, 3.0, 2.5, 4.25]
    assert actions(decided) == ["hold", "hold", "hold", "reduce"]
    assert "(moving average, ema 0.5: 4.25)" in decided[3][0].reason


def test_float32_lrs_are_float32_values() -> None:
    decided = decide({"patience": 0, "lr_dtype": "float32"}, (0.1, 3e-4), [1.0, 1.0])
    params = P2.resolve({"lr_dtype": "float32"}, (0.1, 3e-4))
    assert P2.init(params, (0.1, 3e-4)).lrs == (0.10000000149011612, 0.0003000000142492354)
    # torch: max(float(lr) * factor, min_lr) in double, written back into the float32 tensor
    assert lrs(decided)[1] == (
        to_f32(0.10000000149011612 * 0.1),
        to_f32(0.0003000000142492354 * 0.1),
    )
    assert lrs(decided)[1] == (0.009999999776482582, 3.000000106112566e-05)


def test_a_linear_decay_reaches_its_floor_after_its_steps() -> None:
    params = P2.resolve(
        {"patience": 1, "on_plateau": decay("linear", 100, 1e-3)},
        (0.1,),
    )
    steps = list(range(10, 160, 10))
    decided = decide(params.model_dump(), (0.1,), [1.0] * len(steps), steps)
    assert actions(decided) == ["hold", "hold"] + ["decay"] * 11 + ["hold", "hold"]
    start, state = decided[2]  # the plateau at step 30: the decay starts from lr 0.1
    assert start.reduced and start.lrs == (0.1,)
    assert (state.decay_from, state.decay_to, state.decay_lrs) == (30, 130, (0.1,))
    assert (
        "a linear decay over 100 steps starts, from lr 0.1 at step 30 to lr 0.001 at step 130"
        in start.reason
    )
    # between evaluations, lrs_at follows the decay step by step
    at = {step: P2.lrs_at(params, state, step)[0] for step in range(30, 200)}
    assert at[30] == 0.1 and at[80] == pytest.approx(0.0505, rel=1e-15)
    assert at[55] == pytest.approx(0.001 + 0.099 * 0.75, rel=1e-15)
    assert at[129] == pytest.approx(0.001 + 0.099 * 0.01, rel=1e-13)
    assert at[130] == at[199] == 0.001
    assert all(at[s + 1] <= at[s] for s in range(30, 199))
    # the decisions during the decay are the decay at their step; landing on the floor too
    for (outcome, s), step in zip(decided[3:], steps[3:], strict=True):
        assert outcome.lrs == P2.lrs_at(params, state, step) == s.lrs
    assert decided[12][0].lrs == (0.001,) and "ends: lr" in decided[12][0].reason
    assert decided[13][0].action == "hold" and "has ended" in decided[13][0].reason


def test_a_cosine_decay_is_half_a_cosine_and_the_same_float_everywhere() -> None:
    params = P2.resolve(
        {"patience": 0, "on_plateau": decay("cosine", 1000, [0.0, 1e-3])},
        (0.1, 0.01),
    )
    (_, _), (start, state) = decide(params.model_dump(), (0.1, 0.01), [1.0, 1.0], [0, 500])
    assert start.action == "decay" and state.decay_to == 1500
    for step in range(500, 1501, 25):
        t = (step - 500) / 1000
        half = (1 + math.cos(math.pi * t)) / 2
        want = [f + (lr - f) * half for lr, f in ((0.1, 0), (0.01, 1e-3))]
        got = P2.lrs_at(params, state, step)
        assert got == pytest.approx(want, rel=1e-14, abs=1e-17), step
    assert P2.lrs_at(params, state, 1000) == pytest.approx((0.05, 0.0055), rel=1e-15)
    # the polynomial is IEEE + - * / only: these are the floats on every machine
    assert remaining("cosine", 1, 4) == 0.14644660940672624
    assert remaining("cosine", 3, 4) == 0.8535533905932737
    assert remaining("linear", 1, 4) == 0.25
    for left in range(1, 1000):
        # sin(pi/2 * x) ** 2 = (1 - cos(pi * x)) / 2, without the cancellation near 0
        exact = math.sin(math.pi / 2 * left / 1000) ** 2
        assert remaining("cosine", left, 1000) == pytest.approx(exact, rel=1e-15)


def test_divergence_during_a_decay_restarts_it_lower_with_the_same_end() -> None:
    params = {"patience": 0, "factor": 0.5, "on_plateau": decay("linear", 100, 0.0)}
    decided = decide(params, (0.1,), [1.0, 1.0, NAN, 1.0], [0, 100, 150, 175])
    assert actions(decided) == ["hold", "decay", "reduce", "decay"]
    diverged, state = decided[2]
    # at step 150 the decay was at 0.05; halved to 0.025, then linear to 0 at step 200
    assert diverged.lrs == (0.025,) and diverged.reduced
    assert (state.decay_from, state.decay_lrs, state.decay_to) == (150, (0.025,), 200)
    assert decided[3][0].lrs == (0.0125,)
    assert diverged.reason == (
        "diverged: val_loss is NaN: the linear decay to step 200 restarts from lr 0.05 -> "
        "0.025, and the patience count restarts"
    )


def test_a_decay_never_raises_an_lr_already_below_its_floor() -> None:
    params = {"patience": 1, "factor": 0.01, "on_plateau": decay("cosine", 40, 1e-2)}
    decided = decide(params, (0.1, 0.5), [1.0, NAN, 0.9, 0.9, 0.9, 0.9], [10, 20, 30, 40, 50, 60])
    assert lrs(decided)[1] == (0.001, 0.005)  # divergence took both below the floor 0.01
    assert actions(decided)[4:] == ["decay", "decay"]
    assert lrs(decided)[4:] == [(0.001, 0.005), (0.001, 0.005)]  # and the decay holds them


def test_stop_fires_after_stop_after_evaluations_at_the_floor() -> None:
    params = {"patience": 0, "factor": 0.1, "min_lr": 1e-3, "stop_after": 2}
    decided = decide(params, (0.1,), [1.0] * 8)
    # 0.1 -> 0.01 -> 0.001 (the floor); then 3 evaluations without improvement > stop_after 2
    assert actions(decided) == ["hold", "reduce", "reduce", "hold", "hold", "stop", "stop", "stop"]
    assert [s.floor_evaluations for _, s in decided] == [0, 0, 0, 1, 2, 3, 3, 3]
    stop, state = decided[5]
    assert state.stopped_at == 6 and not stop.reduced
    assert stop.reason.endswith(
        "every lr at its floor and no improvement for 3 evaluations > stop_after 2: stop (an "
        "early-stopping signal)"
    )
    after, frozen = decided[7]
    assert frozen == state and after.lrs == stop.lrs  # nothing changes after a stop
    assert after.reason.startswith("stopped at step 6 (an early-stopping signal")
    # an improvement at the floor starts the count again; a divergence counts
    reset = decide(params, (0.1,), [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, NAN, 0.5])
    assert actions(reset) == [
        "hold",
        "reduce",
        "reduce",
        "hold",
        "hold",
        "hold",
        "hold",
        "hold",
        "stop",
    ]
    # stop_after 0: the first evaluation at the floor without improvement
    assert actions(decide({**params, "stop_after": 0}, (0.1,), [1.0] * 5))[3:] == ["stop"] * 2
    # no stop_after: never
    assert "stop" not in actions(decide({**params, "stop_after": None}, (0.1,), [1.0] * 30))


def test_stop_after_a_decay_counts_from_its_end() -> None:
    params = {"patience": 0, "stop_after": 1, "on_plateau": decay("linear", 25, 0.0)}
    decided = decide(params, (0.1,), [1.0] * 7, [10, 20, 30, 40, 50, 60, 70])
    # decay from step 20 to 45: at 50 the floor (counted 1), at 60 stop
    assert actions(decided) == ["hold", "decay", "decay", "decay", "decay", "stop", "stop"]
    assert lrs(decided)[4:] == [(0.0,)] * 3


# ------------------------------------------------------------------------- params


INVALID: list[tuple[dict[str, Any], tuple[float, ...], tuple[str | int, ...], str]] = [
    ({"window": 3, "ema": 0.5}, (0.1,), ("ema",), "not both"),
    ({"window": 0}, (0.1,), ("window",), "greater than or equal to 1"),
    ({"window": 2.0}, (0.1,), ("window",), "integer"),
    ({"window": True}, (0.1,), ("window",), "integer"),
    ({"window": 1001}, (0.1,), ("window",), "less than or equal to 1000"),
    ({"ema": 1.0}, (0.1,), ("ema",), "less than 1"),
    ({"ema": -0.1}, (0.1,), ("ema",), "greater than or equal to 0"),
    ({"ema": "0.5"}, (0.1,), ("ema",), "number"),
    ({"ema": NAN}, (0.1,), ("ema",), "finite"),
    ({"best_of": 0}, (0.1,), ("best_of",), "greater than or equal to 1"),
    ({"stop_after": -1}, (0.1,), ("stop_after",), "greater than or equal to 0"),
    ({"lr_dtype": "float16"}, (0.1,), ("lr_dtype",), "float64"),
    ({"lr_dtype": "float32"}, (1e39,), ("lr_dtype",), "cannot hold the base lr"),
    ({"factor": 1.0}, (0.1,), ("factor",), "less than 1"),
    ({"threshold": 1.0}, (0.1,), ("threshold",), "< 1"),
    ({"min_lr": [0.0]}, (0.1, 0.2), ("min_lr",), "param group"),
    ({"flavor": "torch"}, (0.1,), ("flavor",), "(?i)extra"),
    ({"on_plateau": {"action": "cut"}}, (0.1,), ("on_plateau", "action"), "'multiply' or"),
    (
        {"on_plateau": {"action": "decay", "shape": "linear"}},
        (0.1,),
        ("on_plateau", "steps"),
        "required",
    ),
    (
        {"on_plateau": {"action": "decay", "shape": "linear", "steps": 0}},
        (0.1,),
        ("on_plateau", "steps"),
        "greater than or equal to 1",
    ),
    (
        {"on_plateau": {"action": "decay", "shape": "step", "steps": 5}},
        (0.1,),
        ("on_plateau", "shape"),
        "'linear' or 'cosine'",
    ),
    ({"on_plateau": decay("linear", 5, 0.2)}, (0.1,), ("on_plateau", "floor"), "above the base lr"),
    (
        {"on_plateau": decay("linear", 5, [0.0, 0.2])},
        (0.1, 0.1),
        ("on_plateau", "floor", 1),
        "above the base lr 0.1 of param group 1",
    ),
    (
        {"on_plateau": decay("linear", 5, [0.0])},
        (0.1, 0.1),
        ("on_plateau", "floor"),
        "param groups",
    ),
    ({"on_plateau": decay("linear", 5, -1.0)}, (0.1,), ("on_plateau", "floor"), ">= 0"),
    (
        {"on_plateau": {"action": "multiply", "steps": 5}},
        (0.1,),
        ("on_plateau", "steps"),
        "(?i)extra",
    ),
]


@pytest.mark.parametrize(
    ("params", "base_lrs", "loc", "rule"),
    INVALID,
    ids=[f"{i}-{'.'.join(map(str, case[2]))}" for i, case in enumerate(INVALID)],
)
def test_impossible_params_are_refused_naming_the_field(
    params: dict[str, Any], base_lrs: tuple[float, ...], loc: tuple[str | int, ...], rule: str
) -> None:
    with pytest.raises(PolicyError) as info:
        P2.resolve(params, base_lrs)
    named = [msg for where, msg in info.value.errors if where == ("params", *loc)]
    assert named, f"no error at {loc}: {info.value.errors!r}"
    assert any(re.search(rule, msg) for msg in named), info.value.errors


def test_the_registry_serves_plateau2() -> None:
    assert isinstance(get_policy("plateau", 2), Plateau2)


def test_defaults_are_torchs_and_the_schema_has_examples() -> None:
    torch_defaults = {
        k: p.default
        for k, p in __import__("inspect").signature(ReduceLROnPlateau.__init__).parameters.items()
        if k not in ("self", "optimizer")
    }
    defaults = P2.defaults()
    for name, value in torch_defaults.items():
        assert defaults[name] == value, name
    assert defaults["window"] == 1 and defaults["ema"] == 0.0 and defaults["best_of"] is None
    assert defaults["on_plateau"] == {"action": "multiply"} and defaults["stop_after"] is None
    assert defaults["lr_dtype"] == "float64"
    schema = P2.params_schema()
    assert json.loads(json.dumps(schema, allow_nan=False)) == schema
    assert len(schema["examples"]) >= 2
    for example in schema["examples"]:
        P2.resolve(example, (0.1, 0.01))
    assert set(P2.actions) == {"hold", "reduce", "cooldown", "decay", "stop"}
    assert P2.open_loop is False


# ------------------------------------------------------------------- hypothesis properties

metric_values = st.one_of(
    st.floats(min_value=-10.0, max_value=10.0),
    st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 1.0, 0.5, 1e38, -1e300, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def setups(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[float, ...], list[tuple[int, float]]]:
    n = draw(st.integers(1, 3))
    base_lrs = tuple(draw(st.sampled_from([0.1, 1e-3, 0.5, 1.0, 1e-5, 3e-4])) for _ in range(n))
    params: dict[str, Any] = {
        "mode": draw(st.sampled_from(["min", "max"])),
        "factor": draw(st.sampled_from([0.5, 0.1, 0.9, 1 / 3])),
        "patience": draw(st.integers(0, 3)),
        "cooldown": draw(st.integers(0, 2)),
        "threshold": draw(st.sampled_from([0.0, 1e-4, 0.1])),
        "threshold_mode": draw(st.sampled_from(["rel", "abs"])),
        "eps": draw(st.sampled_from([0.0, 1e-8, 1e-3])),
        "min_lr": draw(st.sampled_from([0.0, 1e-4, 1e-3])),
        "lr_dtype": draw(st.sampled_from(["float64", "float32"])),
        "stop_after": draw(st.sampled_from([None, 0, 1, 3])),
    }
    smoothing = draw(st.sampled_from(["none", "window", "ema"]))
    if smoothing == "window":
        params["window"] = draw(st.integers(2, 5))
    elif smoothing == "ema":
        params["ema"] = draw(st.sampled_from([0.3, 0.5, 0.9]))
    params["best_of"] = draw(st.sampled_from([None, 1, 2, 4]))
    if draw(st.booleans()):
        floor = draw(st.sampled_from([0.0, 1e-6, [lr / 10 for lr in base_lrs]]))
        params["on_plateau"] = {
            "action": "decay",
            "shape": draw(st.sampled_from(["linear", "cosine"])),
            "steps": draw(st.sampled_from([1, 7, 50, 1000])),
            "floor": floor,
        }
    gaps = draw(st.lists(st.integers(1, 40), min_size=1, max_size=40))
    values = draw(st.lists(metric_values, min_size=len(gaps), max_size=len(gaps)))
    steps = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    return params, base_lrs, list(zip(steps, values, strict=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setups())
def test_stepper_and_step_agree_one_observation_at_a_time(
    setup: tuple[dict[str, Any], tuple[float, ...], list[tuple[int, float]]],
) -> None:
    params, base_lrs, stream = setup
    resolved = P2.resolve(params, base_lrs)
    state = P2.init(resolved, base_lrs)
    stepper = P2.stepper(resolved, state, "val_loss")
    previous = state.lrs
    stopped = False
    for step, value in stream:
        outcome, state = P2.step(resolved, state, Observation(step, value, "val_loss"))
        assert stepper.advance(step, value) == outcome.action
        assert stepper.lrs == outcome.lrs == state.lrs
        assert stepper.reduced == outcome.reduced
        assert stepper.reason() == outcome.reason
        assert stepper.state() == state
        doc = json.loads(canonical_json(state.model_dump()))
        assert stepper.state_doc() == doc
        assert P2.load_state(doc) == state
        assert P2.lrs_at(resolved, state, step) == outcome.lrs
        # properties of every decision
        assert outcome.action in P2.actions
        assert outcome.reason and "\n" not in outcome.reason
        assert all(type(x) is float for x in outcome.lrs)
        assert all(new <= old for new, old in zip(outcome.lrs, previous, strict=True))
        if resolved.lr_dtype == "float32":
            assert all(to_f32(x) == x for x in outcome.lrs)
        if stopped:
            assert outcome.action == "stop" and outcome.lrs == previous
        stopped = outcome.action == "stop"
        previous = outcome.lrs
    # the replay loop runs the same stepper
    replayed = [s.action for s in replay(P2, resolved, P2.init(resolved, base_lrs), stream)]
    assert replayed[-1] == stepper.action


def test_a_state_reads_back_from_json_with_non_finite_numbers() -> None:
    state = decide({"mode": "max", "best_of": 2}, (0.1,), [NAN])[-1][1]
    assert state.best is None
    state = decide({}, (0.1,), [NAN])[-1][1]
    doc = json.loads(canonical_json(state.model_dump()))
    assert doc["best"] == "Infinity"
    assert P2.load_state(doc) == state and isinstance(P2.load_state(doc), Plateau2State)


# --------------------------------------------------------------------- the golden file

GOLDEN = GOLDEN_DIR / "plateau@2.jsonl"


def golden_lines() -> list[dict[str, Any]]:
    with GOLDEN.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_the_golden_file_covers_every_feature() -> None:
    lines = golden_lines()
    assert len(lines) >= 30
    params = [line["params"] for line in lines]
    assert sum(p["window"] > 1 for p in params) >= 3
    assert sum(p["ema"] > 0 for p in params) >= 3
    assert sum(p["best_of"] is not None for p in params) >= 3
    assert sum(p["stop_after"] is not None for p in params) >= 3
    assert sum(p["lr_dtype"] == "float32" for p in params) >= 3
    shapes = {p["on_plateau"].get("shape") for p in params}
    assert shapes == {None, "linear", "cosine"}
    values = [parse_float(v) for line in lines for _, v in line["observations"]]
    assert any(math.isnan(v) for v in values) and INF in values and -INF in values
    assert {d["action"] for line in lines for d in line["decisions"]} == set(P2.actions)
    reasons = [d["reason"] for line in lines for d in line["decisions"]]
    assert any(r.startswith("diverged: val_loss is NaN") for r in reasons)
    assert any(re.search(r"decay to step \d+ restarts from", r) for r in reasons)


@pytest.mark.parametrize("n", range(len(golden_lines())))
def test_the_golden_lrs_at_replay_identically(n: int) -> None:
    """lrs_at between and at the evaluations (inside the decays too), from the state of the
    last decision at or before the step, as frozen in the golden file."""
    line = golden_lines()[n]
    base_lrs = tuple(parse_float(x) for x in line["base_lrs"])
    params = P2.resolve(line["params"], base_lrs)
    states = [
        (step, P2.load_state(d["state"]))
        for (step, _), d in zip(line["observations"], line["decisions"], strict=True)
    ]
    assert line["lrs_at"]
    initial = P2.init(params, base_lrs)
    for probe, want in line["lrs_at"]:
        in_force = initial
        for step, state in states:
            if step <= probe:
                in_force = state
        got = [repr(x) for x in P2.lrs_at(params, in_force, probe)]
        assert got == [repr(parse_float(x)) for x in want], f"line {n}, step {probe}"


# ----------------------------------------------------------------------- the service

DECAY = {"action": "decay", "shape": "linear", "steps": 100, "floor": [1e-3, 0.0]}
RUN: dict[str, Any] = {
    "policy": {
        "name": "plateau",
        "version": 2,
        "params": {"patience": 1, "window": 2, "on_plateau": DECAY, "stop_after": 1},
    },
    "base_lrs": [0.1, 0.01],
    "metric": "val_loss",
    "labels": {},
}
STREAM: list[tuple[int, Any]] = [
    (10, 1.0),
    (20, 1.0),
    (30, 1.0),
    (40, 0.9),
    (50, "NaN"),
    (70, 1.0),
    (130, 1.0),
    (150, 1.0),
    (160, 1.0),
]


def test_a_plateau2_run_through_the_api(api: TestClient) -> None:
    r = api.put("/v1/runs/p2", json=RUN)
    assert r.status_code == 201, r.text
    run = strict_json(r.text)
    assert run["policy"]["params"]["on_plateau"] == DECAY
    assert run["policy"]["params"]["lr_dtype"] == "float64"  # defaults filled in
    decided = []
    for step, value in STREAM:
        r = api.post("/v1/runs/p2/observations", json={"step": step, "value": value})
        assert r.status_code == 200, r.text
        decided.append(strict_json(r.text))
    assert [d["action"] for d in decided] == [
        "hold",
        "hold",
        "decay",
        "decay",
        "reduce",
        "decay",
        "decay",
        "stop",
        "stop",
    ]
    assert decided[4]["reason"].startswith("diverged: val_loss is NaN")
    assert decided[4]["value"] == "NaN"
    # the decay lands on its floor at 130 (1 evaluation at the floor without improvement), and
    # 150 is the second: more than stop_after 1
    assert decided[-1]["state"]["stopped_at"] == 150
    # the same decisions as the policy offline
    params = P2.resolve(RUN["policy"]["params"], (0.1, 0.01))
    state = P2.init(params, (0.1, 0.01))
    states = {}
    for (step, value), d in zip(STREAM, decided, strict=True):
        v = float(value) if not isinstance(value, str) else NAN
        outcome, state = P2.step(params, state, Observation(step, v, "val_loss"))
        assert (d["action"], d["lrs"], d["reason"]) == (
            outcome.action,
            list(outcome.lrs),
            outcome.reason,
        )
        assert d["state"] == json.loads(canonical_json(state.model_dump()))
        states[step] = state
    # between evaluations, inside the decay: lr?step=k is lrs_at from the state in force
    for k in (30, 31, 45, 49, 50, 60, 69, 70, 100, 129, 130, 131, 155, 10**6):
        r = api.get(f"/v1/runs/p2/lr?step={k}")
        assert r.status_code == 200, r.text
        in_force = states[max(s for s in states if s <= k)]
        assert r.json()["lrs"] == list(P2.lrs_at(params, in_force, k)), k
    at45 = api.get("/v1/runs/p2/lr?step=45").json()["lrs"]
    assert at45 == pytest.approx([0.001 + 0.099 * 0.85, 0.01 * 0.85], rel=1e-14)
    # the divergence at 50 cut the decay's lrs by factor 0.1: it still ends at 130
    assert api.get("/v1/runs/p2/lr?step=130").json()["lrs"] == [0.001, 0.0]
    lrs_page = api.get("/v1/runs/p2/lrs", params={"from": 60, "count": 11}).json()
    assert lrs_page["lrs"] == [list(P2.lrs_at(params, states[50], k)) for k in range(60, 70)] + [
        list(states[70].lrs)
    ]
    assert lrs_page["open_loop"] is False
    stops = api.get("/v1/runs/p2/decisions", params={"action": "stop"}).json()["items"]
    assert [d["step"] for d in stops] == [150, 160]
    decays = api.get("/v1/runs/p2/decisions", params={"action": "decay"}).json()["items"]
    assert [d["step"] for d in decays] == [30, 40, 70, 130]

    # POST /v1/simulate: the same stream through plateau@2, stored nowhere
    body = {
        "policy": RUN["policy"],
        "base_lrs": RUN["base_lrs"],
        "metric": "val_loss",
        "values": [v for _, v in STREAM],
        "steps": [s for s, _ in STREAM],
    }
    r = api.post("/v1/simulate", json=body)
    assert r.status_code == 200, r.text
    sim = strict_json(r.text)
    assert sim["policy"] == "plateau@2" and sim["count"] == len(STREAM)
    keys = ("step", "action", "lrs", "previous_lrs", "reason")
    assert [{k: i[k] for k in keys} for i in sim["items"]] == [
        {k: d[k] for k in keys} for d in decided
    ]
    # and the recorded run under other params: without the window, without stop
    r = api.post(
        "/v1/simulate",
        json={
            "run_id": "p2",
            "policy": {
                "name": "plateau",
                "version": 2,
                "params": {"window": 1, "stop_after": None},
            },
        },
    )
    assert r.status_code == 200, r.text
    assert strict_json(r.text)["items"][-1]["action"] == "hold"


def test_the_service_lists_plateau2_and_refuses_its_impossible_params(api: TestClient) -> None:
    items = api.get("/v1/policies").json()["items"]
    (p2,) = [p for p in items if (p["name"], p["version"]) == ("plateau", 2)]
    assert {"decay", "stop"} <= set(p2["actions"]) and p2["params_schema"]["examples"]
    assert p2["defaults"] == P2.defaults()
    spec = {**RUN, "policy": {**RUN["policy"], "params": {"window": 3, "ema": 0.9}}}
    r = api.put("/v1/runs/bad", json=spec)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "policy", "params", "ema"] and "not both" in err["msg"]
    floor = {**DECAY, "floor": 0.5}
    spec = {**RUN, "policy": {**RUN["policy"], "params": {"on_plateau": floor}}}
    r = api.put("/v1/runs/bad", json=spec)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "policy", "params", "on_plateau", "floor"]
