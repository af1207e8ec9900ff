"""plateau@1 flavor "torch" against the real torch.optim.lr_scheduler.ReduceLROnPlateau.

Every evaluation must give the same float for every param group (``==`` and the same bits),
the same internal state (best, num_bad_epochs, cooldown_counter) and an action that says what
happened: "reduce" iff some lr changed, else "cooldown" iff torch was in cooldown, else "hold".
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lrpilot.policies import Observation, get_policy
from tests.streams import Stream, make_stream

N_STREAMS = 400
NAN, INF = math.nan, math.inf


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def torch_scheduler(
    base_lrs: tuple[float, ...], kwargs: dict[str, Any]
) -> tuple[torch.optim.Optimizer, ReduceLROnPlateau]:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base_lrs]
    opt = torch.optim.SGD(groups, lr=base_lrs[0])
    return opt, ReduceLROnPlateau(opt, **kwargs)


def replay_against_torch(stream: Stream) -> list[tuple[float, ...]]:
    """Step policy and torch side by side; assert agreement after every evaluation."""
    policy = get_policy("plateau", 1)
    params = policy.resolve(stream.params, stream.base_lrs)
    state = policy.init(params, stream.base_lrs)
    opt, sched = torch_scheduler(stream.base_lrs, stream.reference_kwargs())
    assert list(state.lrs) == [g["lr"] for g in opt.param_groups]
    seen: list[tuple[float, ...]] = []
    for i, (step, value) in enumerate(zip(stream.steps, stream.values, strict=True)):
        before = [g["lr"] for g in opt.param_groups]
        was_cooling = sched.cooldown_counter > 0
        sched.step(value)
        expected = [g["lr"] for g in opt.param_groups]
        outcome, state = policy.step(params, state, Observation(step, value, "val_loss"))
        where = f"{stream.describe()}\n  mismatch at index {i} (value {value!r})"
        assert list(outcome.lrs) == expected, f"{where}: lrs {outcome.lrs!r} != torch {expected!r}"
        assert [bits(x) for x in outcome.lrs] == [bits(float(x)) for x in expected], where
        assert all(type(x) is float for x in outcome.lrs), where
        assert state.lrs == outcome.lrs, where
        want = "reduce" if expected != before else ("cooldown" if was_cooling else "hold")
        assert outcome.action == want, f"{where}: action {outcome.action!r} != {want!r}"
        assert repr(state.best) == repr(float(sched.best)), (
            f"{where}: best {state.best!r} != torch {sched.best!r}"
        )
        assert state.bad_evaluations == sched.num_bad_epochs, (
            f"{where}: bad {state.bad_evaluations} != torch {sched.num_bad_epochs}"
        )
        assert state.cooldown_counter == sched.cooldown_counter, (
            f"{where}: cooldown {state.cooldown_counter} != torch {sched.cooldown_counter}"
        )
        assert outcome.reason, where
        seen.append(outcome.lrs)
    return seen


@pytest.mark.parametrize("seed", range(N_STREAMS))
def test_random_stream_matches_torch(seed: int) -> None:
    replay_against_torch(make_stream(seed, "torch"))


def run(params: dict[str, Any], base_lrs: tuple[float, ...], values: list[float]) -> Any:
    stream = Stream(
        seed=-1,
        flavor="torch",
        params=params,
        base_lrs=base_lrs,
        values=tuple(values),
        steps=tuple(range(len(values))),
    )
    return replay_against_torch(stream)


# Hand-written cases: pin the NaN / infinity behaviour with literal expectations
# (and still check them against torch).


def test_nan_never_improves_and_counts_as_bad() -> None:
    lrs = run({"patience": 1, "factor": 0.5}, (0.1,), [1.0, NAN, NAN, 0.5, NAN, NAN])
    assert lrs == [(0.1,), (0.1,), (0.05,), (0.05,), (0.05,), (0.025,)]


def test_nan_first_keeps_best_infinite_then_a_number_improves() -> None:
    lrs = run({"patience": 2, "factor": 0.5}, (0.1,), [NAN, NAN, 3.0, NAN, NAN, NAN])
    assert lrs == [(0.1,), (0.1,), (0.1,), (0.1,), (0.1,), (0.05,)]


def test_nan_in_max_mode() -> None:
    lrs = run({"mode": "max", "patience": 0, "factor": 0.5}, (1.0,), [NAN, 2.0, NAN])
    assert lrs == [(0.5,), (0.5,), (0.25,)]


def test_plus_inf_does_not_improve_on_initial_best_in_min_mode() -> None:
    # inf < inf * (1 - threshold) is False: +inf counts as a bad evaluation.
    lrs = run({"patience": 0, "factor": 0.5}, (0.1,), [INF, INF])
    assert lrs == [(0.05,), (0.025,)]


def test_minus_inf_becomes_best_and_nothing_improves_after() -> None:
    policy = get_policy("plateau", 1)
    lrs = run({"patience": 1, "factor": 0.5}, (0.1,), [-INF, -INF, -1e308, -INF])
    assert lrs == [(0.1,), (0.1,), (0.05,), (0.05,)]
    params = policy.resolve({"patience": 1}, (0.1,))
    state = policy.init(params, (0.1,))
    _, state = policy.step(params, state, Observation(7, -INF, "val_loss"))
    assert state.best == -INF and state.best_step == 7


def test_plus_inf_is_best_in_max_mode_and_sticks() -> None:
    lrs = run({"mode": "max", "patience": 0, "factor": 0.1}, (1.0,), [INF, INF, 1e308])
    assert lrs == [(1.0,), (0.1,), (0.1 * 0.1,)]


def test_huge_best_times_rel_threshold_overflows_to_inf_in_max_mode() -> None:
    # best * (1 + threshold) overflows to inf: no finite value can improve any more.
    lrs = run(
        {"mode": "max", "patience": 0, "factor": 0.5, "threshold": 0.1},
        (1.0,),
        [1.7e308, 1.79e308, INF],
    )
    assert lrs == [(1.0,), (0.5,), (0.25,)]


def test_negative_best_rel_threshold_quirk_in_min_mode() -> None:
    # torch's rel threshold on a negative best: best * (1 - t) is *above* best, so a worse
    # value (-0.95 > -1.0) still counts as an improvement.
    lrs = run({"patience": 0, "threshold": 0.1, "factor": 0.5}, (0.1,), [-1.0, -0.95, -0.5])
    assert lrs == [(0.1,), (0.1,), (0.05,)]


def test_exact_rel_boundary_is_not_an_improvement() -> None:
    best, t = 1.0, 0.1
    edge = best * (1.0 - t)
    lrs = run({"patience": 0, "threshold": t, "factor": 0.5}, (0.1,), [best, edge])
    assert lrs == [(0.1,), (0.05,)]
    lrs = run(
        {"patience": 0, "threshold": t, "factor": 0.5},
        (0.1,),
        [best, math.nextafter(edge, -INF)],
    )
    assert lrs == [(0.1,), (0.1,)]


def test_eps_blocks_tiny_reductions_per_group() -> None:
    lrs = run(
        {"patience": 0, "factor": 0.5, "eps": 1e-3, "min_lr": [0.0, 0.0]},
        (0.1, 1e-3),
        [1.0, 1.0, 1.0],
    )
    assert lrs == [(0.1, 1e-3), (0.05, 1e-3), (0.025, 1e-3)]


def test_min_lr_per_group_floors() -> None:
    lrs = run(
        {"patience": 0, "factor": 0.1, "min_lr": [0.05, 1e-6], "eps": 0.0},
        (0.1, 1e-4),
        [1.0, 1.0, 1.0, 1.0],
    )
    assert lrs == [(0.1, 1e-4), (0.05, 1e-4 * 0.1), (0.05, 1e-4 * 0.1 * 0.1), (0.05, 1e-6)]


def test_lr_can_reach_zero_with_eps_zero() -> None:
    vals = [1.0] * 400
    lrs = run({"patience": 0, "factor": 0.1, "eps": 0.0}, (0.1,), vals)
    assert lrs[-1] == (0.0,)


def test_lr_sticks_at_smallest_subnormal_when_factor_rounds_back() -> None:
    lrs = run({"patience": 0, "factor": 0.7, "eps": 0.0}, (0.1,), [1.0] * 2100)
    assert lrs[-1] == (5e-324,)
