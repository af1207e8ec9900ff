"""``range_test@1``: the learning-rate range test (Leslie Smith, "Cyclical Learning Rates for
Training Neural Networks", 2017; fastai's ``lr_find``).

The job trains with an lr that rises from ``min_lr`` to ``max_lr`` over ``num_steps`` training
steps and posts its *training* loss every step. The policy smooths the loss, stops the test
(action "stop") once the smoothed loss diverges or the ramp has reached ``max_lr``, and
suggests an lr: the one at the steepest descent of the smoothed loss against ln(lr), and the
one at the lowest smoothed loss divided by 10.

**The ramp** (a pure function of the training step ``s``; ``t = s / (num_steps - 1)`` clamped
to [0, 1]):

* ``exp`` (default): ``lr = min_lr * exp(t * ln(max_lr / min_lr))``, equal ratios a step;
* ``linear``: ``lr = min_lr + (max_lr - min_lr) * t``.

Step 0 gives ``min_lr`` and step ``num_steps - 1`` gives ``max_lr``, both exactly; every later
step gives ``max_lr``. ``exp`` and ``ln`` are worked out in decimal arithmetic at 40 digits
(Python's ``decimal``: correctly rounded, the same on every machine, where libm's exp, log and
pow are not specified to the last bit), then rounded to a float once.

**base_lrs** give the number of param groups; their values are not used: the lrs are
``min_lr``..``max_lr`` (one value for every group, or one per group).

**A decision** is one posted training loss, at step ``s``, trained with ``lr(s)``. A decision's
lrs are the lrs in force at its step, ``lrs_at(s)``, as for every policy: the lr the loss was
measured with (a job reads the lr of each step it trains with ``GET lr?step=N``; the reason
names the next step's lr too).

1. After a stop, every observation answers "stop" again and changes nothing.
2. A loss that is not finite (NaN, +inf, -inf) is divergence: "stop".
3. Else the loss is smoothed as fastai and Smith do, an exponential moving average with bias
   correction: ``avg = smoothing * avg + (1 - smoothing) * loss`` (avg starts at 0) and
   ``smoothed = avg / (1 - smoothing**k)``, k the number of losses smoothed so far, this one
   included (``smoothing**k`` is kept as a running product). A smoothed loss that overflows is
   divergence: "stop".
4. ``best`` is the lowest smoothed loss so far, this one included. The loss has diverged when
   ``smoothed > diverge_factor * best`` (for ``best > 0``, fastai's rule; for ``best <= 0``,
   ``smoothed > best + (diverge_factor - 1) * |best|``, the same distance above best): "stop".
5. Else, at the ramp's last step or later (``s >= num_steps - 1``: the loss at ``max_lr`` is
   in): "stop". Else "warmup": the ramp goes on.

After a stop at step ``S``, ``lrs_at(step)`` holds the lrs of step ``S`` (the lr at the stop)
for every step from ``S`` on.

**The suggestion.** The smoothed losses are numbered 0, 1, 2, ... in the order they come. The
slope between smoothed losses k - 1 and k is ``(smoothed_k - smoothed_(k-1)) /
(ln lr_k - ln lr_(k-1))``, lr being the first param group's; it is taken only once
``k - 1 >= skip_start`` (the first smoothed losses average few losses and are noisy) and
when ln lr grew. The steepest descent is the most negative slope (the first, on a tie), and
the suggested lrs are those of its earlier point (as fastai's ``steep`` does); none when no
slope was negative. The min-loss suggestion is the lrs at ``best`` (the lowest smoothed loss,
every one counted), divided by 10. Both are set in the stop decision's state
(``suggested_lrs``, ``min_loss_lrs_div_10``, one per param group), so they are hashed and
stored, and the run's summary reports them.

State is O(1): the EMA, the last smoothed point (its step, ln lr and smoothed loss), ``best``
and its step, the steepest slope so far and its step.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictFloat, StrictInt

from lrpilot.canonical import float_token
from lrpilot.policies import common
from lrpilot.policies.base import MAX_STEP, FieldStepper, Frozen, Loc, Policy, State
from lrpilot.policies.text import fmt, fmt_lrs


class RangeTestParams(Frozen):
    """The LR range test: the lrs rise from min_lr to max_lr over num_steps training steps
    (steps 0 .. num_steps - 1). base_lrs give the number of param groups only: their values
    are not used, the lrs are min_lr..max_lr (one value for every group, or one per group)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"min_lr": 1e-7, "max_lr": 10.0, "num_steps": 100},
                {
                    "min_lr": 1e-4,
                    "max_lr": 1.0,
                    "num_steps": 300,
                    "mode": "linear",
                    "smoothing": 0.9,
                },
            ]
        }
    )

    min_lr: common.Lr = Field(default=1e-7, description="the lr at step 0 (> 0)")
    max_lr: common.Lr = Field(default=10.0, description="the lr at step num_steps - 1 (> min_lr)")
    num_steps: Annotated[StrictInt, Field(ge=2, le=MAX_STEP)] = Field(
        default=100, description="training steps of the ramp, >= 2"
    )
    mode: Literal["exp", "linear"] = Field(
        default="exp", description="exp: equal ratios a step; linear: equal differences"
    )
    smoothing: Annotated[StrictFloat, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        default=0.98, description="the EMA's beta, in [0, 1), with bias correction (0: none)"
    )
    diverge_factor: Annotated[StrictFloat, Field(gt=1.0, allow_inf_nan=False)] = Field(
        default=4.0, description="stop once smoothed loss > diverge_factor * best so far"
    )
    skip_start: Annotated[StrictInt, Field(ge=0, le=MAX_STEP)] = Field(
        default=10,
        description="smoothed losses whose slope is not considered for the suggestion "
        "(<= num_steps - 2)",
    )


