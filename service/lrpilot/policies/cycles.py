"""The cyclic families' arithmetic: one_cycle's phases and their annealing, cyclic's place in
its cycle. torch's OneCycleLR and CyclicLR anneal the momentum with the very arithmetic of the
lr, only between other levels, so every released version of these families (the lrs of
``one_cycle@1`` and ``cyclic@1``, the lrs and momentum of ``@2``) builds its curves here.

Frozen, as ``lrpilot.policies.common`` is: these are the numbers of released versions' logs.
No version owns this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat

from lrpilot.policies import common
from lrpilot.policies.arith import cos2_frac, powers
from lrpilot.policies.base import Horizon, Loc
from lrpilot.policies.curve import Curve, PerGroupLr, PositiveSteps, ScheduleParams, Steps

_ldexp = math.ldexp

Levels = tuple[float, ...]


def one_cycle_phases(
    total_steps: int, pct_start: float, three_phase: bool
) -> list[tuple[float, str, str, str, str]]:
    """torch's _schedule_phases, in its arithmetic: (end_step, start lr, end lr, start
    momentum, end momentum) a phase, the levels by name."""
    t, pct = total_steps, pct_start
    if three_phase:
        return [
            (float(pct * t) - 1, "initial", "max", "max_momentum", "base_momentum"),
            (float(2 * pct * t) - 2, "max", "initial", "base_momentum", "max_momentum"),
            (t - 1, "initial", "min", "max_momentum", "max_momentum"),
        ]
    return [
        (float(pct * t) - 1, "initial", "max", "max_momentum", "base_momentum"),
        (t - 1, "max", "min", "base_momentum", "max_momentum"),
    ]


def one_cycle_curve(
    ends: list[float], spans: list[tuple[Levels, Levels]], cos: bool, total_steps: int
) -> Curve:
    """step -> values annealed phase by phase, as torch's OneCycleLR.get_lr does: phase i ends
    at ``ends[i]`` and goes from ``spans[i][0]`` to ``spans[i][1]`` (one value a group); from
    ``total_steps - 1`` on, the cycle's last values hold (torch raises past total_steps)."""
    phases: list[tuple[float, float, float, Levels, Levels]] = []
    start = 0.0
    for end, (firsts, lasts) in zip(ends, spans, strict=True):
        phases.append((end, start, end - start, firsts, lasts))
        start = end
    final = len(phases) - 1

    def at(step: int) -> tuple[float, ...]:
        # torch's get_lr, in its order: the first phase whose end_step is not passed
        for i, (end, begin, length, firsts, lasts) in enumerate(phases):
            if step <= end or i == final:
                pct = (step - begin) / length
                if cos:  # torch: end + (start - end) / 2 * (cos(pi * pct) + 1)
                    c2 = cos2_frac(pct)
                    return tuple([b + (a - b) * c2 for a, b in zip(firsts, lasts, strict=True)])
                return tuple([(b - a) * pct + a for a, b in zip(firsts, lasts, strict=True)])
        raise AssertionError("unreachable: the last phase takes every step")

    # torch raises past total_steps and, at total_steps, extrapolates the last phase (with
    # anneal_strategy linear, below min lr, even below 0): the cycle's last values hold instead
    held = at(total_steps - 1)
    return lambda step: at(step) if step < total_steps - 1 else held


# step -> (the factor of the cycle's height, the mode's scale)
Place = Callable[[int], tuple[float, float]]


def cyclic_place(up: int, down: int, mode: str, gamma: float) -> Place:
    """step -> (the factor of the cycle's height, the mode's scale), as torch's CyclicLR.get_lr
    computes them: its cycle floor(1 + step / total) is cycle + 1, its x (the fraction of the
    cycle done) is r / total, and its factor x / step_ratio (rising) or (x - 1) /
    (step_ratio - 1) (falling) is r / up or (total - r) / down: one rounding, exact at any
    step. An lr is low + (height * factor) * scale; a momentum high - (height * factor) * scale."""
    total = up + down
    power = powers(gamma)

    def place(step: int) -> tuple[float, float]:
        cycle, r = divmod(step, total)
        f = r / up if r <= up else (total - r) / down
        if mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = _ldexp(1.0, -cycle)  # torch's 1 / 2.0 ** (cycle - 1), exactly
        else:
            scale = power(step)
        return f, scale

    return place


# -- the families' params (a version adds to them) --------------------------------------------


