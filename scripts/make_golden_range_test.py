"""Write tests/golden/range_test@1.jsonl: frozen decision logs for the released policy
range_test@1 (the LR range test).

One canonical-JSON line per stream, in the format of tests/golden/README.md:
``{"policy", "params" (resolved), "base_lrs", "metric", "observations": [[step, value], ...],
"decisions": [{"lrs", "action", "reason", "state"}, ...]}``; non-finite floats are written as
"NaN" / "Infinity" / "-Infinity".

The streams: a synthetic training loss that falls then explodes, seen through the exp and the
linear ramp (the job posting the loss at the lr it trained with, as a real one does), with
noise, with several param groups, with a NaN, +inf or -inf loss (divergence), a ramp that ends
without diverging, steps that skip, negative losses, a smoothed loss that overflows, and
observations after the stop. Before writing, every stream is checked against a plain
reference that keeps the whole history (tests/policies/test_range_test.py: ``reference``): the same
actions, stop step and suggestion, and the ramp's lrs in closed form.

A released version's file must never change, so this script refuses to overwrite an existing
file unless --force (use it only for a version that has not been released).

    python scripts/make_golden_range_test.py [--out tests/golden/range_test@1.jsonl] [--force]
"""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

import golden_lines

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "range_test@1.jsonl"
NAN, INF = math.nan, math.inf

Stream = golden_lines.Stream


def curve(lr: float, steep: float = 1e-3, blow: float = 0.3) -> float:
    """A training loss against the lr: falls fastest at ``steep`` and explodes past ``blow``."""
    x = math.log(lr)
    return (
        1.0
        + 0.5 * (1 - math.tanh((x - math.log(steep)) / 0.7))
        + 0.05 * math.exp((x - math.log(blow)) / 0.25)
    )


def noise(seed: int, n: int) -> list[float]:
    """n deterministic multipliers in [0.9, 1.1) (an LCG: the same on every machine)."""
    x, out = seed * 0x9E3779B97F4A7C15 % 2**64, []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(0.9 + 0.2 * ((x >> 11) / 2**53))
    return out


def along_ramp(
    params: dict[str, Any],
    base_lrs: tuple[float, ...],
    steps: list[int],
    loss: Any,
    extra: list[float] | None = None,
) -> Stream:
    """The losses a job would post: ``loss(i, lr)`` at the lr of each step, until the policy
    stops the test; then ``extra`` values at the next steps (after the stop)."""
    from lrpilot.policies import Observation, get_policy

    policy = get_policy("range_test", 1)
    resolved = policy.resolve(params, base_lrs)
    state = policy.init(resolved, base_lrs)
    used_steps, values = [], []
    for i, step in enumerate(steps):
        value = loss(i, policy.lrs_at(resolved, state, step)[0])
        outcome, state = policy.step(resolved, state, Observation(step, value, "train_loss"))
        used_steps.append(step)
        values.append(value)
        if outcome.action == "stop":
            break
    for k, value in enumerate(extra or [], start=1):
        used_steps.append(used_steps[-1] + k)
        values.append(value)
    return params, base_lrs, used_steps, values


