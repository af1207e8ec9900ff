"""Schedule families: the learning rate as a pure function of the training step.

One released policy a family, ``<name>@1``, its params named as the constructor arguments of
the torch scheduler it reproduces, so that a config carries over:

=================  ==========================================  ================================
policy             params                                      reproduces
=================  ==========================================  ================================
constant@1         factor, total_iters                         torch ConstantLR
step@1             step_size, gamma                            torch StepLR
multistep@1        milestones, gamma                           torch MultiStepLR
exponential@1      gamma                                       torch ExponentialLR
inverse_time@1     decay_steps, decay_rate, staircase          keras InverseTimeDecay
linear@1           start_factor, end_factor, total_iters       torch LinearLR
cosine@1           T_max, eta_min                              torch CosineAnnealingLR
polynomial@1       total_iters, power                          torch PolynomialLR
cosine_restarts@1  T_0, T_mult, eta_min                        torch CosineAnnealingWarmRestarts
cyclic@1           base_lr, max_lr, step_size_up,              torch CyclicLR (lrs only: no
                   step_size_down, mode, gamma                 momentum cycling)
one_cycle@1        max_lr, total_steps, pct_start,             torch OneCycleLR (lrs only)
                   anneal_strategy, div_factor,
                   final_div_factor, three_phase
=================  ==========================================  ================================

The lrs at training step ``k`` are torch's ``group["lr"]`` after ``k`` calls of
``scheduler.step()`` (step 0: right after the scheduler is built), computed in closed form: any
step costs the same, so a rank that only reads gets each step's lrs exactly and cheaply. torch
computes most of these recursively (each step multiplies the previous lr), so its lrs and these
differ by rounding, a few ulps over thousands of steps (tests/policies/test_schedules_torch.py
bounds it at 1e-10 relative). Where torch's own arithmetic loses digits, these do not: a cosine
is computed as ``cos(x / 2) ** 2`` rather than ``(1 + cos(x)) / 2``, which near the end of an
annealing keeps every digit that torch's ``1 + cos`` cancels away.

Determinism: a schedule's lrs are logged in decisions and verified bit for bit on any machine, so
they come from ``lrpilot.policies.arith`` (IEEE double arithmetic and fdlibm's kernels in pure
Python: no libm). The policy over a curve, its params' base and its reasons are
``lrpilot.policies.curve``'s, which every schedule family shares.

Where torch divides by zero, lrpilot refuses the params; where torch is undefined (OneCycleLR
past ``total_steps``), lrpilot holds the last lrs of the cycle. Every such choice is written at
its family below.

Each schedule keeps the run's base lrs with its resolved params (``resolve`` binds them; they are
not a param): the state, like every policy's, carries only the lrs of the last decision, and
``lrs_at`` does not read it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from functools import lru_cache
from typing import Annotated

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

from lrpilot.policies.arith import cos2_ratio, pow01, powers
from lrpilot.policies.base import MAX_STEP, Horizon
from lrpilot.policies.curve import (
    Curve,
    Gamma,
    MinLr,
    PositiveSteps,
    Schedule,
    ScheduleParams,
    Steps,
    times,
)
from lrpilot.policies.cycles import CyclicFields, OneCycleFields

_floor = math.floor


class ConstantParams(ScheduleParams):
    """torch.optim.lr_scheduler.ConstantLR's arguments, names and defaults."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"factor": 0.1, "total_iters": 500}]})

    factor: Annotated[
        StrictFloat, Field(gt=0.0, le=1.0, description="the base lrs' factor before total_iters")
    ] = 1.0 / 3
    total_iters: Annotated[Steps, Field(description="the first step at the base lrs")] = 5

    def _curve(self, base: tuple[float, ...]) -> Curve:
        total = self.total_iters
        low = tuple([b * self.factor for b in base])
        if total == 0:  # torch's ConstantLR.step() never undoes a factor applied at step 0
            return lambda step: low
        return lambda step: low if step < total else base


class StepParams(ScheduleParams):
    """torch.optim.lr_scheduler.StepLR's arguments, names and defaults."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"step_size": 30, "gamma": 0.1}]})

    step_size: Annotated[PositiveSteps, Field(description="decay every step_size steps")]
    gamma: Annotated[Gamma, Field(description="by this factor")] = 0.1

    def _curve(self, base: tuple[float, ...]) -> Curve:
        size, power = self.step_size, powers(self.gamma)
        return lambda step: times(base, power(step // size))


class MultiStepParams(ScheduleParams):
    """torch.optim.lr_scheduler.MultiStepLR's arguments, names and defaults."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"milestones": [30, 80], "gamma": 0.1}]}
    )

    milestones: Annotated[
        list[Steps],
        Field(
            max_length=10_000,
            description="decay at each of these steps (in any order; a step given n times "
            "decays by gamma**n, as in torch)",
        ),
    ]
    gamma: Annotated[Gamma, Field(description="by this factor")] = 0.1

    def _curve(self, base: tuple[float, ...]) -> Curve:
        marks = sorted(self.milestones)
        power = powers(self.gamma)
        # Each level on first use, and only the recent ones kept: 10,000 milestones of 1,024
        # param groups held at once would be ten million floats, from one PUT.
        level = lru_cache(maxsize=64)(lambda n: times(base, power(n)))
        return lambda step: level(bisect_right(marks, step))