class RangeTestState(State):
    # The defaults are a fresh test's: init() names only its lrs.
    stop_step: int | None = None  # the step of the stop decision; None while ramping
    evaluations: int = 0  # finite losses smoothed so far
    avg: float = 0.0  # the EMA before bias correction
    beta_power: float = 1.0  # smoothing ** evaluations, as a running product
    smoothed: float | None = None  # the last smoothed loss
    log_lr: float | None = None  # ln of the first group's lr at the last smoothed loss
    last_step: int | None = None  # the step of the last smoothed loss
    best: float | None = None  # the lowest smoothed loss so far
    best_step: int | None = None
    steepest_slope: float | None = None  # the most negative slope so far (per unit ln lr)
    steepest_step: int | None = None  # the step of the slope's earlier point
    suggested_lrs: tuple[float, ...] | None = None  # set at the stop
    min_loss_lrs_div_10: tuple[float, ...] | None = None  # set at the stop


# -- the ramp ----------------------------------------------------------------------------------

# decimal arithmetic with its own context (never the thread's, which a caller may change)
_CTX = Context(
    prec=40,
    rounding=ROUND_HALF_EVEN,
    Emax=999_999,
    Emin=-999_999,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)


class Ramp:
    """The lrs of a range test at each training step, for ``n`` param groups."""

    __slots__ = ("_exp", "_group", "_last", "_ln_ratios", "_min_d", "maxs", "mins")

    def __init__(
        self, mins: tuple[float, ...], maxs: tuple[float, ...], num_steps: int, mode: str
    ) -> None:
        self.mins = mins
        self.maxs = maxs
        self._last = num_steps - 1  # the ramp's last step: max_lr
        self._exp = mode == "exp"
        # groups with the same (min, max) share one computation a step (the usual case: many
        # groups, one range): the same decimal operations, so the same floats
        distinct = list(dict.fromkeys(zip(mins, maxs, strict=True)))
        self._group = tuple(distinct.index(pair) for pair in zip(mins, maxs, strict=True))
        self._min_d = tuple(Decimal(lo) for lo, _ in distinct)
        self._ln_ratios = tuple(
            _CTX.ln(_CTX.divide(Decimal(hi), lo))
            for lo, (_, hi) in zip(self._min_d, distinct, strict=True)
        )

    def lrs(self, step: int) -> tuple[float, ...]:
        if step <= 0:
            return self.mins
        if step >= self._last:
            return self.maxs
        if self._exp:
            t = _CTX.divide(step, self._last)
            values = [
                float(_CTX.multiply(lo, _CTX.exp(_CTX.multiply(t, ln_ratio))))
                for lo, ln_ratio in zip(self._min_d, self._ln_ratios, strict=True)
            ]
            return tuple(values[g] for g in self._group)
        f = step / self._last
        return tuple(lo + (hi - lo) * f for lo, hi in zip(self.mins, self.maxs, strict=True))


