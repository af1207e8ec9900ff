"""The cyclic families' second versions: more than the lr.

``one_cycle@2`` and ``cyclic@2`` are ``one_cycle@1`` and ``cyclic@1`` (the same params, the
same lrs to the bit) that also schedule, per param group:

- the **momentum** (SGD's ``momentum``, Adam's ``betas[0]``), cycled inversely to the lr as
  torch's OneCycleLR and CyclicLR do with ``cycle_momentum`` (on by default, as in torch;
  ``base_momentum`` and ``max_momentum`` with torch's defaults: 0.85 and 0.95 for one_cycle,
  0.8 and 0.9 for cyclic), in torch's arithmetic;
- the **weight decay**, on Megatron-LM's ramp (``start_wd``, ``end_wd``, ``wd_incr_steps``,
  ``wd_incr_style``: its OptimizerParamScheduler's get_wd) when ``start_wd`` is given: over
  ``total_steps`` for one_cycle unless ``wd_incr_steps`` says otherwise; cyclic has no end, so
  there ``wd_incr_steps`` is required.

Why new versions rather than opt-in params on @1: torch turns ``cycle_momentum`` on by default,
and a config carried over from torch should cycle the momentum as torch does; a default of
"off" on @1 would silently differ from torch, a default of "on" would change @1's state. The
extras live in the state (an ``ExtrasState``: ``momentum`` and ``weight_decay``, null when not
scheduled), so the chain pins them, and a decision entry carries them at its top level when the
run schedules them (``lrpilot.entries``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StrictBool

from lrpilot.policies import common
from lrpilot.policies.base import Loc
from lrpilot.policies.curve import (
    Curve,
    ExtrasCurve,
    ExtrasParams,
    ExtrasSchedule,
    PerGroupLr,
    WeightDecayRamp,
)
from lrpilot.policies.cycles import (
    CyclicFields,
    OneCycleFields,
    one_cycle_curve,
    one_cycle_phases,
)

_CYCLE_MOMENTUM = Field(
    description="cycle the momentum (Adam's betas[0]) inversely to the lr, as torch does"
)


class MomentumAndDecay(WeightDecayRamp, ExtrasParams):
    """What a cyclic family's second version adds to its first: torch's momentum cycling
    (``cycle_momentum``, between ``base_momentum`` and ``max_momentum``, whose defaults are
    the family's) and Megatron's weight decay ramp over ``_wd_horizon()``."""

    cycle_momentum: Annotated[StrictBool, _CYCLE_MOMENTUM] = True
    base_momentum: PerGroupLr
    max_momentum: PerGroupLr

    def _wd_horizon(self) -> int | None:
        """The ramp's length when wd_incr_steps is not given (None: there is none)."""
        return None

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        errors = super()._check(groups)  # the family's own
        errors += common.group_count_errors(("base_momentum",), self.base_momentum, groups)
        errors += common.group_count_errors(("max_momentum",), self.max_momentum, groups)
        return errors + self._wd_check(groups, self._wd_horizon())


class OneCycleMomentumParams(MomentumAndDecay, OneCycleFields):
    """torch.optim.lr_scheduler.OneCycleLR's arguments, names and defaults, momentum cycling
    included (total_steps, not epochs and steps_per_epoch), and Megatron's weight decay ramp.
    As in torch, the lrs start at max_lr / div_factor whatever the run's base lrs (which give
    the number of groups), and the momentum at max_momentum."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"max_lr": 0.1, "total_steps": 10000},
                {
                    "max_lr": 0.1,
                    "total_steps": 10000,
                    "base_momentum": 0.85,
                    "max_momentum": 0.95,
                    "start_wd": 0.01,
                    "end_wd": 0.1,
                    "wd_incr_style": "cosine",
                },
            ]
        }
    )

    base_momentum: Annotated[
        PerGroupLr,
        Field(description="the momentum at the lr's peak: a number, or one per group"),
    ] = 0.85
    max_momentum: Annotated[
        PerGroupLr,
        Field(description="the momentum at the start and end: a number, or one per group"),
    ] = 0.95

    def _wd_horizon(self) -> int:
        return self.total_steps

    def _extras(self, groups: int) -> ExtrasCurve:
        momentum: Curve | None = None
        if self.cycle_momentum:
            levels = {
                "base_momentum": common.per_group(self.base_momentum, groups),
                "max_momentum": common.per_group(self.max_momentum, groups),
            }
            phases = one_cycle_phases(self.total_steps, self.pct_start, self.three_phase)
            momentum = one_cycle_curve(
                [end for end, *_ in phases],
                [(levels[first], levels[last]) for *_, first, last in phases],
                self.anneal_strategy == "cos",
                self.total_steps,
            )
        return _extras_curve(momentum, self._wd_curve(groups, self._wd_horizon()))


class CyclicMomentumParams(MomentumAndDecay, CyclicFields):
    """torch.optim.lr_scheduler.CyclicLR's arguments, names and defaults, momentum cycling
    included (no custom scale_fn), and Megatron's weight decay ramp (give wd_incr_steps: a
    cycle has no end). As in torch, base_lr replaces the run's base lrs (which give the number
    of param groups), and the momentum starts at max_momentum."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 2000, "mode": "triangular2"},
                {
                    "base_lr": 0.001,
                    "max_lr": 0.1,
                    "base_momentum": 0.8,
                    "max_momentum": 0.9,
                    "start_wd": 0.0,
                    "end_wd": 0.05,
                    "wd_incr_steps": 20000,
                    "wd_incr_style": "linear",
                },
            ]
        }
    )

    base_momentum: Annotated[
        PerGroupLr,
        Field(description="the momentum at max_lr: a number, or one per group"),
    ] = 0.8
    max_momentum: Annotated[
        PerGroupLr,
        Field(description="the momentum at base_lr: a number, or one per group"),
    ] = 0.9

    def _extras(self, groups: int) -> ExtrasCurve:
        momentum: Curve | None = None
        if self.cycle_momentum:
            _, highs, heights, place = self._cycle(self.base_momentum, self.max_momentum, groups)

            def cycled(step: int) -> tuple[float, ...]:
                # torch: max_momentum - (max_momentum - base_momentum) * factor * scale
                f, scale = place(step)
                return tuple([m - (h * f) * scale for m, h in zip(highs, heights, strict=True)])

            momentum = cycled

        return _extras_curve(momentum, self._wd_curve(groups, self._wd_horizon()))


def _extras_curve(momentum: Curve | None, weight_decay: Curve | None) -> ExtrasCurve:
    """step -> the extras scheduled (the curves given; None: not scheduled)."""
    curves = [
        (name, curve)
        for name, curve in (("momentum", momentum), ("weight_decay", weight_decay))
        if curve is not None
    ]
    return lambda step: {name: curve(step) for name, curve in curves}


SCHEDULES2: tuple[ExtrasSchedule, ...] = (
    ExtrasSchedule(
        "cyclic",
        2,
        CyclicMomentumParams,
        "cyclic@1's lrs (torch's CyclicLR) with the momentum cycled inversely between "
        "max_momentum and base_momentum (cycle_momentum, as torch) and, with start_wd, "
        "Megatron's weight decay ramp over wd_incr_steps.",
    ),
    ExtrasSchedule(
        "one_cycle",
        2,
        OneCycleMomentumParams,
        "one_cycle@1's lrs (torch's OneCycleLR) with the momentum cycled inversely from "
        "max_momentum to base_momentum and back (cycle_momentum, as torch) and, with "
        "start_wd, Megatron's weight decay ramp over total_steps (or wd_incr_steps).",
    ),
)