class ExponentialParams(ScheduleParams):
    """torch.optim.lr_scheduler.ExponentialLR's arguments, names and defaults."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"gamma": 0.999}]})

    gamma: Annotated[Gamma, Field(description="the lrs are base lrs times gamma**step")]

    def _curve(self, base: tuple[float, ...]) -> Curve:
        power = powers(self.gamma)
        return lambda step: times(base, power(step))


class InverseTimeParams(ScheduleParams):
    """keras.optimizers.schedules.InverseTimeDecay's arguments (its initial_learning_rate is
    the run's base lrs), names and defaults."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"decay_steps": 1000.0, "decay_rate": 0.5}]}
    )

    decay_steps: Annotated[
        StrictFloat, Field(gt=0.0, allow_inf_nan=False, description="the time unit, in steps")
    ]
    decay_rate: Annotated[
        StrictFloat,
        Field(
            ge=0.0,
            allow_inf_nan=False,
            description="lr = base / (1 + decay_rate * step / decay_steps)",
        ),
    ]
    staircase: Annotated[
        StrictBool, Field(description="floor(step / decay_steps): decay in whole units")
    ] = False

    def _curve(self, base: tuple[float, ...]) -> Curve:
        steps, rate, staircase = self.decay_steps, self.decay_rate, self.staircase
        if rate == 0.0:
            return lambda step: base

        def curve(step: int) -> tuple[float, ...]:
            # keras' order, in double: p = step / decay_steps, floor, 1 + rate * p, lr / that
            p = step / steps
            if staircase and p < 4503599627370496.0:  # 2**52: every double above is whole
                p = float(_floor(p))
            d = 1.0 + rate * p
            return tuple([b / d for b in base])

        return curve


class LinearParams(ScheduleParams):
    """torch.optim.lr_scheduler.LinearLR's arguments, names and defaults."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"start_factor": 0.01, "end_factor": 1.0, "total_iters": 1000}]
        }
    )

    start_factor: Annotated[
        StrictFloat, Field(gt=0.0, le=1.0, description="the factor on the base lrs at step 0")
    ] = 1.0 / 3
    end_factor: Annotated[
        StrictFloat, Field(ge=0.0, le=1.0, description="the factor from total_iters on")
    ] = 1.0
    total_iters: Annotated[Steps, Field(description="steps from start to end factor")] = 5

    def declared_horizon(self) -> Horizon | None:
        return Horizon("total_iters", 0, self.total_iters) if self.total_iters else None

    def _curve(self, base: tuple[float, ...]) -> Curve:
        start, end, total = self.start_factor, self.end_factor, self.total_iters
        first = tuple([b * start for b in base])
        if total == 0:  # torch's LinearLR.step() keeps start_factor forever
            return lambda step: first
        last = tuple([b * end for b in base])
        span = end - start

        def curve(step: int) -> tuple[float, ...]:
            if step >= total:
                return last
            f = start + span * step / total  # torch's closed form, in its order
            return tuple([b * f for b in base])

        return curve


class CosineParams(ScheduleParams):
    """torch.optim.lr_scheduler.CosineAnnealingLR's arguments, names and defaults."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"T_max": 10000, "eta_min": 0.0}]})

    T_max: Annotated[
        PositiveSteps,
        Field(
            description="steps from the base lrs down to eta_min (then back up, as torch does: "
            "the period is 2 * T_max)"
        ),
    ]
    eta_min: Annotated[MinLr, Field(description="the lowest lr")] = 0.0

    def declared_horizon(self) -> Horizon | None:
        return Horizon("T_max", 0, self.T_max)

    def _curve(self, base: tuple[float, ...]) -> Curve:
        t, eta = self.T_max, self.eta_min
        period = t + t
        spans = tuple([b - eta for b in base])

        def curve(step: int) -> tuple[float, ...]:
            # eta + (base - eta) * (1 + cos(pi * step / T)) / 2, as cos(pi * a / (2 T)) ** 2
            a = step % period
            if a > t:
                a = period - a
            c2 = cos2_ratio(a, t)
            return tuple([eta + d * c2 for d in spans])

        return curve


