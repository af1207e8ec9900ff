"""The schedule families against the real torch schedulers (and inverse_time against keras).

For each family, seeded random params (random.Random, fixed seeds) and 2-3 param groups:
``lrs_at(params, initial state, k)`` must equal torch's ``group["lr"]`` after ``k`` calls of
``scheduler.step()`` (k = 0: right after the scheduler is built), for k = 0..300, within 1e-10
relative plus 1e-15 times the largest lr (for lrs at zero). torch computes most schedules
recursively and lrpilot in closed form, so they differ by rounding: the largest relative
difference seen per family is printed at the end (``pytest -s``).
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from tests.helpers import started

STEPS = 300
SETS = 12  # random param sets a family
REL, ABS = 1e-10, 1e-15

pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`"
)

# family -> [param sets, values compared, largest relative difference, where, values at zero,
# largest difference at zero / largest lr]
SEEN: dict[str, list[Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if not SEEN:
        return
    print("\n\nlrs_at against the reference: the largest relative difference per family")
    print(
        f"{'family':<22}{'param sets':>11}{'values':>8}{'largest rel diff':>18}  {'where':<19}"
        f"{'at zero':>8}{'diff/largest lr':>16}"
    )
    for family in sorted(SEEN):
        sets, values, worst, where, zeros, zero_diff = SEEN[family]
        print(
            f"{family:<22}{sets:>11}{values:>8}{worst:>18.3e}  {where:<19}{zeros:>8}"
            f"{zero_diff:>16.3e}"
        )


def record(
    family: str, values: int, worst: float, where: str, zeros: int, zero_diff: float
) -> None:
    entry = SEEN.setdefault(family, [0, 0, 0.0, "-", 0, 0.0])
    entry[0] += 1
    entry[1] += values
    if worst > entry[2]:
        entry[2], entry[3] = worst, where
    entry[4] += zeros
    entry[5] = max(entry[5], zero_diff)


def base_lrs(rng: random.Random) -> tuple[float, ...]:
    return tuple(10 ** rng.uniform(-4, 0) for _ in range(rng.choice((2, 3))))


def drawn(
    seed: str, make: Callable[[random.Random, int], dict[str, Any]]
) -> tuple[random.Random, tuple[float, ...], dict[str, Any]]:
    """A random param set of ``make``'s family over random base lrs, drawn from ``seed``; and
    the generator, for whatever else the test draws after them."""
    rng = random.Random(seed)
    base = base_lrs(rng)
    return rng, base, make(rng, len(base))


def lr_or_lrs(rng: random.Random, n: int, low: float, high: float) -> float | list[float]:
    if rng.random() < 0.5:
        return rng.uniform(low, high)
    return [rng.uniform(low, high) for _ in range(n)]


# family -> (random params for a seed and the number of groups, torch scheduler class)
def constant(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "factor": rng.choice((1.0 / 3, 1.0, rng.uniform(0.01, 1.0))),
        "total_iters": rng.choice((0, 5, rng.randint(0, 350))),
    }


def step(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "step_size": rng.choice((1, rng.randint(1, 100))),
        "gamma": rng.choice((0.1, 0.5, 1.02, rng.uniform(0.05, 1.0))),
    }


def multistep(rng: random.Random, n: int) -> dict[str, Any]:
    marks = [rng.randint(0, 320) for _ in range(rng.randint(0, 8))]
    if marks and rng.random() < 0.5:
        marks += rng.sample(marks, k=min(len(marks), 2))  # repeated milestones
    rng.shuffle(marks)  # and in any order
    return {"milestones": marks, "gamma": rng.choice((0.1, rng.uniform(0.05, 1.0)))}


def exponential(rng: random.Random, n: int) -> dict[str, Any]:
    return {"gamma": rng.choice((0.5, 0.99, 1.01, rng.uniform(0.9, 1.0)))}


def linear(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "start_factor": rng.choice((1.0 / 3, 1.0, rng.uniform(0.001, 1.0))),
        "end_factor": rng.choice((0.0, 1.0, rng.uniform(0.0, 1.0))),
        "total_iters": rng.choice((0, 1, rng.randint(0, 350))),
    }


def cosine(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "T_max": rng.choice((1, 2, rng.randint(1, 400))),
        "eta_min": rng.choice((0.0, 10 ** rng.uniform(-6, -2), 10 ** rng.uniform(-3, 0))),
    }


def polynomial(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "total_iters": rng.choice((0, 1, rng.randint(1, 400))),
        "power": rng.choice((0.0, 1.0, 2.0, 0.5, rng.uniform(0.0, 5.0))),
    }


def cosine_restarts(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "T_0": rng.choice((1, rng.randint(1, 100))),
        "T_mult": rng.choice((1, 2, 3)),
        "eta_min": rng.choice((0.0, 10 ** rng.uniform(-6, -2))),
    }


def cyclic(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "base_lr": lr_or_lrs(rng, n, 1e-5, 1e-2),
        "max_lr": lr_or_lrs(rng, n, 1e-3, 1.0),
        "step_size_up": rng.choice((1, rng.randint(1, 100))),
        "step_size_down": rng.choice((None, 0, rng.randint(1, 100))),
        "mode": rng.choice(("triangular", "triangular2", "exp_range")),
        "gamma": rng.choice((1.0, rng.uniform(0.95, 1.0))),
    }


def one_cycle(rng: random.Random, n: int) -> dict[str, Any]:
    while True:
        params = {
            "max_lr": lr_or_lrs(rng, n, 1e-3, 1.0),
            "total_steps": rng.choice((1, 2, rng.randint(1, 400))),
            "pct_start": rng.choice((0.0, 0.3, 0.5, 1.0, rng.uniform(0.0, 1.0))),
            "anneal_strategy": rng.choice(("cos", "linear")),
            "div_factor": rng.choice((25.0, rng.uniform(1.0, 100.0))),
            "final_div_factor": rng.choice((1e4, 10 ** rng.uniform(0, 8))),
            "three_phase": rng.random() < 0.4,
        }
        if float(params["pct_start"] * params["total_steps"]) - 1 != 0.0:
            return params  # else torch divides by zero at step 0 (and lrpilot refuses)


TORCH: dict[str, tuple[Callable[[random.Random, int], dict[str, Any]], type[Any]]] = {
    "constant": (constant, lr_scheduler.ConstantLR),
    "step": (step, lr_scheduler.StepLR),
    "multistep": (multistep, lr_scheduler.MultiStepLR),
    "exponential": (exponential, lr_scheduler.ExponentialLR),
    "linear": (linear, lr_scheduler.LinearLR),
    "cosine": (cosine, lr_scheduler.CosineAnnealingLR),
    "polynomial": (polynomial, lr_scheduler.PolynomialLR),
    "cosine_restarts": (cosine_restarts, lr_scheduler.CosineAnnealingWarmRestarts),
    "cyclic": (cyclic, lr_scheduler.CyclicLR),
    "one_cycle": (one_cycle, lr_scheduler.OneCycleLR),
}


def torch_lrs(
    cls: type[Any], base: tuple[float, ...], params: dict[str, Any], steps: int
) -> list[list[float]]:
    """torch's group lrs right after construction and after each of ``steps`` step() calls."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(groups, lr=base[0], momentum=0.9)
    kwargs = dict(params)
    if cls in (lr_scheduler.CyclicLR, lr_scheduler.OneCycleLR):
        kwargs["cycle_momentum"] = False  # lrpilot serves lrs only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = cls(opt, **kwargs)
        out = [[float(g["lr"]) for g in opt.param_groups]]
        for _ in range(steps):
            sched.step()
            out.append([float(g["lr"]) for g in opt.param_groups])
    return out


