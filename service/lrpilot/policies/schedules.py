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
they use only IEEE double arithmetic (+ - * /, correctly rounded everywhere), exact operations
(integer arithmetic, frexp, ldexp) and decimal multiplication (correctly rounded by its
specification): no libm. The C library's cos, exp, log and pow are not correctly rounded and
differ between platforms (and between CPUs with and without FMA), so the few transcendental
functions a schedule needs are below in pure Python: fdlibm's kernels (the polynomials of
FreeBSD's msun, < 1 ulp); the powers gamma ** n of the decaying families come from tables worked
out in 40-digit decimal (a few ulps at any n, where squaring in doubles would lose ~n ulps).

Where torch divides by zero, lrpilot refuses the params; where torch is undefined (OneCycleLR
past ``total_steps``), lrpilot holds the last lrs of the cycle. Every such choice is written at
its family below.

Each schedule keeps the run's base lrs with its resolved params (``resolve`` binds them; they are
not a param): the state, like every policy's, carries only the lrs of the last decision, and
``lrs_at`` does not read it.
"""

from __future__ import annotations

import decimal
import math
from bisect import bisect_right
from collections.abc import Callable
from decimal import Decimal
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from lrpilot.canonical import float_token
from lrpilot.policies import common
from lrpilot.policies.base import MAX_STEP, FieldStepper, Frozen, Loc, Policy, State
from lrpilot.policies.text import fmt, fmt_change, fmt_lrs

Curve = Callable[[int], tuple[float, ...]]

_INF = math.inf
_frexp, _ldexp, _floor = math.frexp, math.ldexp, math.floor

# -- deterministic arithmetic -----------------------------------------------------------------
# Only + - * / (IEEE: correctly rounded, the same bits on every machine) and exact operations.
# The constants are fdlibm's (FreeBSD msun k_cos.c, k_sin.c, e_exp.c, e_log.c), bit for bit.

_C1 = float.fromhex("0x1.555555555554cp-5")
_C2 = float.fromhex("-0x1.6c16c16c15177p-10")
_C3 = float.fromhex("0x1.a01a019cb1590p-16")
_C4 = float.fromhex("-0x1.27e4f809c52adp-22")
_C5 = float.fromhex("0x1.1ee9ebdb4b1c4p-29")
_C6 = float.fromhex("-0x1.8fae9be8838d4p-37")
_S1 = float.fromhex("-0x1.5555555555549p-3")
_S2 = float.fromhex("0x1.111111110f8a6p-7")
_S3 = float.fromhex("-0x1.a01a019c161d5p-13")
_S4 = float.fromhex("0x1.71de357b1fe7dp-19")
_S5 = float.fromhex("-0x1.ae5e68a2b9cebp-26")
_S6 = float.fromhex("0x1.5d93a5acfd57cp-33")
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # 32 trailing zero bits: k * _LN2_HI is exact
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_INV_LN2 = float.fromhex("0x1.71547652b82fep+0")
_P1 = float.fromhex("0x1.555555555553ep-3")
_P2 = float.fromhex("-0x1.6c16c16bebd93p-9")
_P3 = float.fromhex("0x1.1566aaf25de2cp-14")
_P4 = float.fromhex("-0x1.bbd41c5d26bf1p-20")
_P5 = float.fromhex("0x1.6376972bea4d0p-25")
_LG1 = float.fromhex("0x1.5555555555593p-1")
_LG2 = float.fromhex("0x1.999999997fa04p-2")
_LG3 = float.fromhex("0x1.2492494229359p-2")
_LG4 = float.fromhex("0x1.c71c51d8e78afp-3")
_LG5 = float.fromhex("0x1.7466496cb03dep-3")
_LG6 = float.fromhex("0x1.39a09d078c69fp-3")
_LG7 = float.fromhex("0x1.2f112df3e5244p-3")
_HALF_PI = float.fromhex("0x1.921fb54442d18p+0")  # math.pi / 2, exactly
_SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")


def _kcos(x: float) -> float:
    """cos(x) for |x| <= pi/4 (fdlibm's __kernel_cos, FreeBSD's form; < 1 ulp)."""
    z = x * x
    w = z * z
    r = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + z * r)


def _ksin(x: float) -> float:
    """sin(x) for |x| <= pi/4 (fdlibm's __kernel_sin; < 1 ulp)."""
    z = x * x
    w = z * z
    r = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    return x + z * x * (_S1 + z * r)


def _cos2_ratio(a: int, b: int) -> float:
    """cos(pi * a / (2 * b)) ** 2 for integers 0 <= a <= b, b >= 1: the reduction is exact
    (integers), the angle a correctly rounded ratio times pi/2, at most pi/4."""
    # cos(t) = sin(pi/2 - t) above pi/4
    c = _kcos(a / b * _HALF_PI) if a + a <= b else _ksin((b - a) / b * _HALF_PI)
    return c * c


def _cos2_frac(p: float) -> float:
    """cos(pi * p / 2) ** 2 for 0 <= p <= 1 (1 - p is exact for p >= 0.5)."""
    c = _kcos(p * _HALF_PI) if p <= 0.5 else _ksin((1.0 - p) * _HALF_PI)
    return c * c


def _log(x: float) -> float:
    """The natural logarithm of a positive finite x (fdlibm's e_log.c; < 1 ulp)."""
    m, e = _frexp(x)
    if m < _SQRT_HALF:  # m in [sqrt(1/2), sqrt(2)): f = m - 1 is exact
        m += m
        e -= 1
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    k = float(e)
    return k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)


