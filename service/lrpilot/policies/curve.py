"""A schedule family as a policy: the lrs as a pure function of the training step.

What every schedule family shares: its params' base (``ScheduleParams``: the run's base lrs bound
by ``resolve``, the curve built once), the param types, the policy over a curve (``Schedule``:
``lrs_at`` is the curve; ``step`` logs what it gives at the observation's step) and its stepper.
Frozen, as ``lrpilot.policies.common`` is: the reasons and states of every released schedule
version are written here. No version owns this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property
from math import sqrt
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from lrpilot.canonical import float_token
from lrpilot.policies import common
from lrpilot.policies.arith import exp, log, sin2_frac
from lrpilot.policies.base import (
    EXTRAS,
    MAX_STEP,
    Extras,
    ExtrasState,
    FieldStepper,
    Frozen,
    Horizon,
    Loc,
    Policy,
    State,
    Stepper,
    check_step,
)
from lrpilot.policies.text import fmt, fmt_change, fmt_lrs

Curve = Callable[[int], tuple[float, ...]]

_INF = math.inf


def times(base: tuple[float, ...], factor: float) -> tuple[float, ...]:
    """Every base lr times factor; a factor beyond the largest double leaves a zero lr zero."""
    if factor == _INF:
        return tuple(_INF if b else 0.0 for b in base)
    return tuple([b * factor for b in base])


# -- params ------------------------------------------------------------------------------------


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

    def declared_horizon(self) -> Horizon | None:
        """The family's horizon (``Policy.horizon``): none unless the family declares one."""
        return None


# -- the policies -----------------------------------------------------------------------------