class PolynomialParams(ScheduleParams):
    """torch.optim.lr_scheduler.PolynomialLR's arguments, names and defaults."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"total_iters": 10000, "power": 2.0}]}
    )

    total_iters: Annotated[
        Steps, Field(description="lr = base * (1 - step / total_iters) ** power, then 0")
    ] = 5
    power: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1.0

    def declared_horizon(self) -> Horizon | None:
        return Horizon("total_iters", 0, self.total_iters) if self.total_iters else None

    def _curve(self, base: tuple[float, ...]) -> Curve:
        total, power = self.total_iters, self.power
        if total == 0:  # torch's PolynomialLR.step() holds the base lrs
            return lambda step: base
        end = base if power == 0.0 else tuple(0.0 for _ in base)

        def curve(step: int) -> tuple[float, ...]:
            if step >= total:
                return end
            return times(base, pow01((total - step) / total, power))

        return curve


class CosineRestartsParams(ScheduleParams):
    """torch.optim.lr_scheduler.CosineAnnealingWarmRestarts's arguments, names and defaults."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"T_0": 1000, "T_mult": 2, "eta_min": 1e-5}]}
    )

    T_0: Annotated[PositiveSteps, Field(description="steps of the first cycle")]
    T_mult: Annotated[
        StrictInt, Field(ge=1, le=MAX_STEP, description="each cycle is T_mult times the last")
    ] = 1
    eta_min: Annotated[MinLr, Field(description="the lowest lr")] = 0.0

    def _curve(self, base: tuple[float, ...]) -> Curve:
        t0, mult, eta = self.T_0, self.T_mult, self.eta_min
        spans = tuple([b - eta for b in base])
        if mult == 1:

            def same_cycles(step: int) -> tuple[float, ...]:
                c2 = cos2_ratio(step % t0, t0)
                return tuple([eta + d * c2 for d in spans])

            return same_cycles
        starts, lengths = [0], [t0]  # cycle n runs from starts[n] for lengths[n] steps
        while starts[-1] <= MAX_STEP:
            starts.append(starts[-1] + lengths[-1])
            lengths.append(lengths[-1] * mult)

        def growing_cycles(step: int) -> tuple[float, ...]:
            n = bisect_right(starts, step) - 1
            c2 = cos2_ratio(step - starts[n], lengths[n])
            return tuple([eta + d * c2 for d in spans])

        return growing_cycles


class CyclicParams(CyclicFields):
    """torch.optim.lr_scheduler.CyclicLR's arguments, names and defaults (lrs only: no
    momentum cycling; no custom scale_fn). As in torch, base_lr replaces the run's base lrs
    (which give the number of param groups)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 2000, "mode": "triangular2"}
            ]
        }
    )


class OneCycleParams(OneCycleFields):
    """torch.optim.lr_scheduler.OneCycleLR's arguments, names and defaults (lrs only: no
    momentum cycling; total_steps, not epochs and steps_per_epoch). As in torch, the lrs start
    at max_lr / div_factor whatever the run's base lrs (which give the number of groups)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"max_lr": 0.1, "total_steps": 10000}]}
    )


# One released policy a family, ``<name>@1``: its name, its params (the rule is their curve)
# and the description GET /v1/policies serves.
SCHEDULES: tuple[Schedule, ...] = (
    Schedule(
        "constant",
        ConstantParams,
        "The base lrs times factor until step total_iters, then the base lrs (torch's ConstantLR).",
    ),
    Schedule(
        "step", StepParams, "The base lrs times gamma every step_size steps (torch's StepLR)."
    ),
    Schedule(
        "multistep",
        MultiStepParams,
        "The base lrs times gamma at each milestone step (torch's MultiStepLR).",
    ),
    Schedule(
        "exponential", ExponentialParams, "The base lrs times gamma**step (torch's ExponentialLR)."
    ),
    Schedule(
        "inverse_time",
        InverseTimeParams,
        "1/t decay: base / (1 + decay_rate * step / decay_steps), the quotient floored with "
        "staircase (keras' InverseTimeDecay, in double precision).",
    ),
    Schedule(
        "linear",
        LinearParams,
        "The base lrs times a factor going linearly from start_factor to end_factor over "
        "total_iters steps (torch's LinearLR): a linear warmup or decay.",
    ),
    Schedule(
        "cosine",
        CosineParams,
        "Cosine annealing from the base lrs to eta_min over T_max steps (torch's "
        "CosineAnnealingLR).",
    ),
    Schedule(
        "polynomial",
        PolynomialParams,
        "The base lrs times (1 - step / total_iters) ** power, then 0 (torch's PolynomialLR).",
    ),
    Schedule(
        "cosine_restarts",
        CosineRestartsParams,
        "Cosine annealing to eta_min restarted from the base lrs every cycle, the first T_0 "
        "steps long, each T_mult times the last (torch's CosineAnnealingWarmRestarts, SGDR).",
    ),
    Schedule(
        "cyclic",
        CyclicParams,
        "Cycles between base_lr and max_lr, step_size_up steps up and step_size_down down, "
        "mode triangular, triangular2 or exp_range (torch's CyclicLR, lrs only).",
    ),
    Schedule(
        "one_cycle",
        OneCycleParams,
        "The 1cycle policy: from max_lr / div_factor up to max_lr, then down to "
        "max_lr / div_factor / final_div_factor over total_steps steps (torch's OneCycleLR, lrs "
        "only; after the cycle its last lrs hold).",
    ),
)