def _exp(y: float) -> float:
    """e ** y (fdlibm's e_exp.c; < 1 ulp), 0.0 below the smallest subnormal, inf above the
    largest double."""
    if y < -746.0:
        return 0.0
    if y > 710.0:
        return _INF
    k = int(y * _INV_LN2 + (0.5 if y > 0.0 else -0.5))
    hi = y - k * _LN2_HI
    lo = k * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    m = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    try:
        return _ldexp(m, k)
    except OverflowError:
        return _INF


def _ipow(x: float, n: int) -> float:
    """x ** n for an integer n >= 0, by squaring (overflow gives inf, underflow 0.0)."""
    result = 1.0
    while n:
        if n & 1:
            result *= x
        n >>= 1
        if n:
            x *= x
    return result


# 40 significant digits, no exponent limit a power can reach, no traps: decimal's multiplication
# is correctly rounded by its specification, so a product is the same digits everywhere.
_DECIMAL = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])


def _decimal_ipow(x: Decimal, n: int) -> float:
    """x ** n for an integer n >= 0, by squaring in 40-digit decimal, rounded once to a double
    (beyond the largest double: inf; below the smallest: 0.0)."""
    result = Decimal(1)
    while n:
        if n & 1:
            result = _DECIMAL.multiply(result, x)
        n >>= 1
        if n:
            x = _DECIMAL.multiply(x, x)
    return float(result)


def _powers(g: float) -> Callable[[int], float]:
    """n -> g ** n for integers n >= 0, within a few ulps: below 2**30 a product of up to five
    tabled powers g ** (i * 64 ** level), i < 64, each worked out in 40-digit decimal and
    rounded once to a double (a product that needs fewer tables multiplies by no 1.0: the same
    bits either way); from 2**30 on, a decimal power by squaring."""
    if g == 1.0:
        return lambda n: 1.0
    exact = Decimal(g)
    tables: list[list[float]] = []
    unit = exact
    for _level in range(5):
        row, x = [], Decimal(1)
        for _ in range(64):
            row.append(float(x))
            x = _DECIMAL.multiply(x, unit)
        tables.append(row)
        unit = x  # g ** (64 ** (_level + 1))
    t0, t1, t2, t3, t4 = tables

    def power(n: int) -> float:
        if n < 4096:
            return t1[n >> 6] * t0[n & 63]
        if n < 1073741824:
            high = t4[n >> 24] * t3[(n >> 18) & 63] * t2[(n >> 12) & 63]
            return high * t1[(n >> 6) & 63] * t0[n & 63]
        return _decimal_ipow(exact, n)

    return power


def _pow01(x: float, p: float) -> float:
    """x ** p for 0 < x <= 1 and p >= 0: by squaring for an integer p, else exp(p * log x)."""
    if p.is_integer() and p <= 64.0:
        return _ipow(x, int(p))
    return _exp(p * _log(x))


