"""one_cycle@2 and cyclic@2 against torch's OneCycleLR and CyclicLR with ``cycle_momentum``, and
their weight decay against Megatron-LM's ramp (OptimizerParamScheduler.get_wd).

Seeded random params (the generators of ``test_schedules_torch``, plus random base and max
momentum, one value or one per group): at every step k from 0 (right after the scheduler is
built) to 300, the lrs and the momentum (SGD's ``momentum``, or Adam's ``betas[0]``: both
optimizers, alternately) must equal torch's ``param_groups`` after k ``step()`` calls within
1e-10 relative, as the lrs of @1 do. The count of values compared, how many are the same float
and the largest relative difference per family are printed at the end (``pytest -s``).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from lrpilot.policies import get_policy
from tests.helpers import started
from tests.policies.test_schedules_torch import base_lrs, cyclic, drawn, lr_or_lrs, one_cycle

STEPS = 300
SETS = 24  # random param sets a family
REL = 1e-10

pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`"
)

# (family, what) -> [values compared, the same float, largest relative difference]
SEEN: dict[tuple[str, str], list[float]] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if SEEN:
        print("\n\none_cycle@2 / cyclic@2 against torch, and the weight decay against Megatron")
        print(f"{'family':<12}{'values':<14}{'compared':>9}{'same float':>11}{'largest rel':>13}")
        for (family, what), (n, same, worst) in sorted(SEEN.items()):
            print(f"{family:<12}{what:<14}{int(n):>9}{int(same):>11}{worst:>13.3e}")


def compare(key: tuple[str, str], ours: list[tuple[float, ...]], theirs: list[list[float]]) -> None:
    seen = SEEN.setdefault(key, [0, 0, 0.0])
    for k, (a_row, b_row) in enumerate(zip(ours, theirs, strict=True)):
        for g, (a, b) in enumerate(zip(a_row, b_row, strict=True)):
            assert type(a) is float
            diff = abs(a - b)
            assert diff <= REL * abs(b), f"{key} step {k} group {g}: ours {a!r}, reference {b!r}"
            seen[0] += 1
            seen[1] += a == b
            if b:
                seen[2] = max(seen[2], diff / abs(b))


def momentum_params(rng: random.Random, n: int) -> dict[str, Any]:
    low = lr_or_lrs(rng, n, 0.5, 0.9)
    high = [x + rng.uniform(0.0, 0.09) for x in low] if isinstance(low, list) else low + 0.05
    return {"base_momentum": low, "max_momentum": high}


def torch_run(
    cls: type[Any], base: tuple[float, ...], params: dict[str, Any], steps: int, adam: bool
) -> tuple[list[list[float]], list[list[float]]]:
    """torch's lrs and momentum (betas[0] with Adam) right after construction and after each
    of ``steps`` step() calls."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    if adam:
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=base[0])
    else:
        opt = torch.optim.SGD(groups, lr=base[0], momentum=0.9)
    key = "betas" if adam else "momentum"

    def now() -> tuple[list[float], list[float]]:
        lrs = [float(g["lr"]) for g in opt.param_groups]
        m = [float(g[key][0] if adam else g[key]) for g in opt.param_groups]
        return lrs, m

    lrs, momentum = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = cls(opt, cycle_momentum=True, **params)
        for k in range(steps + 1):
            if k:
                sched.step()
            a, b = now()
            lrs.append(a)
            momentum.append(b)
    return lrs, momentum


FAMILIES = {
    "one_cycle": (one_cycle, lr_scheduler.OneCycleLR),
    "cyclic": (cyclic, lr_scheduler.CyclicLR),
}


@pytest.mark.parametrize("seed", range(SETS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lrs_and_momentum_match_torch(family: str, seed: int) -> None:
    make, cls = FAMILIES[family]
    rng, base, params = drawn(f"{family}@2-{seed}", make)
    params |= momentum_params(rng, len(base))
    policy, resolved, state = started(family, 2, params, base)
    steps = STEPS if family == "cyclic" else min(STEPS, params["total_steps"] - 1)
    lrs, momentum = torch_run(cls, base, params, steps, adam=seed % 2 == 1)
    compare((family, "lrs"), [policy.lrs_at(resolved, state, k) for k in range(steps + 1)], lrs)
    ours = [policy.extras_at(resolved, state, k)["momentum"] for k in range(steps + 1)]
    compare((family, "momentum"), ours, momentum)
    assert state.model_dump()["momentum"] == ours[0]
    # @2's lrs are @1's, to the bit
    one = get_policy(family, 1)
    r1 = one.resolve(make(random.Random(f"{family}@2-{seed}-lrs"), len(base)), base)
    r2 = policy.resolve(r1.model_dump(), base)
    s1, s2 = one.init(r1, base), policy.init(r2, base)
    assert all(one.lrs_at(r1, s1, k) == policy.lrs_at(r2, s2, k) for k in range(0, 400, 7))


def megatron_wd(step: int, start: float, end: float, incr_steps: int, style: str) -> float:
    """Megatron-LM's OptimizerParamScheduler.get_wd at num_steps = step, as it is written."""
    if step > incr_steps:
        return end
    if style == "constant":
        assert start == end
        return end
    incr_ratio = float(step) / float(incr_steps)
    delta_wd = end - start
    if style == "linear":
        coeff = incr_ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * (1 - incr_ratio)) + 1.0)
    else:
        raise ValueError(f"{style} weight decay increment style is not supported")
    return start + coeff * delta_wd


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_weight_decay_is_megatrons_ramp(family: str, style: str) -> None:
    # cosine's coefficient comes from lrpilot's deterministic kernels (sin(pi r / 2) ** 2),
    # Megatron's from libm's cos: a few ulps apart, not the same float everywhere
    rng = random.Random(f"wd-{family}-{style}")
    for _ in range(8):
        base = base_lrs(rng)
        n = len(base)
        start = [rng.choice((0.0, rng.uniform(0.0, 0.1))) for _ in range(n)]
        end = list(start) if style == "constant" else [rng.uniform(0.0, 0.2) for _ in range(n)]
        incr = rng.choice((1, 2, rng.randint(1, 500)))
        params = FAMILIES[family][0](rng, n) | {
            "start_wd": start,
            "end_wd": end,
            "wd_incr_style": style,
            "wd_incr_steps": incr,
        }
        policy, resolved, state = started(family, 2, params, base)
        steps = range(0, incr + 30)
        ours = [policy.extras_at(resolved, state, k)["weight_decay"] for k in steps]
        theirs = [
            [megatron_wd(k, s, e, incr, style) for s, e in zip(start, end, strict=True)]
            for k in steps
        ]
        compare((family, f"wd {style}"), ours, theirs)
        if style != "cosine":
            assert [list(x) for x in ours] == theirs  # the same float


def test_one_cycles_weight_decay_ramps_over_total_steps_by_default() -> None:
    policy = get_policy("one_cycle", 2)
    resolved = policy.resolve(
        {
            "max_lr": 0.1,
            "total_steps": 100,
            "start_wd": 0.0,
            "end_wd": 0.1,
            "wd_incr_style": "linear",
        },
        (0.1,),
    )
    state = policy.init(resolved, (0.1,))
    wd = [policy.extras_at(resolved, state, k)["weight_decay"][0] for k in (0, 50, 100, 10**9)]
    assert wd == [megatron_wd(k, 0.0, 0.1, 100, "linear") for k in (0, 50, 100, 10**9)]
