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
from lrpilot.policies.arith import exp, log, sin2_frac
from lrpilot.policies.base import (
    MAX_STEP,
    FieldStepper,
    Frozen,
    Horizon,
    Loc,
    Policy,
    State,
    Stepper,
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
        return (
            f"{self._family} schedule at step {step}: {change} "
            f"({self._metric} {fmt(value)} logged; a schedule does not read it)"
        )

    def state_doc(self) -> dict[str, Any]:
        return {"lrs": [float_token(x) for x in self.lrs]}


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