def _times(base: tuple[float, ...], factor: float) -> tuple[float, ...]:
    """Every base lr times factor; a factor beyond the largest double leaves a zero lr zero."""
    if factor == _INF:
        return tuple(_INF if b else 0.0 for b in base)
    return tuple([b * factor for b in base])


# -- params ---------------------------------------------------------------------------------


def _lr_or_lrs(v: Any) -> Any:
    """A finite number >= 0 or a non-empty list of them (strict: no bool, no string)."""

    def ok(x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return False
        try:
            return math.isfinite(x) and x >= 0.0
        except OverflowError:  # an int beyond the largest double
            return False

    if isinstance(v, list):
        if not v or len(v) > 1024 or not all(ok(x) for x in v):
            raise PydanticCustomError(
                "lrs", "must be a finite number >= 0, or a list of them (one per param group)"
            )
        return [float(x) for x in v]
    if not ok(v):
        raise PydanticCustomError(
            "lrs", "must be a finite number >= 0, or a list of them (one per param group)"
        )
    return float(v)


Steps = Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]
PositiveSteps = Annotated[StrictInt, Field(ge=1, le=MAX_STEP)]
Gamma = Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)]
MinLr = Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)]
PerGroupLr = Annotated[
    MinLr | Annotated[list[MinLr], Field(min_length=1, max_length=1024)],
    BeforeValidator(_lr_or_lrs),
]