class CyclicFields(ScheduleParams):
    """Cyclic params' fields and rule, shared by its released versions."""

    base_lr: Annotated[
        PerGroupLr, Field(description="the low end of the cycle: a number, or one per group")
    ]
    max_lr: Annotated[
        PerGroupLr, Field(description="the high end of the cycle: a number, or one per group")
    ]
    step_size_up: Annotated[PositiveSteps, Field(description="steps from base_lr to max_lr")] = 2000
    step_size_down: Annotated[
        Steps | None, Field(description="steps from max_lr back to base_lr (null: step_size_up)")
    ] = None
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: Annotated[
        StrictFloat,
        Field(gt=0.0, le=1.0, description="exp_range scales the cycle by gamma**step"),
    ] = 1.0

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        return common.group_count_errors(
            ("base_lr",), self.base_lr, groups
        ) + common.group_count_errors(("max_lr",), self.max_lr, groups)

    def _cycle(
        self, low: PerGroupLr, high: PerGroupLr, groups: int
    ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], Place]:
        """A cycle between ``low`` and ``high`` (a number, or one per group) over ``groups``
        param groups: its lows, highs and heights, and where a step is in it
        (``cyclic_place``), the cycle the lr and the momentum (a later version) share."""
        lows = common.per_group(low, groups)
        highs = common.per_group(high, groups)
        heights = tuple([m - b for b, m in zip(lows, highs, strict=True)])
        up = self.step_size_up
        down = self.step_size_down if self.step_size_down is not None else up
        return lows, highs, heights, cyclic_place(up, down, self.mode, self.gamma)

    def _curve(self, base: tuple[float, ...]) -> Curve:
        lows, _, spans, place = self._cycle(self.base_lr, self.max_lr, len(base))

        def curve(step: int) -> tuple[float, ...]:
            f, scale = place(step)
            return tuple([b + (d * f) * scale for b, d in zip(lows, spans, strict=True)])

        return curve


class OneCycleFields(ScheduleParams):
    """OneCycle params' fields and rule, shared by its released versions."""

    max_lr: Annotated[PerGroupLr, Field(description="the peak lr: a number, or one per group")]
    total_steps: Annotated[
        PositiveSteps,
        Field(description="steps in the cycle; from total_steps on, its last lrs hold"),
    ]
    pct_start: Annotated[
        StrictFloat, Field(ge=0.0, le=1.0, description="the fraction of the cycle spent rising")
    ] = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: Annotated[
        StrictFloat,
        Field(gt=0.0, allow_inf_nan=False, description="the first lr is max_lr / div_factor"),
    ] = 25.0
    final_div_factor: Annotated[
        StrictFloat,
        Field(
            gt=0.0,
            allow_inf_nan=False,
            description="the last lr is max_lr / div_factor / final_div_factor",
        ),
    ] = 1e4
    three_phase: Annotated[
        StrictBool,
        Field(description="rise, fall back to the first lr, then anneal (the paper's shape)"),
    ] = False

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        errors = common.group_count_errors(("max_lr",), self.max_lr, groups)
        if float(self.pct_start * self.total_steps) - 1 == 0.0:
            errors.append(
                (
                    ("pct_start",),
                    f"pct_start * total_steps is 1 ({self.pct_start!r} * {self.total_steps}): "
                    "the rising phase would last 0 steps (torch divides by zero at step 0)",
                )
            )
        tops = self.max_lr if isinstance(self.max_lr, list) else [self.max_lr]
        if not all(math.isfinite(m / self.div_factor) for m in tops):
            errors.append((("div_factor",), "max_lr / div_factor is beyond the largest double"))
        elif not all(math.isfinite(m / self.div_factor / self.final_div_factor) for m in tops):
            errors.append(
                (
                    ("final_div_factor",),
                    "max_lr / div_factor / final_div_factor is beyond the largest double",
                )
            )
        return errors

    def declared_horizon(self) -> Horizon | None:
        # the peak: the end of the rise (torch's first phase); the end: the cycle's last step
        peak = max(0, math.floor(float(self.pct_start * self.total_steps) - 1))
        return Horizon("total_steps", peak, self.total_steps - 1)

    def _curve(self, base: tuple[float, ...]) -> Curve:
        tops = common.per_group(self.max_lr, len(base))
        initial = tuple([m / self.div_factor for m in tops])
        levels = {
            "initial": initial,
            "max": tops,
            "min": tuple([i / self.final_div_factor for i in initial]),
        }
        phases = one_cycle_phases(self.total_steps, self.pct_start, self.three_phase)
        return one_cycle_curve(
            [end for end, *_ in phases],
            [(levels[first], levels[last]) for _, first, last, _, _ in phases],
            self.anneal_strategy == "cos",
            self.total_steps,
        )