def compare(
    family: str, seed: int, ours: list[tuple[float, ...]], theirs: list[list[float]]
) -> None:
    """Every value within REL relative plus ABS times the largest lr. A pair of values where
    one is zero and the other is not, or their signs differ, is "at zero" (e.g. torch's
    -5.8e-19 where lrpilot's lr is 0.0 at the end of a linear decay to 0) and counts in its own
    column, not in the relative difference."""
    largest = max((abs(x) for row in theirs for x in row), default=0.0)
    floor = ABS * largest
    worst, where, zeros, zero_diff = 0.0, "-", 0, 0.0
    for k, (a_row, b_row) in enumerate(zip(ours, theirs, strict=True)):
        assert all(type(x) is float for x in a_row), f"{family} seed {seed} step {k}: not floats"
        for g, (a, b) in enumerate(zip(a_row, b_row, strict=True)):
            diff = abs(a - b)
            assert diff <= REL * abs(b) + floor, (
                f"{family} seed {seed} step {k} group {g}: ours {a!r}, reference {b!r} "
                f"(rel {diff / abs(b) if b else math.inf:.3e})"
            )
            if a == b:
                continue
            if a == 0.0 or b == 0.0 or (a < 0.0) != (b < 0.0):
                zeros += 1
                zero_diff = max(zero_diff, diff / largest if largest else 0.0)
            elif diff / abs(b) > worst:
                worst, where = diff / abs(b), f"seed {seed}, step {k}"
    record(family, sum(len(r) for r in ours), worst, where, zeros, zero_diff)