class ScheduleParams(Frozen):
    """A family's params. ``resolve`` binds the run's base lrs (not a param: not dumped)."""

    _base_lrs: tuple[float, ...] = PrivateAttr(default=())

    @cached_property
    def curve(self) -> Curve:
        """step -> lrs, built once from the params and the bound base lrs."""
        if not self._base_lrs:
            raise RuntimeError("schedule params must come from the policy's resolve()")
        return self._curve(self._base_lrs)

    def _curve(self, base: tuple[float, ...]) -> Curve:
        raise NotImplementedError

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        """Rules across fields or against the number of param groups."""
        return []


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
        size, power = self.step_size, _powers(self.gamma)
        return lambda step: _times(base, power(step // size))


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
        power = _powers(self.gamma)
        # Each level on first use, and only the recent ones kept: 10,000 milestones of 1,024
        # param groups held at once would be ten million floats, from one PUT.
        level = lru_cache(maxsize=64)(lambda n: _times(base, power(n)))
        return lambda step: level(bisect_right(marks, step))


class ExponentialParams(ScheduleParams):
    """torch.optim.lr_scheduler.ExponentialLR's arguments, names and defaults."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"gamma": 0.999}]})

    gamma: Annotated[Gamma, Field(description="the lrs are base lrs times gamma**step")]

    def _curve(self, base: tuple[float, ...]) -> Curve:
        power = _powers(self.gamma)
        return lambda step: _times(base, power(step))


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

    def _curve(self, base: tuple[float, ...]) -> Curve:
        t, eta = self.T_max, self.eta_min
        period = t + t
        spans = tuple([b - eta for b in base])

        def curve(step: int) -> tuple[float, ...]:
            # eta + (base - eta) * (1 + cos(pi * step / T)) / 2, as cos(pi * a / (2 T)) ** 2
            a = step % period
            if a > t:
                a = period - a
            c2 = _cos2_ratio(a, t)
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

    def _curve(self, base: tuple[float, ...]) -> Curve:
        total, power = self.total_iters, self.power
        if total == 0:  # torch's PolynomialLR.step() holds the base lrs
            return lambda step: base
        end = base if power == 0.0 else tuple(0.0 for _ in base)

        def curve(step: int) -> tuple[float, ...]:
            if step >= total:
                return end
            return _times(base, _pow01((total - step) / total, power))

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
                c2 = _cos2_ratio(step % t0, t0)
                return tuple([eta + d * c2 for d in spans])

            return same_cycles
        starts, lengths = [0], [t0]  # cycle n runs from starts[n] for lengths[n] steps
        while starts[-1] <= MAX_STEP:
            starts.append(starts[-1] + lengths[-1])
            lengths.append(lengths[-1] * mult)

        def growing_cycles(step: int) -> tuple[float, ...]:
            n = bisect_right(starts, step) - 1
            c2 = _cos2_ratio(step - starts[n], lengths[n])
            return tuple([eta + d * c2 for d in spans])

        return growing_cycles


class CyclicParams(ScheduleParams):
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

    def _curve(self, base: tuple[float, ...]) -> Curve:
        lows = common.per_group(self.base_lr, len(base))
        highs = common.per_group(self.max_lr, len(base))
        spans = tuple([m - b for b, m in zip(lows, highs, strict=True)])
        up = self.step_size_up
        down = self.step_size_down if self.step_size_down is not None else up
        total = up + down
        mode = self.mode
        power = _powers(self.gamma)

        def curve(step: int) -> tuple[float, ...]:
            # torch's get_lr with the cycle and the place in it as integers: torch's cycle
            # floor(1 + step / total) is cycle + 1, its x (the fraction of the cycle done) is
            # r / total, and its factor x / step_ratio (rising) or (x - 1) / (step_ratio - 1)
            # (falling) is r / up or (total - r) / down: one rounding, exact at any step
            cycle, r = divmod(step, total)
            f = r / up if r <= up else (total - r) / down
            if mode == "triangular":
                scale = 1.0
            elif mode == "triangular2":
                scale = _ldexp(1.0, -cycle)  # torch's 1 / 2.0 ** (cycle - 1), exactly
            else:
                scale = power(step)
            return tuple([b + (d * f) * scale for b, d in zip(lows, spans, strict=True)])

        return curve


class OneCycleParams(ScheduleParams):
    """torch.optim.lr_scheduler.OneCycleLR's arguments, names and defaults (lrs only: no
    momentum cycling; total_steps, not epochs and steps_per_epoch). As in torch, the lrs start
    at max_lr / div_factor whatever the run's base lrs (which give the number of groups)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"max_lr": 0.1, "total_steps": 10000}]}
    )

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

    def _phases(self) -> list[tuple[float, str, str]]:
        """torch's _schedule_phases: (end_step, start lr, end lr), in its arithmetic."""
        t, pct = self.total_steps, self.pct_start
        if self.three_phase:
            return [
                (float(pct * t) - 1, "initial", "max"),
                (float(2 * pct * t) - 2, "max", "initial"),
                (t - 1, "initial", "min"),
            ]
        return [(float(pct * t) - 1, "initial", "max"), (t - 1, "max", "min")]

    def _curve(self, base: tuple[float, ...]) -> Curve:
        tops = common.per_group(self.max_lr, len(base))
        initial = tuple([m / self.div_factor for m in tops])
        levels = {
            "initial": initial,
            "max": tops,
            "min": tuple([i / self.final_div_factor for i in initial]),
        }
        phases: list[tuple[float, float, float, tuple[float, ...], tuple[float, ...]]] = []
        start = 0.0
        for end, first, last in self._phases():
            phases.append((end, start, end - start, levels[first], levels[last]))
            start = end
        final = len(phases) - 1
        cos = self.anneal_strategy == "cos"
        t = self.total_steps

        def at(step: int) -> tuple[float, ...]:
            # torch's get_lr, in its order: the first phase whose end_step is not passed
            for i, (end, begin, length, firsts, lasts) in enumerate(phases):
                if step <= end or i == final:
                    pct = (step - begin) / length
                    if cos:  # torch: end + (start - end) / 2 * (cos(pi * pct) + 1)
                        c2 = _cos2_frac(pct)
                        return tuple([b + (a - b) * c2 for a, b in zip(firsts, lasts, strict=True)])
                    return tuple([(b - a) * pct + a for a, b in zip(firsts, lasts, strict=True)])
            raise AssertionError("unreachable: the last phase takes every step")

        # torch raises past total_steps and, at total_steps, extrapolates the last phase (with
        # anneal_strategy linear, below min lr, even below 0): the cycle's last lrs hold instead
        held = at(t - 1)
        return lambda step: at(step) if step < t - 1 else held


# -- the policies -----------------------------------------------------------------------------

