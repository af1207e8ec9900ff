"""Write tests/golden/plateau@2.jsonl: frozen decision logs for the released policy plateau@2.

One canonical-JSON line per stream, in the format of tests/golden/README.md:
``{"policy", "params" (resolved), "base_lrs", "metric", "observations": [[step, value], ...],
"decisions": [{"lrs", "action", "reason", "state"}, ...], "lrs_at": [[step, [lrs]], ...]}``;
``lrs_at`` gives the lrs in force at training steps between and at the evaluations (inside the
decays too): the policy's ``lrs_at`` from the state of the last decision at or before the step.

The streams: random ones (tests/streams.py's edge-case values and torch params, with plateau@2's
own params drawn by a seeded generator: window, ema, best_of, decays of both shapes, stop_after,
float32 lrs), and hand-written ones that pin each feature (a spike then a plateau with and
without best_of, NaN / +inf / -inf as divergence, in cooldown, during a decay and at the floor,
decays reaching their floor, stop and what follows it).

Before writing, every stream in the configuration where plateau@2 is torch's rule (window 1, no
ema, best_of null, on_plateau multiply, stop_after null, a finite metric) is replayed through
torch's ReduceLROnPlateau (tensor lrs for lr_dtype float32, float lrs for float64): a file is
only written if the policy agrees with it lr by lr.

A released version's file never changes: this script refuses to overwrite an existing file
unless --force (only for a version that has not been released).

    python scripts/make_golden_plateau2.py [--out tests/golden/plateau@2.jsonl] [--force]
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from pathlib import Path
from typing import Any

import golden_lines

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "plateau@2.jsonl"
NAN, INF = math.nan, math.inf

Stream = tuple[dict[str, Any], tuple[float, ...], list[float], list[int]]

RANDOM_SEEDS = range(2000, 2020)  # plateau@2's own params drawn at random
TORCH_SEEDS = range(2100, 2108)  # torch's configuration (finite values): checked against torch


def _steps(n: int, every: int = 100) -> list[int]:
    return [every * (i + 1) for i in range(n)]


def _decay(shape: str, steps: int, floor: float | list[float] = 0.0) -> dict[str, Any]:
    return {"action": "decay", "shape": shape, "steps": steps, "floor": floor}


SPIKE = [1.0, 0.9, 0.2, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]

HAND_WRITTEN: list[Stream] = [
    # a lucky spike, then steady progress, then a plateau: best_of 2 recovers ...
    ({"patience": 2, "factor": 0.5, "best_of": 2}, (0.1,), SPIKE, _steps(len(SPIKE))),
    # ... where torch's best-ever reference stalls on the spike
    ({"patience": 2, "factor": 0.5}, (0.1,), SPIKE, _steps(len(SPIKE))),
    # divergence: NaN first, +inf in cooldown, -inf; per-group min_lr
    (
        {"patience": 1, "factor": 0.5, "cooldown": 2, "min_lr": [0.01, 0.0]},
        (0.1, 0.02),
        [NAN, 1.0, INF, 0.9, 0.9, 0.9, -INF, 0.8, 0.8, 0.8, 0.8],
        _steps(11),
    ),
    # divergence at the floor counts toward stop (stop_after 2)
    (
        {"patience": 0, "factor": 0.1, "min_lr": 1e-3, "stop_after": 2},
        (0.1,),
        [1.0, 1.0, 1.0, NAN, 0.5, INF, 0.5, 0.5, 0.5],
        _steps(9),
    ),
    # linear decay, a floor per group, evaluations every 10 steps over a 100-step decay
    (
        {"patience": 1, "on_plateau": _decay("linear", 100, [1e-3, 0.0]), "stop_after": 1},
        (0.1, 0.01),
        [1.0, 1.0, 1.0, 0.9, *[0.95] * 13],
        _steps(17, 10),
    ),
    # cosine decay in float32, NaN during the decay (it restarts lower, same end), past its end
    (
        {
            "patience": 2,
            "on_plateau": _decay("cosine", 1000, 1e-4),
            "lr_dtype": "float32",
            "stop_after": 0,
        },
        (0.1,),
        [2.0, 1.5, 1.5, 1.5, 1.5, 1.4, NAN, 1.3, 1.3, 1.3, 1.2, 1.3, 1.3, 1.3, 1.3],
        _steps(15, 150),
    ),
    # a decay over one step: the floor at the next evaluation
    (
        {"patience": 0, "on_plateau": _decay("linear", 1, 0.0)},
        (0.3,),
        [1.0, 1.0, 1.0, 0.5, 0.5],
        [1, 2, 3, 4, 5],
    ),
    # divergence before the plateau cuts below the decay's floor: that group stays (no raise)
    (
        {"patience": 1, "factor": 0.01, "on_plateau": _decay("cosine", 40, [1e-2, 1e-4])},
        (0.1, 0.1),
        [1.0, NAN, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
        _steps(8, 10),
    ),
    # a floor equal to the base lr: the decay holds from the start; then stop
    (
        {"patience": 0, "on_plateau": _decay("linear", 30, 0.05), "stop_after": 1},
        (0.05,),
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        _steps(6, 10),
    ),
    # window 4 in max mode with an abs threshold
    (
        {"mode": "max", "window": 4, "patience": 1, "threshold_mode": "abs", "threshold": 0.01},
        (0.5,),
        [0.1, 0.5, 0.2, 0.6, 0.3, 0.3, 0.31, 0.3, 0.3, 0.7, 0.1, 0.1, 0.1],
        _steps(13),
    ),
    # ema 0.5, cooldown 1, a rel threshold of 1%
    (
        {"ema": 0.5, "patience": 1, "cooldown": 1, "factor": 0.5, "threshold": 0.01},
        (0.2,),
        [1.0, 0.5, 0.6, 0.7, 0.6, 0.5, 0.4, *[0.45] * 11],
        _steps(18),
    ),
    # float32 lrs, eps keeps the lr off min_lr 0: stop once a reduction moves nothing
    (
        {"patience": 0, "factor": 0.5, "eps": 1e-3, "lr_dtype": "float32", "stop_after": 1},
        (0.01,),
        [1.0] * 12,
        _steps(12),
    ),
    # defaults: a long plateau
    ({}, (0.1,), [0.5] * 40, _steps(40)),
    # best_of 1: each value against the one before
    (
        {"patience": 1, "best_of": 1, "threshold": 0.0},
        (0.1, 1e-3),
        [1.0, 0.9, 0.95, 0.94, 0.96, 0.97, 0.93, 0.92, 0.92, 0.92],
        _steps(10),
    ),
    # window 3 with best_of 3, float32, stop after a reduction to min_lr
    (
        {
            "window": 3,
            "best_of": 3,
            "patience": 1,
            "factor": 0.1,
            "min_lr": 1e-3,
            "lr_dtype": "float32",
            "stop_after": 2,
        },
        (0.1,),
        [1.0, 0.8, 0.9, 0.85, 0.9, 0.9, 0.9, 0.9, INF, 0.9, 0.9, 0.9, 0.9, 0.9],
        _steps(14),
    ),
    # max mode: -inf, +inf and NaN are all divergence; stop never fires once decided stop
    (
        {"mode": "max", "patience": 0, "factor": 0.5, "min_lr": 0.02, "stop_after": 0},
        (0.1,),
        [0.5, -INF, 0.6, INF, 0.6, 0.6, NAN, 0.9, 0.9],
        _steps(9),
    ),
]


def _random_params(rng: random.Random, base_lrs: tuple[float, ...]) -> dict[str, Any]:
    p: dict[str, Any] = {}
    smoothing = rng.choice(("none", "none", "window", "ema"))
    if smoothing == "window":
        p["window"] = rng.choice((2, 3, 5))
    elif smoothing == "ema":
        p["ema"] = rng.choice((0.3, 0.5, 0.9))
    if rng.random() < 0.5:
        p["best_of"] = rng.choice((1, 2, 3, 5, 10))
    if rng.random() < 0.5:
        low = min(base_lrs)
        floor = rng.choice((0.0, low * 0.01, [lr * 0.1 for lr in base_lrs]))
        p["on_plateau"] = _decay(
            rng.choice(("linear", "cosine")), rng.choice((1, 50, 500, 5000)), floor
        )
    if rng.random() < 0.5:
        p["stop_after"] = rng.choice((0, 1, 3))
    if rng.random() < 0.5:
        p["lr_dtype"] = "float32"
    return p


def streams() -> list[Stream]:
    sys.path.insert(0, str(ROOT))
    from tests.streams import make_stream

    out: list[Stream] = []
    for seed in RANDOM_SEEDS:
        s = make_stream(seed, "torch", n=20 + seed * 7 % 41)
        torch_params = {k: v for k, v in s.params.items() if k != "flavor"}
        if isinstance(torch_params.get("min_lr"), int):
            torch_params["min_lr"] = float(torch_params["min_lr"])
        rng = random.Random(f"plateau2-golden-{seed}")
        params = {**torch_params, **_random_params(rng, s.base_lrs)}
        out.append((params, s.base_lrs, list(s.values), list(s.steps)))
    for seed in TORCH_SEEDS:
        s = make_stream(seed, "torch", n=20 + seed * 7 % 41)
        params = {k: v for k, v in s.params.items() if k != "flavor"}
        if seed % 2:
            params["lr_dtype"] = "float32"
        values = [v for v in s.values if math.isfinite(v)]
        out.append((params, s.base_lrs, values, list(s.steps[: len(values)])))
    out.extend(HAND_WRITTEN)
    return out


def _probe_steps(observations: list[list[Any]]) -> list[int]:
    """Training steps to ask lrs_at about: before, at, between and after the evaluations."""
    steps = [s for s, _ in observations]
    probes = {0, steps[-1] + 1, steps[-1] + 10_000}
    for a, b in itertools.pairwise(steps):
        probes |= {a, a + 1, (a + b) // 2, b - 1}
    return sorted(probes)


def decide(
    params: dict[str, Any], base_lrs: tuple[float, ...], values: list[float], steps: list[int]
) -> dict[str, Any]:
    observations = [[s, v] for s, v in zip(steps, values, strict=True)]
    return golden_lines.decide(
        "plateau@2",
        params,
        base_lrs,
        zip(steps, values, strict=True),
        "val_loss",
        lrs_at=_probe_steps(observations),
    )


def torchs_rule(params: dict[str, Any], values: list[float]) -> bool:
    """Is this stream one where plateau@2 must decide exactly as torch does?"""
    return (
        params["window"] == 1
        and params["ema"] == 0.0
        and params["best_of"] is None
        and params["on_plateau"] == {"action": "multiply"}
        and params["stop_after"] is None
        and all(math.isfinite(v) for v in values)
    )


def torch_lrs(line: dict[str, Any]) -> list[list[float]]:
    """The lrs torch's ReduceLROnPlateau gives after every observation (tensor lrs for
    lr_dtype float32)."""
    import torch

    p = line["params"]
    kwargs = {
        k: p[k]
        for k in (
            "mode",
            "factor",
            "patience",
            "threshold",
            "threshold_mode",
            "cooldown",
            "min_lr",
            "eps",
        )
    }
    as_tensor = p["lr_dtype"] == "float32"
    lrs = [torch.tensor(lr) if as_tensor else lr for lr in line["base_lrs"]]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    opt = torch.optim.SGD(groups, lr=lrs[0])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    out = []
    for _, v in line["observations"]:
        sched.step(v)
        out.append([float(g["lr"]) for g in opt.param_groups])
    return out


def main(argv: list[str] | None = None) -> int:
    def follows_torch(line: dict[str, Any]) -> bool:
        return torchs_rule(line["params"], [v for _, v in line["observations"]])

    def lines() -> list[dict[str, Any]]:
        return [decide(*stream) for stream in streams()]

    check = golden_lines.lrs_check(torch_lrs)
    return golden_lines.generate(
        argv, __doc__, DEFAULT_OUT, lines, check, checks=follows_torch, against="torch"
    )


if __name__ == "__main__":
    sys.exit(main())