def streams() -> list[Stream]:
    wobble = noise(7, 1000)
    out = [
        # the defaults: exp from 1e-7 to 10 over 100 steps, smoothing 0.98
        along_ramp({}, (0.1,), list(range(120)), lambda i, lr: curve(lr), [2.0, NAN]),
        # a sharper EMA over a longer ramp; then observations after the stop
        along_ramp(
            {"num_steps": 300, "smoothing": 0.9},
            (0.1,),
            list(range(320)),
            lambda i, lr: curve(lr),
            [1.0, 1.0, INF],
        ),
        # noisy losses
        along_ramp(
            {"num_steps": 200, "smoothing": 0.95, "skip_start": 5},
            (3e-4,),
            list(range(220)),
            lambda i, lr: curve(lr) * wobble[i],
        ),
        # linear ramps: from 1e-4 to 1 (the curve blows up), and over a short range
        along_ramp(
            {"min_lr": 1e-4, "max_lr": 1.0, "num_steps": 150, "mode": "linear", "smoothing": 0.8},
            (0.1,),
            list(range(160)),
            lambda i, lr: curve(lr),
        ),
        along_ramp(
            {"min_lr": 1e-3, "max_lr": 0.1, "num_steps": 40, "mode": "linear", "skip_start": 3},
            (0.1,),
            list(range(45)),
            lambda i, lr: curve(lr),
            [0.5],
        ),
        # two param groups, one range each; exp and linear
        along_ramp(
            {"min_lr": [1e-6, 1e-5], "max_lr": [1.0, 3.0], "num_steps": 80, "smoothing": 0.9},
            (0.1, 0.01),
            list(range(90)),
            lambda i, lr: curve(lr),
        ),
        along_ramp(
            {
                "min_lr": [1e-4, 1e-3],
                "max_lr": [0.5, 1.0],
                "num_steps": 60,
                "mode": "linear",
                "smoothing": 0.7,
                "skip_start": 2,
            },
            (0.1, 0.01),
            list(range(70)),
            lambda i, lr: curve(lr),
        ),
        # a NaN loss before the smoothed loss diverges: divergence all the same
        along_ramp(
            {"num_steps": 100, "smoothing": 0.9, "skip_start": 3},
            (0.1,),
            list(range(100)),
            lambda i, lr: NAN if i == 40 else curve(lr),
            [1.0, NAN],
        ),
        # +inf, then -inf, with steps that skip (every 3rd step, from 5)
        along_ramp(
            {"num_steps": 120, "smoothing": 0.6, "skip_start": 2},
            (0.1,),
            list(range(5, 125, 3)),
            lambda i, lr: INF if i == 25 else curve(lr),
        ),
        along_ramp(
            {"num_steps": 50, "mode": "linear", "min_lr": 1e-3, "max_lr": 1.0, "skip_start": 0},
            (0.1,),
            list(range(50)),
            lambda i, lr: -INF if i == 12 else curve(lr),
        ),
        # the ramp ends without divergence (a loss that only falls): stop at max_lr
        along_ramp(
            {"min_lr": 1e-5, "max_lr": 1e-2, "num_steps": 30, "skip_start": 4},
            (0.1,),
            list(range(35)),
            lambda i, lr: 2.0 / (1 + i),
            [0.01, 0.01],
        ),
        # no smoothing, diverge_factor 2, the smallest ramp (num_steps 2)
        along_ramp(
            {"num_steps": 20, "smoothing": 0.0, "diverge_factor": 2.0, "skip_start": 0},
            (0.1,),
            list(range(25)),
            lambda i, lr: curve(lr, steep=1e-5, blow=1e-2),
        ),
        along_ramp(
            {"num_steps": 2, "skip_start": 0, "min_lr": 0.01, "max_lr": 1.0},
            (0.1,),
            [0, 1, 2],
            lambda i, lr: 1.0 - 0.1 * i,
        ),
        # negative losses: best <= 0 diverges by its distance, best + (f - 1) x |best|
        along_ramp(
            {"num_steps": 60, "smoothing": 0.5, "skip_start": 1},
            (0.1,),
            list(range(60)),
            lambda i, lr: curve(lr) - 2.0 if i < 30 else 5.0,
        ),
        # the largest float twice: the smoothed loss overflows
        (
            {"num_steps": 10, "skip_start": 0, "smoothing": 0.9},
            (0.1,),
            [0, 1, 2],
            [1.7976931348623157e308] * 3,
        ),
        # a rising loss (no suggested lr), first observation past the ramp (stop at once)
        (
            {"num_steps": 6, "skip_start": 0, "smoothing": 0.0},
            (0.1,),
            [0, 1, 2, 3, 4, 5],
            [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
        ),
        ({"num_steps": 5, "skip_start": 0}, (0.1,), [7, 8, 9], [1.0, 0.5, NAN]),
        # NaN first: no smoothed loss at all
        ({"num_steps": 10, "skip_start": 0}, (0.1, 0.2, 0.3), [0, 1], [NAN, 1.0]),
    ]
    return out


def check(line: dict[str, Any]) -> str | None:
    """What disagrees with the plain reference, or None."""
    sys.path.insert(0, str(ROOT))
    from tests.policies.test_range_test import reference, reference_lr

    params = line["params"]
    stream = [(s, v) for s, v in line["observations"]]
    for i, (want, got) in enumerate(zip(reference(params, stream), line["decisions"], strict=True)):
        state = got["state"]
        for key in ("stop_step", "steepest_step", "best_step"):
            if key != "stop_step" and state["stop_step"] is None:
                continue
            if want[key] != state[key]:
                return f"decision {i}: {key} {state[key]} != reference {want[key]}"
        if want["action"] != got["action"]:
            return f"decision {i}: action {got['action']} != reference {want['action']}"
        step = stream[i][0] if state["stop_step"] is None else state["stop_step"]
        for g, lr in enumerate(got["lrs"]):
            ref = reference_lr(params, step, g)
            if abs(lr - ref) > 1e-12 * ref:
                return f"decision {i}: lr {lr!r} != closed form {ref!r} (group {g})"
    return None


def main(argv: list[str] | None = None) -> int:
    lines = partial(golden_lines.decided, "range_test@1", "train_loss", streams)
    return golden_lines.generate(argv, __doc__, DEFAULT_OUT, lines, check)


if __name__ == "__main__":
    sys.exit(main())