# torch arguments a schedule does not take, and what to do instead
_NOT_TAKEN = {
    "last_epoch": "a schedule is a function of the step: post the step, not a last_epoch",
    "verbose": "every decision has a reason: there is nothing to print",
    "cycle_momentum": "lrpilot serves lrs only: momentum is not cycled",
    "base_momentum": "lrpilot serves lrs only: momentum is not cycled",
    "max_momentum": "lrpilot serves lrs only: momentum is not cycled",
    "scale_fn": "a custom scale_fn is code, not a param: use mode",
    "scale_mode": "scale_mode follows mode (cycle for triangular*, iterations for exp_range)",
    "epochs": "give total_steps (epochs * steps_per_epoch)",
    "steps_per_epoch": "give total_steps (epochs * steps_per_epoch)",
    "initial_learning_rate": "the run's base_lrs are the initial learning rates",
}


class Schedule(Policy):
    """A family as a released policy: ``lrs_at`` is the family's curve; ``step`` logs what it
    gives at the observation's step (hold, warmup when an lr rose, decay when they fell)."""

    version = 1
    actions = ("hold", "warmup", "decay")
    open_loop = True
    params_model: type[ScheduleParams]

    def __init__(self, name: str, params_model: type[ScheduleParams], description: str) -> None:
        self.name, self.params_model, self.description = name, params_model, description

    def validation_errors(self, exc: ValidationError) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            where = ".".join(map(str, loc)) or "params"
            if e["type"] == "missing":
                out.append((loc, f"{where}: required"))
            elif e["type"] == "extra_forbidden" and loc and loc[0] in _NOT_TAKEN:
                out.append((loc, f"{where}: not a param here: {_NOT_TAKEN[str(loc[0])]}"))
            else:
                got = repr(e.get("input"))
                got = got if len(got) <= 80 else got[:77] + "..."
                out.append((loc, f"{where}: {e['msg']} (got {got})"))
        return out

    def check(self, params: ScheduleParams, base_lrs: tuple[float, ...]) -> list[tuple[Loc, str]]:
        return params._check(len(base_lrs))

    def resolve_params(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> ScheduleParams:
        resolved = super().resolve_params(params, base_lrs)
        assert isinstance(resolved, ScheduleParams)
        resolved._base_lrs = tuple(base_lrs)
        return resolved

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> State:
        assert isinstance(params, ScheduleParams)
        if tuple(base_lrs) != params._base_lrs:
            raise ValueError(
                f"params were resolved for base_lrs {list(params._base_lrs)}, not {list(base_lrs)}"
            )
        return State(lrs=params.curve(0))

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(params, ScheduleParams)
        if step < 0:
            raise ValueError(f"steps start at 0, got {step}")
        return params.curve(step)

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> ScheduleStepper:
        assert isinstance(params, ScheduleParams)
        return ScheduleStepper(self.name, params.curve, state, metric)


class ScheduleStepper(FieldStepper):
    """A schedule's state (its lrs) as plain attributes: each advance is the curve at the
    observation's step; the value is logged, never read. A schedule's decay is planned, not a
    reduction: ``reduced`` stays False."""

    __slots__ = ("_curve", "_family")

    state_model = State
    # (the lrs before, step, value) of the last advance: what reason() needs
    _last: tuple[tuple[float, ...], int, float] | None

    def __init__(self, family: str, curve: Curve, state: State, metric: str) -> None:
        super().__init__(state, metric)
        self._family = family
        self._curve = curve

    def advance(self, step: int, value: float) -> str:
        before = self.lrs
        lrs = self._curve(step)
        if lrs == before:
            action = "hold"  # and the lrs stay the very tuple they were
        else:
            self.lrs = lrs
            action = "warmup" if any(a > b for a, b in zip(lrs, before, strict=True)) else "decay"
        self._last = (before, step, value)
        self.action = action
        return action

    def reason(self) -> str:
        before, step, value = self._advanced()
        change = (
            f"{fmt_lrs(self.lrs)} held" if self.action == "hold" else fmt_change(before, self.lrs)
        )
        return (
            f"{self._family} schedule at step {step}: {change} "
            f"({self._metric} {fmt(value)} logged; a schedule does not read it)"
        )

    def state_doc(self) -> dict[str, Any]:
        return {"lrs": [float_token(x) for x in self.lrs]}


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