# torch arguments a schedule does not take, and what to do instead
_NOT_TAKEN = {
    "last_epoch": "a schedule is a function of the step: post the step, not a last_epoch",
    "verbose": "every decision has a reason: there is nothing to print",
    "cycle_momentum": "this version serves lrs only: one_cycle@2 and cyclic@2 cycle the momentum",
    "base_momentum": "this version serves lrs only: one_cycle@2 and cyclic@2 cycle the momentum",
    "max_momentum": "this version serves lrs only: one_cycle@2 and cyclic@2 cycle the momentum",
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
        check_step(step)
        return params.curve(step)

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> Stepper:
        assert isinstance(params, ScheduleParams)
        return ScheduleStepper(self.name, params.curve, state, metric)

    def horizon(self, params: Frozen, state: State) -> Horizon | None:
        assert isinstance(params, ScheduleParams)
        return params.declared_horizon()


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
        change += self._extras_change()
        return (
            f"{self._family} schedule at step {step}: {change} "
            f"({self._metric} {fmt(value)} logged; a schedule does not read it)"
        )

    def state_doc(self) -> dict[str, Any]:
        return {"lrs": [float_token(x) for x in self.lrs]}

    def _extras_change(self) -> str:
        """What the reason says of the extras after the lrs (a schedule of lrs only: nothing)."""
        return ""


# -- more than the lr: momentum and weight decay -------------------------------------------------

ExtrasCurve = Callable[[int], Extras]


class ExtrasParams(ScheduleParams):
    """A family's params when its version may schedule momentum and weight decay too."""

    @cached_property
    def extras_curve(self) -> ExtrasCurve:
        """step -> what the params schedule beside the lrs (only those), built once."""
        if not self._base_lrs:
            raise RuntimeError("schedule params must come from the policy's resolve()")
        return self._extras(len(self._base_lrs))

    def _extras(self, groups: int) -> ExtrasCurve:
        raise NotImplementedError


class ExtrasSchedule(Schedule):
    """A family's version that may schedule momentum and weight decay beside the lrs: its state
    (an ``ExtrasState``) carries them, None when the run's params schedule them not."""

    state_model = ExtrasState
    params_model: type[ExtrasParams]

    def __init__(
        self, name: str, version: int, params_model: type[ExtrasParams], description: str
    ) -> None:
        super().__init__(name, params_model, description)
        self.version = version

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> State:
        assert isinstance(params, ExtrasParams)
        lrs = super().init(params, base_lrs).lrs
        return ExtrasState(lrs=lrs, **params.extras_curve(0))

    def extras_at(self, params: Frozen, state: State, step: int) -> Extras:
        assert isinstance(params, ExtrasParams)
        check_step(step)
        return params.extras_curve(step)

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> Stepper:
        assert isinstance(params, ExtrasParams)
        return ExtrasScheduleStepper(self.name, params.curve, params.extras_curve, state, metric)


def fmt_values(name: str, old: tuple[float, ...] | None, new: tuple[float, ...]) -> str:
    """``momentum 0.95 -> 0.9``, ``weight_decay [0.1, 0.0] held``: an extra in a reason."""

    def text(values: tuple[float, ...]) -> str:
        return fmt(values[0]) if len(values) == 1 else "[" + ", ".join(map(fmt, values)) + "]"

    if old == new:
        return f"{name} {text(new)} held"
    return f"{name} {text(old) if old is not None else 'unset'} -> {text(new)}"


class ExtrasScheduleStepper(ScheduleStepper):
    """A schedule's stepper that moves the extras too, each advance the extras' curve at the
    observation's step; the action is the lrs' (the extras follow the same plan)."""

    __slots__ = ("_extras", "_extras_before", "momentum", "weight_decay")

    state_model = ExtrasState
    momentum: tuple[float, ...] | None
    weight_decay: tuple[float, ...] | None

    def __init__(
        self, family: str, curve: Curve, extras: ExtrasCurve, state: State, metric: str
    ) -> None:
        super().__init__(family, curve, state, metric)
        self._extras = extras
        self._extras_before: tuple[tuple[float, ...] | None, ...] = ()

    def advance(self, step: int, value: float) -> str:
        self._extras_before = (self.momentum, self.weight_decay)
        action = super().advance(step, value)
        now = self._extras(step)
        self.momentum, self.weight_decay = now.get("momentum"), now.get("weight_decay")
        return action

    def _extras_change(self) -> str:
        parts = [
            fmt_values(name, was, now)
            for name, was, now in zip(
                EXTRAS, self._extras_before, (self.momentum, self.weight_decay), strict=True
            )
            if now is not None
        ]
        return "".join(f", {p}" for p in parts)

    def state_doc(self) -> dict[str, Any]:
        doc = super().state_doc()
        doc["momentum"] = None if self.momentum is None else list(self.momentum)
        doc["weight_decay"] = None if self.weight_decay is None else list(self.weight_decay)
        return doc


# Megatron's weight decay ramp (OptimizerParamScheduler.get_wd): its argument names
WdIncrStyle = Literal["constant", "linear", "cosine"]


class WeightDecayRamp(Frozen):
    """Megatron-LM's weight decay ramp from start_wd to end_wd over wd_incr_steps steps
    (OptimizerParamScheduler's get_wd), one value a group; absent (start_wd null): the weight
    decay is not scheduled. A params class of a version that takes it derives from this."""

    start_wd: Annotated[
        PerGroupLr | None,
        Field(
            description="the weight decay at step 0: a number, or one per group (null: the "
            "weight decay is not scheduled)"
        ),
    ] = None
    end_wd: Annotated[
        PerGroupLr | None,
        Field(description="the weight decay from wd_incr_steps on: a number, or one per group"),
    ] = None
    wd_incr_steps: Annotated[
        PositiveSteps | None,
        Field(description="steps from start_wd to end_wd (null: the schedule's own horizon)"),
    ] = None
    wd_incr_style: Annotated[
        WdIncrStyle,
        Field(
            description="constant (start_wd equals end_wd), linear, or cosine: "
            "start + (1 - cos(pi * step / wd_incr_steps)) / 2 * (end - start)"
        ),
    ] = "constant"

    def _wd_check(self, groups: int, horizon: int | None) -> list[tuple[Loc, str]]:
        """The ramp's rules: both ends or neither, one value or one a group, constant only
        between equal ends, and a length (``horizon``: the family's own, None when it has
        none)."""
        if self.start_wd is None or self.end_wd is None:
            given = [
                n for n in ("start_wd", "end_wd", "wd_incr_steps") if getattr(self, n) is not None
            ]
            if not given:
                return []
            return [
                (
                    (given[0],),
                    "start_wd and end_wd schedule the weight decay together: give both (or "
                    "neither, and no wd_incr_steps)",
                )
            ]
        errors = common.group_count_errors(("start_wd",), self.start_wd, groups)
        errors += common.group_count_errors(("end_wd",), self.end_wd, groups)
        if errors:
            return errors
        starts = common.per_group(self.start_wd, groups)
        ends = common.per_group(self.end_wd, groups)
        if self.wd_incr_style == "constant" and starts != ends:
            errors.append(
                (
                    ("wd_incr_style",),
                    "wd_incr_style constant keeps the weight decay at end_wd: start_wd must "
                    "equal it (Megatron asserts so); use linear or cosine for a ramp",
                )
            )
        if self.wd_incr_steps is None and horizon is None:
            errors.append((("wd_incr_steps",), "required with start_wd: this schedule has no end"))
        return errors

    def _wd_curve(
        self, groups: int, horizon: int | None
    ) -> Callable[[int], tuple[float, ...]] | None:
        """step -> the weight decay of every group, as Megatron's get_wd computes it at
        num_steps = step: end_wd past wd_incr_steps, else start + coeff * (end - start) with
        coeff the fraction done (linear) or (1 - cos(pi * fraction)) / 2 (cosine, as
        sin(pi * fraction / 2) ** 2 from the deterministic kernels)."""
        if self.start_wd is None or self.end_wd is None:
            return None
        starts = common.per_group(self.start_wd, groups)
        ends = common.per_group(self.end_wd, groups)
        steps = self.wd_incr_steps if self.wd_incr_steps is not None else horizon
        assert steps is not None  # _wd_check
        if self.wd_incr_style == "constant":
            return lambda step: ends
        deltas = tuple([e - s for s, e in zip(starts, ends, strict=True)])
        cosine = self.wd_incr_style == "cosine"

        def wd(step: int) -> tuple[float, ...]:
            if step > steps:
                return ends
            ratio = float(step) / float(steps)
            coeff = sin2_frac(ratio) if cosine else ratio
            return tuple([s + coeff * d for s, d in zip(starts, deltas, strict=True)])

        return wd


# -- warmups ------------------------------------------------------------------------------------

WarmupType = Literal["linear", "cosine", "1-sqrt", "exponential"]


def warmup_ramp(kind: str, low: float) -> Callable[[float], float]:
    """p in [0, 1) (the fraction of the warmup done) -> the factor on the base lrs, from ``low``
    to 1: linear (p), cosine ((1 - cos(pi p)) / 2) and 1-sqrt (1 - sqrt(1 - p)) mapped as
    transformers' get_wsd_schedule maps them, ``max(0.0, shape * (1.0 - low) + low)``; or
    exponential, ``low ** (1 - p)``: geometrically (``low`` > 0)."""
    keep = 1.0 - low
    if kind == "exponential":
        log_low = log(low)
        return lambda p: exp((1.0 - p) * log_low)
    if kind == "linear":
        return lambda p: max(0.0, p * keep + low)
    if kind == "cosine":
        return lambda p: max(0.0, sin2_frac(p) * keep + low)
    return lambda p: max(0.0, (1.0 - sqrt(1.0 - p)) * keep + low)
