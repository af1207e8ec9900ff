"""Schedule families: lrpilot's lrs_at per call against torch's scheduler.step() per call.

    python bench/bench_schedules.py [--steps 100000] [--repeat 5] [--groups 2]
        [--out bench/results/<name>.json]

For every family, the same schedule both ways, steps 0 .. ``--steps`` - 1, ``--groups`` param
groups (base lrs 0.1, 0.01, 0.001, ...), in each of ``--repeat`` passes:

  torch step()   the torch scheduler over an SGD optimizer with one group a base lr, built
                 before the clock starts, then ``sched.step()`` ``--steps`` times: the reference
                 (inverse_time has no torch scheduler: the reference is torch's LambdaLR with
                 keras' 1/t formula as its lambda, what a torch user writes for it;
                 inverse_sqrt, wsd and cosine_with_min_lr: transformers' LambdaLRs,
                 get_inverse_sqrt_schedule, get_wsd_schedule and
                 get_cosine_with_min_lr_schedule_with_warmup)
  lrs_at         ``policy.lrs_at(params, state, k)`` for k = 0 .. ``--steps`` - 1 (what a rank
                 that only reads asks, and what GET lr?step=k answers)

Each row reports the median pass (and the range over passes) in µs per call, and the ratio
torch / lrpilot (>= 1: lrpilot's closed form is at least as fast as torch's step()). Before
timing, once, lrpilot's lrs are compared with torch's at every step: the largest relative
difference per family is in the table (the exit status is 1 if one is above 1e-10).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.optim import lr_scheduler
from transformers.optimization import (
    get_cosine_with_min_lr_schedule_with_warmup,
    get_inverse_sqrt_schedule,
    get_wsd_schedule,
)

import common
from common import console
from lrpilot.policies import get_policy

TOLERANCE = 1e-10


def cases(n: int) -> dict[str, tuple[dict[str, Any], Callable[..., Any]]]:
    """family -> (params, a function building the torch scheduler over an optimizer), each
    schedule sized to ``n`` steps so that it moves all along."""

    def torch_class(cls: type[Any], **kwargs: Any) -> Callable[..., Any]:
        return lambda opt, params: cls(opt, **params, **kwargs)

    def transformers(make: Callable[..., Any]) -> Callable[..., Any]:
        return lambda opt, params: make(opt, **params)

    def inverse_time(opt: torch.optim.Optimizer, params: dict[str, Any]) -> Any:
        steps, rate = params["decay_steps"], params["decay_rate"]
        return lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1.0 + rate * (k / steps)))

    return {
        "constant": ({"factor": 0.5, "total_iters": n // 10}, torch_class(lr_scheduler.ConstantLR)),
        "step": ({"step_size": n // 10, "gamma": 0.5}, torch_class(lr_scheduler.StepLR)),
        "multistep": (
            {"milestones": [n // 4, n // 2, 3 * n // 4], "gamma": 0.1},
            torch_class(lr_scheduler.MultiStepLR),
        ),
        "exponential": ({"gamma": 0.99999}, torch_class(lr_scheduler.ExponentialLR)),
        "inverse_time": ({"decay_steps": 1000.0, "decay_rate": 0.5}, inverse_time),
        "linear": (
            {"start_factor": 0.01, "total_iters": n // 10},
            torch_class(lr_scheduler.LinearLR),
        ),
        "cosine": ({"T_max": n, "eta_min": 1e-6}, torch_class(lr_scheduler.CosineAnnealingLR)),
        "polynomial": (
            {"total_iters": n, "power": 0.9},  # DeepLab's poly: the non-integer power path
            torch_class(lr_scheduler.PolynomialLR),
        ),
        "cosine_restarts": (
            {"T_0": max(1, n // 20), "T_mult": 2, "eta_min": 1e-6},
            torch_class(lr_scheduler.CosineAnnealingWarmRestarts),
        ),
        "cyclic": (
            {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 2000, "mode": "triangular2"},
            torch_class(lr_scheduler.CyclicLR, cycle_momentum=False),
        ),
        "one_cycle": (
            {"max_lr": 0.1, "total_steps": n + 1},
            torch_class(lr_scheduler.OneCycleLR, cycle_momentum=False),
        ),
        "inverse_sqrt": ({"num_warmup_steps": n // 10}, transformers(get_inverse_sqrt_schedule)),
        "wsd": (
            {
                "num_warmup_steps": n // 10,
                "num_decay_steps": n // 5,
                "num_training_steps": n,
                "decay_type": "cosine",
                "min_lr_ratio": 0.01,
            },
            transformers(get_wsd_schedule),
        ),
        "cosine_with_min_lr": (
            {"num_warmup_steps": n // 10, "num_training_steps": n, "min_lr_rate": 0.1},
            transformers(get_cosine_with_min_lr_schedule_with_warmup),
        ),
    }


@dataclass
class Row:
    family: str
    reference: str
    torch_seconds: list[float] = field(default_factory=list)  # one a pass
    ours_seconds: list[float] = field(default_factory=list)
    torch_us: float = 0.0  # µs per call, median pass
    ours_us: float = 0.0
    ours_min_us: float = 0.0
    ours_max_us: float = 0.0
    ratio: float = 0.0  # torch median / lrpilot median
    max_rel_diff: float = 0.0


def base_lrs(groups: int) -> tuple[float, ...]:
    return tuple(0.1 / 10**i for i in range(groups))


def torch_scheduler(make: Callable[..., Any], params: dict[str, Any], groups: int) -> Any:
    base = base_lrs(groups)
    param_groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(param_groups, lr=base[0])
    return make(opt, params)


def time_torch(make: Callable[..., Any], params: dict[str, Any], groups: int, n: int) -> float:
    step = torch_scheduler(make, params, groups).step
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def time_ours(family: str, params: dict[str, Any], groups: int, n: int) -> float:
    policy = get_policy(family, 1)
    base = base_lrs(groups)
    resolved = policy.resolve(params, base)
    state = policy.init(resolved, base)  # builds the curve: not timed, as torch's constructor
    lrs_at = policy.lrs_at
    t0 = time.perf_counter()
    for k in range(n):
        lrs_at(resolved, state, k)
    return time.perf_counter() - t0


def differential(
    family: str, make: Callable[..., Any], params: dict[str, Any], groups: int, n: int
) -> float:
    """The largest relative difference between lrpilot's lrs and torch's over the n steps."""
    sched = torch_scheduler(make, params, groups)
    policy = get_policy(family, 1)
    base = base_lrs(groups)
    resolved = policy.resolve(params, base)
    state = policy.init(resolved, base)
    worst = 0.0
    for k in range(n):
        if k:
            sched.step()
        theirs = [float(g["lr"]) for g in sched.optimizer.param_groups]
        for a, b in zip(policy.lrs_at(resolved, state, k), theirs, strict=True):
            if a != b:
                worst = max(worst, abs(a - b) / abs(b) if b else float("inf"))
    return worst


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    table = common.figures_table(
        f"lrs_at vs torch's scheduler.step(), {args.steps:,} steps, {args.groups} param "
        f"group(s), µs per call, median of {args.repeat} pass(es)",
        ("family", "torch reference", "torch µs", "lrs_at µs", "lrs_at range", "ratio torch/ours",
         "max rel diff"),
        names=2,
    )  # fmt: skip
    for row in rows:
        diff = f"{row.max_rel_diff:.1e}"
        diff = diff if row.max_rel_diff <= TOLERANCE else f"[bold red]{diff}[/]"
        table.add_row(
            row.family,
            row.reference,
            f"{row.torch_us:.3f}",
            f"{row.ours_us:.3f}",
            common.spread_cell(row.ours_min_us, row.ours_max_us, len(row.ours_seconds)),
            common.ratio_cell(row.ratio),
            diff,
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = common.timed_bench_parser(__doc__, repeat=5)
    parser.add_argument("--steps", type=int, default=100_000, help="calls per pass")
    parser.add_argument("--groups", type=int, default=2, help="param groups (base lrs)")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.repeat < 1 or not 1 <= args.groups <= 64:
        parser.error("--steps must be >= 10, --repeat >= 1, --groups 1..64")
    n = args.steps
    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))

    info = common.machine_info()
    info["versions"]["torch"] = torch.__version__
    common.print_header(info, f"torch {torch.__version__}, load {info['loadavg_at_start']}")
    families = cases(n)
    rows = []
    for family, (params, make) in families.items():
        reference = {
            "inverse_time": "LambdaLR (1/t)",
            "inverse_sqrt": "transformers LambdaLR",
            "wsd": "transformers LambdaLR",
            "cosine_with_min_lr": "transformers LambdaLR",
        }.get(family) or type(torch_scheduler(make, params, 1)).__name__
        row = Row(family, reference)
        row.max_rel_diff = differential(family, make, params, args.groups, n)
        rows.append(row)
    console.print(
        "differential check: lrpilot's lrs against torch's at every step, largest relative "
        f"difference {max(r.max_rel_diff for r in rows):.1e} (tolerance {TOLERANCE:.0e})"
    )

    t0 = time.monotonic()
    for i in range(args.repeat):
        for row in rows:
            params, make = families[row.family]
            row.torch_seconds.append(time_torch(make, params, args.groups, n))
            row.ours_seconds.append(time_ours(row.family, params, args.groups, n))
        console.print(
            f"  pass {i + 1}: "
            + ", ".join(f"{r.family} {r.torch_seconds[-1] / r.ours_seconds[-1]:.2f}x" for r in rows)
        )
    for row in rows:
        row.torch_us = common.per_call_us(row.torch_seconds, n)[0]
        row.ours_us, row.ours_min_us, row.ours_max_us = common.per_call_us(row.ours_seconds, n)
        row.ratio = row.torch_us / row.ours_us
    print_table(rows, args)
    console.print(f"total {time.monotonic() - t0:.0f} s")

    result = {
        "command": common.command_line("bench_schedules.py", argv),
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "base_lrs": base_lrs(args.groups),
            "params": {family: params for family, (params, _) in families.items()},
        },
        "machine": info,
        "rows": [asdict(row) for row in rows],
    }
    common.write_result(args.out, "schedules", result)
    return 0 if all(r.max_rel_diff <= TOLERANCE for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