@lru_cache(maxsize=1024)
def _ramp_of(mins: tuple[float, ...], maxs: tuple[float, ...], num_steps: int, mode: str) -> Ramp:
    return Ramp(mins, maxs, num_steps, mode)


def ramp(p: RangeTestParams, groups: int) -> Ramp:
    """The ramp of resolved params ``p`` for ``groups`` param groups (built once a process)."""
    return _ramp_of(
        common.per_group(p.min_lr, groups), common.per_group(p.max_lr, groups), p.num_steps, p.mode
    )


def ln(x: float) -> float:
    """ln(x) for x > 0, in decimal arithmetic, rounded to a float once."""
    return float(_CTX.ln(Decimal(x)))


# -- the policy ----------------------------------------------------------------------------------


class RangeTest(Policy):
    name = "range_test"
    version = 1
    description = (
        "Leslie Smith's LR range test: the lr rises from min_lr to max_lr over num_steps "
        "training steps (mode exp or linear) while the job posts its training loss every step; "
        "the test stops (action 'stop') once the smoothed loss exceeds diverge_factor x its "
        "best, a loss is not finite, or the ramp reached max_lr. The stop decision's state "
        "holds the suggested lrs (steepest descent of the smoothed loss against ln(lr)) and "
        "the min-loss lrs / 10. base_lrs give the number of param groups only."
    )
    actions = ("warmup", "stop")
    # a stop ends the ramp: the lrs after the next evaluation are not certain in advance
    open_loop = False
    # its ramp counts training steps from 0: in a sequence it can only be the first phase
    from_step_zero = True
    params_model = RangeTestParams
    state_model = RangeTestState

    def check(self, params: RangeTestParams, base_lrs: tuple[float, ...]) -> list[tuple[Loc, str]]:
        return _check(params, len(base_lrs))

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> RangeTestState:
        assert isinstance(params, RangeTestParams)
        return RangeTestState(lrs=ramp(params, len(base_lrs)).lrs(0))

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        """The ramp at ``step``; from a stop on, the lrs at the stop."""
        assert isinstance(params, RangeTestParams) and isinstance(state, RangeTestState)
        if state.stop_step is not None and step >= state.stop_step:
            return state.lrs
        return ramp(params, len(state.lrs)).lrs(step)

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> RangeTestStepper:
        assert isinstance(params, RangeTestParams) and isinstance(state, RangeTestState)
        return RangeTestStepper(params, state, metric)

    def summary_fields(self, params: Frozen, state: State) -> dict[str, Any]:
        """The suggested lrs, from the state in force (the stop decision's, or so far)."""
        return {"range_test": run_summary(params, state)}