@pytest.mark.parametrize("seed", range(SETS))
@pytest.mark.parametrize("family", sorted(TORCH))
def test_lrs_at_matches_torch(family: str, seed: int) -> None:
    make, cls = TORCH[family]
    _, base, params = drawn(f"{family}-{seed}", make)
    policy, resolved, state = started(family, 1, params, base)
    steps = STEPS
    if family == "one_cycle":
        steps = min(STEPS, params["total_steps"] - 1)  # torch raises past total_steps
    theirs = torch_lrs(cls, base, params, steps)
    ours = [policy.lrs_at(resolved, state, k) for k in range(steps + 1)]
    assert state.lrs == ours[0]
    compare(family, seed, ours, theirs)


@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
def test_one_cycle_holds_its_last_lrs_where_torch_extrapolates_or_raises(
    anneal_strategy: str,
) -> None:
    """torch answers one step past the cycle's end (total_steps), extrapolating the last phase
    (linearly: below the min lr, here below 0), then raises; lrpilot holds the last lrs."""
    params = {"max_lr": 0.1, "total_steps": 10, "anneal_strategy": anneal_strategy}
    policy, resolved, state = started("one_cycle", 1, params, (0.1,))
    theirs = torch_lrs(lr_scheduler.OneCycleLR, (0.1,), params, 10)
    last = policy.lrs_at(resolved, state, 9)
    assert abs(last[0] - theirs[9][0]) <= REL * theirs[9][0]
    assert theirs[10][0] != theirs[9][0]
    if anneal_strategy == "linear":
        assert theirs[10][0] < 0.0
    for k in (10, 11, 1000, 2**62):
        assert policy.lrs_at(resolved, state, k) == last


# -- inverse_time against keras -----------------------------------------------------------


def keras_inverse_time() -> Callable[[float, dict[str, Any], int], float] | None:
    """keras' InverseTimeDecay fed a float64 initial lr (keras' default floatx is float32;
    lrpilot computes in double), or None when keras cannot be imported."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:  # any import failure: fall back to the formula
        return None
    if keras.backend.backend() != "torch":
        return None

    def lr(initial: float, params: dict[str, Any], step: int) -> float:
        schedule = keras.optimizers.schedules.InverseTimeDecay(
            torch.tensor(initial, dtype=torch.float64),
            params["decay_steps"],
            params["decay_rate"],
            staircase=params.get("staircase", False),
        )
        return float(schedule(step))

    return lr


def formula_inverse_time(initial: float, params: dict[str, Any], step: int) -> float:
    """keras' documented formula: initial / (1 + decay_rate * step / decay_steps), the
    quotient floored with staircase."""
    p = step / params["decay_steps"]
    if params.get("staircase", False):
        p = math.floor(p)
    return initial / (1 + params["decay_rate"] * p)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("seed", range(SETS))
def test_inverse_time_matches_keras(seed: int) -> None:
    reference = keras_inverse_time()
    name = "inverse_time (keras)"
    if reference is None:
        reference, name = formula_inverse_time, "inverse_time (formula)"
    rng = random.Random(f"inverse_time-{seed}")
    base = base_lrs(rng)
    params = {
        "decay_steps": rng.choice((1.0, 10.0, rng.uniform(0.5, 100.0))),
        "decay_rate": rng.choice((0.0, 0.5, rng.uniform(0.0, 5.0))),
        "staircase": rng.random() < 0.5,
    }
    policy, resolved, state = started("inverse_time", 1, params, base)
    ks = [*range(0, STEPS + 1, 7), STEPS]
    ours = [policy.lrs_at(resolved, state, k) for k in ks]
    theirs = [[reference(b, params, k) for b in base] for k in ks]
    compare(name, seed, ours, theirs)
    # and the formula, to the bit: lrpilot does keras' operations in keras' order
    formula = [[formula_inverse_time(b, params, k) for b in base] for k in ks]
    assert [[repr(x) for x in row] for row in ours] == [[repr(x) for x in r] for r in formula]
