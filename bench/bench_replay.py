"""What-if replay against torch's ReduceLROnPlateau.step(), same stream, same process.

    python bench/bench_replay.py [--observations 1000000] [--repeat 5] [--seed 1]
        [--out bench/results/<name>.json]

The stream is ``--observations`` evaluations (step 1, 2, 3, ...) of bench/common.py's
``metric_value(seed, step)``: a loss that falls slowly under 3 % noise, so plateaus, hence
reductions, happen. Two policies see it: plateau@1 flavor torch and flavor keras, both with
patience 5 and factor 0.5 (every other param its default), base lr 0.1. Timed, one after the
other in each of ``--repeat`` passes:

  torch step()      torch.optim.lr_scheduler.ReduceLROnPlateau over an SGD optimizer with one
                    param group, ``sched.step(value)`` for every value: the reference
  <flavor> trace    lrpilot.replay.trace(replay(...)): (action, lrs) for every observation, a list
  <flavor> replay   a bare loop over lrpilot.replay.replay(...) reading .action and .lrs

Each row reports the median pass (and the range over passes) in µs per observation, and the
ratio torch / ours (>= 1: ours is at least as fast). torch has no keras flavor: the keras rows
are compared with the same torch reference. Before timing, once, the torch flavor's lrs are
checked against torch's at every observation (a differential check; the exit status is 1 if
they differ anywhere).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from common import (
    command_line,
    console,
    figures_table,
    machine_info,
    metric_value,
    per_call_us,
    print_header,
    ratio_cell,
    spread_cell,
    timed_bench_parser,
    write_result,
)
from lrpilot.policies import get_policy
from lrpilot.replay import replay, trace

BASE_LRS = (0.1,)
PARAMS: dict[str, dict[str, Any]] = {
    "torch": {"flavor": "torch", "patience": 5, "factor": 0.5},
    "keras": {"flavor": "keras", "patience": 5, "factor": 0.5},
}
POLICY = get_policy("plateau", 1)


@dataclass
class Row:
    name: str
    seconds: list[float] = field(default_factory=list)  # one a pass
    median_us: float = 0.0  # µs per observation, median pass
    min_us: float = 0.0
    max_us: float = 0.0
    ratio: float | None = None  # torch median / this median
    reductions: int | None = None


def torch_scheduler() -> ReduceLROnPlateau:
    kwargs = {k: v for k, v in PARAMS["torch"].items() if k != "flavor"}
    group = {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": BASE_LRS[0]}
    return ReduceLROnPlateau(torch.optim.SGD([group], lr=BASE_LRS[0]), **kwargs)


def run_torch(values: list[float]) -> None:
    step = torch_scheduler().step
    for value in values:
        step(value)


def run_trace(flavor: str, observations: list[tuple[int, float]]) -> None:
    params = POLICY.resolve(PARAMS[flavor], BASE_LRS)
    trace(replay(POLICY, params, POLICY.init(params, BASE_LRS), observations, "val_loss"))


def run_replay(flavor: str, observations: list[tuple[int, float]]) -> None:
    params = POLICY.resolve(PARAMS[flavor], BASE_LRS)
    for stepper in replay(POLICY, params, POLICY.init(params, BASE_LRS), observations, "val_loss"):
        stepper.action  # noqa: B018 (read, as a caller would)
        stepper.lrs  # noqa: B018


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def differential_check(observations: list[tuple[int, float]]) -> tuple[bool, int]:
    """The torch flavor's lrs against torch's after every observation; (all equal, reductions)."""
    sched = torch_scheduler()
    group = sched.optimizer.param_groups[0]
    params = POLICY.resolve(PARAMS["torch"], BASE_LRS)
    ours = trace(replay(POLICY, params, POLICY.init(params, BASE_LRS), observations, "val_loss"))
    reductions = 0
    for i, ((_, value), (action, lrs)) in enumerate(zip(observations, ours, strict=True)):
        before = group["lr"]
        sched.step(value)
        theirs = (float(group["lr"]),)
        if lrs != theirs or [bits(x) for x in lrs] != [bits(x) for x in theirs]:
            console.print(
                f"[bold red]lrs differ from torch's at observation {i} (value {value!r}): "
                f"ours {lrs!r}, torch {theirs!r}[/]"
            )
            return False, reductions
        if (action == "reduce") != (theirs[0] != before):
            console.print(f"[bold red]action {action!r} at observation {i}, torch {before!r} "
                          f"-> {theirs[0]!r}[/]")  # fmt: skip
            return False, reductions
        reductions += action == "reduce"
    return True, reductions


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    table = figures_table(
        f"what-if replay of {args.observations:,} observations vs torch's "
        f"ReduceLROnPlateau.step(), median of {args.repeat} pass(es)",
        ("what", "µs/obs", "range µs/obs", "s a pass", "ratio torch/ours", "reductions"),
    )
    for row in rows:
        table.add_row(
            row.name,
            f"{row.median_us:.3f}",
            spread_cell(row.min_us, row.max_us, len(row.seconds)),
            f"{statistics.median(row.seconds):.2f}",
            "-" if row.ratio is None else ratio_cell(row.ratio),
            "-" if row.reductions is None else f"{row.reductions:,}",
        )
    console.print(table)


def finish(rows: list[Row], n: int) -> None:
    for row in rows:
        row.median_us, row.min_us, row.max_us = per_call_us(row.seconds, n)
    reference = rows[0].median_us
    for row in rows[1:]:
        row.ratio = reference / row.median_us


def main(argv: list[str] | None = None) -> int:
    parser = timed_bench_parser(__doc__, repeat=5)
    parser.add_argument("--observations", type=int, default=1_000_000, help="stream length")
    parser.add_argument("--seed", type=int, default=1, help="metric_value's seed")
    args = parser.parse_args(argv)
    if args.observations < 1 or args.repeat < 1:
        parser.error("--observations and --repeat must be >= 1")
    n = args.observations

    info = machine_info()
    info["versions"]["torch"] = torch.__version__
    print_header(info, f"torch {torch.__version__}, load {info['loadavg_at_start']}")
    observations = [(step, metric_value(args.seed, step)) for step in range(1, n + 1)]
    values = [value for _, value in observations]

    same, torch_reductions = differential_check(observations)
    if same:
        console.print(
            f"differential check: the torch flavor's lrs equal torch's at all {n:,} "
            f"observations (bit for bit), {torch_reductions:,} reductions"
        )

    rows = [Row("torch ReduceLROnPlateau.step()")]
    runs: list[Callable[[], None]] = [partial(run_torch, values)]
    for flavor in PARAMS:
        params = POLICY.resolve(PARAMS[flavor], BASE_LRS)
        actions = trace(
            replay(POLICY, params, POLICY.init(params, BASE_LRS), observations, "val_loss")
        )
        reductions = sum(action == "reduce" for action, _ in actions)
        del actions
        rows.append(Row(f"plateau@1 {flavor}: trace()", reductions=reductions))
        runs.append(partial(run_trace, flavor, observations))
        rows.append(Row(f"plateau@1 {flavor}: replay() loop", reductions=reductions))
        runs.append(partial(run_replay, flavor, observations))

    t0 = time.monotonic()
    for i in range(args.repeat):
        for row, run in zip(rows, runs, strict=True):
            row.seconds.append(timed(run))
        console.print(
            f"  pass {i + 1}: "
            + ", ".join(f"{row.name} {1e6 * row.seconds[-1] / n:.3f} µs" for row in rows)
        )
    finish(rows, n)
    print_table(rows, args)
    console.print(f"total {time.monotonic() - t0:.0f} s")

    result = {
        "command": command_line("bench_replay.py", argv),
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "params": PARAMS,
            "base_lrs": BASE_LRS,
        },
        "machine": info,
        "differential_check": {"lrs_equal_torch": same, "torch_reductions": torch_reductions},
        "rows": [asdict(row) for row in rows],
    }
    write_result(args.out, "replay", result)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