def suggestion(
    params: RangeTestParams, state: RangeTestState
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(suggested lrs, min-loss lrs / 10) from the smoothed losses so far: what the stop
    decision sets, and what a run's summary reports before a stop."""
    if state.stop_step is not None:
        return state.suggested_lrs, state.min_loss_lrs_div_10
    r = ramp(params, len(state.lrs))
    return _suggest(r, state.steepest_step, state.best_step)


def _suggest(
    r: Ramp, steepest_step: int | None, best_step: int | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    steep = r.lrs(steepest_step) if steepest_step is not None else None
    low = tuple(x / 10.0 for x in r.lrs(best_step)) if best_step is not None else None
    return steep, low


def _check(p: RangeTestParams, n: int) -> list[tuple[Loc, str]]:
    """The rules across params and against the number of param groups ``n``."""
    errors = common.group_count_errors(("min_lr",), p.min_lr, n)
    errors += common.group_count_errors(("max_lr",), p.max_lr, n)
    if not errors:
        mins, maxs = common.per_group(p.min_lr, n), common.per_group(p.max_lr, n)
        for i, (lo, hi) in enumerate(zip(mins, maxs, strict=True)):
            if lo >= hi:
                where = f" (param group {i})" if n > 1 else ""
                errors.append(
                    (
                        ("max_lr",),
                        f"max_lr must be above min_lr{where}: min_lr {lo!r} >= max_lr {hi!r}",
                    )
                )
                break
    if p.skip_start > p.num_steps - 2:
        errors.append(
            (
                ("skip_start",),
                f"skip_start {p.skip_start} leaves no slope to take: a slope is taken between "
                f"smoothed losses skip_start and skip_start + 1 at the earliest, so skip_start "
                f"must be <= num_steps - 2 = {p.num_steps - 2}",
            )
        )
    return errors


# -- the stepper ---------------------------------------------------------------------------------

_WARMUP, _DIVERGED, _NOT_FINITE, _OVERFLOW, _DONE, _AFTER = range(6)


def _values(xs: tuple[float, ...]) -> str:
    return fmt(xs[0]) if len(xs) == 1 else "[" + ", ".join(fmt(x) for x in xs) + "]"


class RangeTestStepper(FieldStepper):
    """range_test@1's rule over plain attributes (see the module's docstring)."""

    __slots__ = (
        "_beta",
        "_factor",
        "_p",
        "_ramp",
        "_skip",
        "_stop_at",
        "avg",
        "best",
        "best_step",
        "beta_power",
        "evaluations",
        "last_step",
        "log_lr",
        "min_loss_lrs_div_10",
        "smoothed",
        "steepest_slope",
        "steepest_step",
        "stop_step",
        "suggested_lrs",
    )

    state_model = RangeTestState

    stop_step: int | None
    evaluations: int
    avg: float
    beta_power: float
    smoothed: float | None
    log_lr: float | None
    last_step: int | None
    best: float | None
    best_step: int | None
    steepest_slope: float | None
    steepest_step: int | None
    suggested_lrs: tuple[float, ...] | None
    min_loss_lrs_div_10: tuple[float, ...] | None
    # (what happened, step, value, smoothed, limit): what reason() needs
    _last: tuple[int, int, float, float, float] | None

    def __init__(self, p: RangeTestParams, s: RangeTestState, metric: str) -> None:
        super().__init__(s, metric)
        self._p = p
        self._ramp = ramp(p, len(s.lrs))
        self._beta = p.smoothing
        self._factor = p.diverge_factor
        self._skip = p.skip_start
        self._stop_at = p.num_steps - 1

    def advance(self, step: int, value: float) -> str:
        if self.stop_step is not None:
            self._last = (_AFTER, step, value, math.nan, math.nan)
            self.action = "stop"
            return "stop"
        lrs = self._ramp.lrs(step)
        self.lrs = lrs
        smoothed = limit = math.nan
        if not math.isfinite(value):
            what = _NOT_FINITE
        else:
            beta = self._beta
            avg = beta * self.avg + (1.0 - beta) * value
            power = self.beta_power * beta
            smoothed = avg / (1.0 - power)
            if not math.isfinite(smoothed):
                what = _OVERFLOW
            else:
                x = ln(lrs[0])
                previous = self.smoothed
                if (
                    self.evaluations > self._skip
                    and previous is not None
                    and self.log_lr is not None
                    and x > self.log_lr
                ):
                    slope = (smoothed - previous) / (x - self.log_lr)
                    if slope < 0.0 and (self.steepest_slope is None or slope < self.steepest_slope):
                        self.steepest_slope = slope
                        self.steepest_step = self.last_step
                self.avg = avg
                self.beta_power = power
                self.smoothed = smoothed
                self.log_lr = x
                self.last_step = step
                self.evaluations += 1
                best = self.best
                if best is None or smoothed < best:
                    best = self.best = smoothed
                    self.best_step = step
                # fastai's factor x best; for best <= 0, the same distance above best
                limit = self._factor * best if best > 0.0 else best + (self._factor - 1.0) * -best
                if smoothed > limit:
                    what = _DIVERGED
                elif step >= self._stop_at:
                    what = _DONE
                else:
                    what = _WARMUP
        self._last = (what, step, value, smoothed, limit)
        if what == _WARMUP:
            self.action = "warmup"
            return "warmup"
        self.stop_step = step
        self.suggested_lrs, self.min_loss_lrs_div_10 = _suggest(
            self._ramp, self.steepest_step, self.best_step
        )
        self.action = "stop"
        return "stop"

    def reason(self) -> str:
        what, step, value, smoothed, limit = self._advanced()
        seen = f"{self._metric} {fmt(value)}"
        held = f"{fmt_lrs(self.lrs)} held"
        if what == _AFTER:
            return (
                f"range test stopped at step {self.stop_step}: {seen} (step {step}) is not "
                f"used; {self._suggestion()}; {held}"
            )
        at = f"{seen} at {fmt_lrs(self.lrs)} (step {step})"
        if what == _NOT_FINITE:
            return (
                f"{at} is not a finite number: diverged, range test stopped; "
                f"{self._suggestion()}; {held}"
            )
        if what == _OVERFLOW:
            return (
                f"{at}: the smoothed loss overflows: diverged, range test stopped; "
                f"{self._suggestion()}; {held}"
            )
        assert self.best is not None
        best = self.best
        if best > 0.0:
            rule = f"diverge_factor {fmt(self._factor)} x best {fmt(best)}"
        else:
            rule = f"best {fmt(best)} + (diverge_factor {fmt(self._factor)} - 1) x |best|"
        text = f"{at}: smoothed {fmt(smoothed)}"
        if what == _DIVERGED:
            return (
                f"{text} > {fmt(limit)} ({rule}): diverged, range test stopped; "
                f"{self._suggestion()}; {held}"
            )
        text += f", best {fmt(best)}, divergence above {fmt(limit)} ({rule})"
        if what == _DONE:
            return (
                f"{text}; the ramp reached max_lr (its last step is num_steps - 1 = "
                f"{self._stop_at}): range test done; {self._suggestion()}; {held}"
            )
        return f"{text}: ramping, {fmt_lrs(self._ramp.lrs(step + 1))} at step {step + 1}"

    def _suggestion(self) -> str:
        if self.suggested_lrs is None:
            steep = (
                f"no suggested lr (no falling slope of the smoothed loss after the first "
                f"{self._skip} smoothed losses)"
            )
        else:
            assert self.steepest_slope is not None
            steep = (
                f"suggested {fmt_lrs(self.suggested_lrs)} (steepest descent of the smoothed "
                f"loss: slope {fmt(self.steepest_slope)} per unit ln(lr), from step "
                f"{self.steepest_step})"
            )
        if self.min_loss_lrs_div_10 is None:
            low = "no min-loss lr (no finite loss)"
        else:
            assert self.best is not None
            low = (
                f"min-loss lr / 10: {_values(self.min_loss_lrs_div_10)} (lowest smoothed loss "
                f"{fmt(self.best)} at step {self.best_step})"
            )
        return f"{steep}, {low}"

    def state_doc(self) -> dict[str, Any]:
        return {
            "avg": float_token(self.avg),
            "best": _token(self.best),
            "best_step": self.best_step,
            "beta_power": float_token(self.beta_power),
            "evaluations": self.evaluations,
            "last_step": self.last_step,
            "log_lr": _token(self.log_lr),
            "lrs": [float_token(x) for x in self.lrs],
            "min_loss_lrs_div_10": _tokens(self.min_loss_lrs_div_10),
            "smoothed": _token(self.smoothed),
            "steepest_slope": _token(self.steepest_slope),
            "steepest_step": self.steepest_step,
            "stop_step": self.stop_step,
            "suggested_lrs": _tokens(self.suggested_lrs),
        }


def _token(x: float | None) -> str | float | None:
    return None if x is None else float_token(x)


def _tokens(xs: tuple[float, ...] | None) -> list[str | float] | None:
    return None if xs is None else [float_token(x) for x in xs]


def run_summary(params: Frozen, state: State) -> dict[str, Any]:
    """What a run's summary reports of a range test, from its state: the suggestion of the stop
    decision, or (``stop_step`` null) the one the smoothed losses so far would give."""
    assert isinstance(params, RangeTestParams) and isinstance(state, RangeTestState)
    steep, low = suggestion(params, state)
    return {
        "stop_step": state.stop_step,
        "suggested_lr": steep[0] if steep is not None else None,
        "min_loss_lr_div_10": low[0] if low is not None else None,
        "suggested_lrs": list(steep) if steep is not None else None,
        "min_loss_lrs_div_10": list(low) if low is not None else None,
        "steepest_slope": state.steepest_slope,
        "steepest_step": state.steepest_step,
        "best_smoothed_loss": state.best,
        "best_step": state.best_step,
        "evaluations": state.evaluations,
    }
