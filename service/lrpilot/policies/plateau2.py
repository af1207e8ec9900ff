"""``plateau@2``: plateau control with what torch and keras lack.

``plateau@1`` reproduces torch and keras; ``plateau@2`` is torch's rule (flavor torch of
``plateau@1``: mode, factor, patience, threshold, threshold_mode, cooldown, min_lr per group,
eps, torch's names and order) with six additions. With ``window`` 1, no ``ema``, ``best_of``
null, ``on_plateau`` multiply, ``stop_after`` null and a finite metric it decides exactly as
torch's ReduceLROnPlateau does (with ``lr_dtype`` "float32": as torch does over an optimizer
built with tensor lrs).

The rules, in the order one evaluation (an observation ``value`` at training step ``step``)
applies them:

1. **Stopped.** Once a decision said "stop", every later one says "stop" again and changes
   nothing (the state stays as the stop left it).
2. **Divergence.** A non-finite ``value`` (NaN, +inf, -inf) is divergence: it never enters the
   smoothing or the reference, it is not an improvement, and it reduces at once, whatever the
   patience and the cooldown: each lr to ``max(lr * factor, floor)``, moved only if it changes
   by more than ``eps`` (the floor is ``min_lr``, or during a decay the decay's floor; a decay
   cut this way restarts from the reduced lrs at this step and still ends at its end step).
   Then counting restarts: ``bad_evaluations`` is 0 and the cooldown starts (as after any
   reduction). The action is "reduce" (or, if no lr can move, what it would be otherwise).
3. **Smoothing.** The value compared is ``m``: the value itself (``window`` 1, ``ema`` 0); the
   mean of the last ``window`` finite values (fewer until ``window`` were seen), summed oldest
   first; or with ``ema`` = a in (0, 1) the exponential moving average ``m = a * m' + (1 - a) *
   value`` (``m = value`` for the first finite value). At most one of the two.
4. **Reference.** ``best_of`` null: torch's ``best``, the last ``m`` that improved (+/-inf
   before any). ``best_of`` k: the best of the ``m`` of the last k finite evaluations before
   this one (the oldest of equal ones; none before the first, and then ``m`` improves), so one
   lucky value stops being the reference k evaluations later (pytorch#30873). ``m`` improves
   on the reference ``r`` iff torch's ``_is_better(m, r)``: ``m < r * (1 - threshold)``
   (min, rel), ``m < r - threshold`` (min, abs), ``m > r * (threshold + 1)`` (max, rel),
   ``m > r + threshold`` (max, abs).
5. **Patience** (torch's order): ``bad_evaluations`` is the number of consecutive evaluations
   whose ``m`` did not improve on the reference in force at that evaluation, reset to 0 by an
   improvement, by a reduction, by divergence and by every evaluation in cooldown (an
   evaluation in cooldown counts the cooldown down first). ``bad_evaluations > patience`` is a
   plateau: with ``on_plateau`` multiply each lr goes to ``max(lr * factor, min_lr)`` (moved
   only if it changes by more than ``eps``; "reduce" if any lr changed, else "hold"), then the
   cooldown starts and ``bad_evaluations`` is 0. With ``on_plateau`` decay the first plateau
   starts the decay instead (action "decay"; the only plateau response: later plateaus change
   nothing).
6. **Decay.** Started at step s from lrs L (those in force at s) with ``steps`` K: group i's
   lr at training step t is ``L_i`` at t <= s, ``F_i`` at t >= s + K and
   ``F_i + (L_i - F_i) * r`` in between (kept within [F_i, L_i]), where ``F_i = min(floor_i,
   L_i)`` (a decay never raises an lr), ``r = (s + K - t) / K`` (linear) or ``r =
   sin(pi/2 * (s + K - t) / K) ** 2`` (cosine, i.e. ``(1 + cos(pi * (t - s) / K)) / 2``,
   evaluated by a fixed polynomial so it is the same float on every machine); with
   ``lr_dtype`` float32, ``F_i`` and the lrs are rounded to float32. The evaluation at s
   answers "decay" with lrs L (it counts as a reduction); evaluations during the decay answer
   "decay" with the lrs at their step, and so does the first one at or after s + K if it lands
   the lrs on the floor; later ones answer "hold" (the counts of rule 5 go on, but nothing
   acts on them: the plateau response is spent).
7. **Stop** (``stop_after`` k not null): an evaluation counts when every lr was at its floor at
   its step before it was decided (with ``on_plateau`` multiply: no reduction would move any
   lr; with decay: the decay has ended) and it did not improve (divergence does not improve).
   ``floor_evaluations`` counts such evaluations in a row; an improvement, or an evaluation
   before the floor, sets it to 0. ``floor_evaluations > stop_after`` (torch's patience rule
   applied to stopping) is the decision "stop": an early-stopping signal for the client; the
   lrs are those in force.

With ``lr_dtype`` "float32" every lr the policy holds is a float32 value (as a float32 tensor
holds it): the base lrs are rounded to float32, a reduction computes ``max(lr * factor,
min_lr)`` in double from the float32 lr and rounds the result to float32 (torch's
ReduceLROnPlateau over tensor lrs: ``old_lr = float(group["lr"])``, written back with
``fill_``), and a decay's lrs are computed in double and rounded to float32.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import add, itemgetter
from typing import Annotated, Any, Literal

from pydantic import Field, StrictFloat, StrictInt, ValidationError

from lrpilot.canonical import float_token
from lrpilot.policies import common
from lrpilot.policies.base import MAX_STEP, FieldStepper, Frozen, Loc, Policy, State
from lrpilot.policies.text import fmt, fmt_change, fmt_lrs, plural

MAX_WINDOW = 1000  # window and best_of: the state holds that many values


class Multiply(Frozen):
    """On a plateau, each lr to max(lr * factor, min_lr) (torch's reduction)."""

    action: Literal["multiply"] = "multiply"


class Decay(Frozen):
    """On the first plateau, a linear or cosine decay to ``floor`` over ``steps`` training
    steps from the step of that evaluation."""

    action: Literal["decay"]
    shape: Literal["linear", "cosine"]
    steps: Annotated[StrictInt, Field(ge=1, le=MAX_STEP)]
    floor: common.MinLr = 0.0


class Plateau2Params(common.TorchPlateauArgs):
    """torch's ReduceLROnPlateau arguments (names and defaults) and plateau@2's own."""

    window: Annotated[StrictInt, Field(ge=1, le=MAX_WINDOW)] = 1
    ema: Annotated[StrictFloat, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0
    best_of: Annotated[StrictInt, Field(ge=1, le=MAX_WINDOW)] | None = None
    on_plateau: Annotated[Multiply | Decay, Field(discriminator="action")] = Multiply()
    stop_after: common.Count | None = None
    lr_dtype: Literal["float64", "float32"] = "float64"


class Plateau2State(State):
    best: float | None  # the reference the next evaluation is compared with (see the rules)
    best_step: int | None
    bad_evaluations: int
    cooldown_counter: int
    recent: tuple[float, ...]  # window > 1: the last `window` finite values, oldest first
    ema_value: float | None  # ema > 0: the moving average (None before a finite value)
    history: tuple[tuple[int, float], ...]  # best_of: the last best_of (step, m), oldest first
    decay_from: int | None  # a decay: its start step, start lrs and end step
    decay_lrs: tuple[float, ...] | None
    decay_to: int | None
    floor_evaluations: int  # evaluations in a row at the floor without improvement
    stopped_at: int | None  # the step of the "stop" decision


def _same_dtype(x: float) -> float:
    return x


_NON_FINITE_NAMES = {True: "Infinity", False: "-Infinity"}


def _name(value: float) -> str:
    return "NaN" if math.isnan(value) else _NON_FINITE_NAMES[value > 0]


def _value_text(value: float) -> str:
    return fmt(value) if math.isfinite(value) else _name(value)


# sin(x) on [0, pi/2] by its Taylor series to x**25 in Horner form (truncation below 1e-20):
# only * and -, correctly rounded by IEEE 754, so the same float on every machine (libm's sin
# and cos are not specified to the last bit).
_HALF_PI = math.pi / 2
_SIN_DIVISORS = tuple(float((2 * k) * (2 * k + 1)) for k in range(12, 0, -1))


def _sin(x: float) -> float:
    x2 = x * x
    acc = 1.0
    for d in _SIN_DIVISORS:
        acc = 1.0 - x2 / d * acc
    return x * acc


def remaining(shape: str, left: int, total: int) -> float:
    """The fraction of a decay still to go with ``left`` of ``total`` steps left (0 < left <
    total): linear ``left / total``; cosine ``sin(pi/2 * left / total) ** 2``, which is
    ``(1 + cos(pi * (total - left) / total)) / 2``."""
    r = float(left) / float(total)
    if shape == "cosine":
        s = _sin(_HALF_PI * r)
        return s * s
    return r


class Plateau2(Policy):
    name = "plateau"
    version = 2
    description = (
        "torch's ReduceLROnPlateau rule (its params and names) with what torch lacks: the "
        "metric smoothed (window mean or ema), improvement judged against the best of the last "
        "best_of evaluations rather than the best ever, a non-finite metric reduced at once "
        "(divergence), lrs held in float32 as torch tensor lrs are (lr_dtype), a linear or "
        "cosine decay to a floor on the first plateau (on_plateau), and a stop signal once "
        "every lr is at its floor and the metric stops improving (stop_after)."
    )
    actions = ("hold", "reduce", "cooldown", "decay", "stop")
    params_model = Plateau2Params
    examples = (
        {"patience": 5, "window": 3, "best_of": 20},
        {"patience": 3, "ema": 0.9, "lr_dtype": "float32"},
        {
            "patience": 5,
            "on_plateau": {"action": "decay", "shape": "cosine", "steps": 20000, "floor": 0.0},
            "stop_after": 5,
        },
    )
    state_model = Plateau2State

    def validation_errors(self, exc: ValidationError) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        for e in exc.errors():
            loc: Loc = tuple(e["loc"])
            # the discriminated union names its member in the loc: on_plateau.decay.steps is
            # the field on_plateau.steps to whoever wrote the params
            if len(loc) >= 2 and loc[0] == "on_plateau" and loc[1] in ("multiply", "decay"):
                loc = (loc[0], *loc[2:])
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "action")
                msg = "on_plateau.action must be 'multiply' or 'decay'"
            else:
                msg = e["msg"]
            out.append((loc, f"{'.'.join(map(str, loc))}: {msg} (got {e.get('input')!r})"))
        return out

    def check(self, params: Plateau2Params, base_lrs: tuple[float, ...]) -> list[tuple[Loc, str]]:
        p, n = params, len(base_lrs)
        errors = p.torch_errors(n)
        if p.window > 1 and p.ema > 0.0:
            errors.append(
                (
                    ("ema",),
                    f"give window or ema, not both: window {p.window} averages the last "
                    f"{p.window} values, ema {p.ema!r} averages them all (set window 1 or ema 0)",
                )
            )
        on = p.on_plateau
        if isinstance(on, Decay):
            counted = common.group_count_errors(("on_plateau", "floor"), on.floor, n)
            errors += counted or _floors_above(on.floor, base_lrs)
        if p.lr_dtype == "float32":
            for i, lr in enumerate(base_lrs):
                if not math.isfinite(common.to_f32(lr)):
                    errors.append(
                        (
                            ("lr_dtype",),
                            f"lr_dtype 'float32' cannot hold the base lr {lr!r} of param group "
                            f"{i} (float32's largest value is 3.4028234663852886e+38)",
                        )
                    )
        return errors

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> Plateau2State:
        assert isinstance(params, Plateau2Params)
        dtype = common.to_f32 if params.lr_dtype == "float32" else _same_dtype
        return Plateau2State(
            lrs=tuple(dtype(lr) for lr in base_lrs),
            best=(math.inf if params.mode == "min" else -math.inf)
            if params.best_of is None
            else None,
            best_step=None,
            bad_evaluations=0,
            cooldown_counter=0,
            recent=(),
            ema_value=None,
            history=(),
            decay_from=None,
            decay_lrs=None,
            decay_to=None,
            floor_evaluations=0,
            stopped_at=None,
        )

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(params, Plateau2Params) and isinstance(state, Plateau2State)
        if state.decay_from is None:
            return state.lrs  # changed only by a decision: held between evaluations
        assert state.decay_lrs is not None and state.decay_to is not None
        on = params.on_plateau
        assert isinstance(on, Decay)
        dtype = common.to_f32 if params.lr_dtype == "float32" else _same_dtype
        targets = _targets(state.decay_lrs, on.floor, dtype)
        return _decay_at(
            on.shape, state.decay_from, state.decay_to, state.decay_lrs, targets, step, dtype
        )

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> Plateau2Stepper:
        """The state as plain attributes, to advance one observation at a time; a reduction
        ("reduce", a divergence's too) and the start of a decay count as reduced."""
        assert isinstance(params, Plateau2Params) and isinstance(state, Plateau2State)
        return Plateau2Stepper(params, state, metric)


def _floors_above(
    floors: float | list[float], base_lrs: tuple[float, ...]
) -> list[tuple[Loc, str]]:
    """A decay goes down: its floor may not be above a group's base lr."""
    errors: list[tuple[Loc, str]] = []
    for i, (floor, lr) in enumerate(
        zip(common.per_group(floors, len(base_lrs)), base_lrs, strict=True)
    ):
        if floor > lr:
            where: Loc = ("on_plateau", "floor")
            if isinstance(floors, list):
                where = (*where, i)
            errors.append(
                (
                    where,
                    f"on_plateau.floor {floor!r} is above the base lr {lr!r} of param group "
                    f"{i}: a decay goes down to its floor",
                )
            )
    return errors


def _targets(start: tuple[float, ...], floor: float | list[float], dtype: Any) -> tuple[float, ...]:
    """A decay's end lrs: each group's floor, never above where the decay started."""
    return tuple(
        dtype(min(f, lr)) for f, lr in zip(common.per_group(floor, len(start)), start, strict=True)
    )


def _decay_at(
    shape: str,
    start: int,
    end: int,
    lrs: tuple[float, ...],
    targets: tuple[float, ...],
    step: int,
    dtype: Any,
) -> tuple[float, ...]:
    """The decay's lrs at training step ``step`` (rule 6)."""
    if step <= start:
        return lrs
    if step >= end:
        return targets
    r = remaining(shape, end - step, end - start)
    return tuple(
        dtype(min(lr, max(f, f + (lr - f) * r))) for lr, f in zip(lrs, targets, strict=True)
    )


# What advance() leaves for reason(): the kind of evaluation and the facts its sentence needs.
_STOPPED, _DIVERGED, _SEEN = 0, 1, 2
_RAW, _WINDOW, _EMA = 0, 1, 2  # smoothing
# the plateau response of a _SEEN evaluation
_NONE, _REDUCED, _HELD, _DECAY_STARTED = 0, 1, 2, 3


class Plateau2Stepper(FieldStepper):
    """plateau@2's rule over plain attributes (see the module's docstring for the rules)."""

    __slots__ = (
        "_best_of",
        "_cooldown",
        "_decay",
        "_dtype",
        "_ema",
        "_floored",
        "_max",
        "_min_lrs",
        "_one_minus_ema",
        "_p",
        "_patience",
        "_rel",
        "_shift",
        "_smoothing",
        "_stop_after",
        "_targets",
        "_window",
        "bad_evaluations",
        "best",
        "best_step",
        "cooldown_counter",
        "decay_from",
        "decay_lrs",
        "decay_to",
        "ema_value",
        "floor_evaluations",
        "history",
        "recent",
        "stopped_at",
    )

    state_model = Plateau2State

    best: float | None
    best_step: int | None
    bad_evaluations: int
    cooldown_counter: int
    recent: tuple[float, ...]
    ema_value: float | None
    history: tuple[tuple[int, float], ...]
    decay_from: int | None
    decay_lrs: tuple[float, ...] | None
    decay_to: int | None
    floor_evaluations: int
    stopped_at: int | None
    _targets: tuple[float, ...] | None  # the running decay's end lrs
    _floored: tuple[float, ...] | None  # lrs a multiply reduction was found to leave as is
    _last: tuple[Any, ...] | None

    def __init__(self, p: Plateau2Params, s: Plateau2State, metric: str) -> None:
        super().__init__(s, metric)
        self._p = p
        self._max = p.mode == "max"
        # torch's _is_better: rel compares with best * (1 - threshold) (min) or
        # best * (threshold + 1) (max); abs with best - threshold, i.e. best + (-threshold)
        # to the bit (see plateau.py)
        self._rel = p.threshold_mode == "rel"
        if self._rel:
            self._shift = p.threshold + 1.0 if self._max else 1.0 - p.threshold
        else:
            self._shift = p.threshold if self._max else -p.threshold
        self._patience = p.patience
        self._cooldown = p.cooldown
        self._window = p.window
        self._smoothing = _WINDOW if p.window > 1 else _EMA if p.ema > 0.0 else _RAW
        self._ema = p.ema
        self._one_minus_ema = 1.0 - p.ema
        self._best_of = p.best_of
        self._stop_after = p.stop_after
        self._decay = p.on_plateau if isinstance(p.on_plateau, Decay) else None
        self._dtype = common.to_f32 if p.lr_dtype == "float32" else None
        self._floored = None
        self._min_lrs = common.per_group(p.min_lr, len(s.lrs))
        self._targets = None
        if s.decay_lrs is not None:
            assert self._decay is not None, "a decay in the state of a policy without one"
            self._targets = _targets(s.decay_lrs, self._decay.floor, self._dtype or _same_dtype)

    # -- the rule ---------------------------------------------------------------------------

    def _multiply(self, lrs: tuple[float, ...], floors: tuple[float, ...]) -> tuple[float, ...]:
        """torch's _reduce_lr: each group to max(lr * factor, floor), moved only if it changes
        by more than eps (rounded to float32 with lr_dtype float32, as fill_ does)."""
        factor, eps, dtype = self._p.factor, self._p.eps, self._dtype
        new = []
        for lr, floor in zip(lrs, floors, strict=True):
            candidate = max(lr * factor, floor)
            if lr - candidate > eps:
                new.append(dtype(candidate) if dtype is not None else candidate)
            else:
                new.append(lr)
        out = tuple(new)
        return lrs if out == lrs else out

    def _decay_lrs_at(self, step: int) -> tuple[float, ...]:
        d = self._decay
        assert d is not None and self.decay_lrs is not None and self._targets is not None
        assert self.decay_from is not None and self.decay_to is not None
        return _decay_at(
            d.shape,
            self.decay_from,
            self.decay_to,
            self.decay_lrs,
            self._targets,
            step,
            self._dtype or _same_dtype,
        )

    def _at_floor(self, step: int, cur: tuple[float, ...]) -> bool:
        """Every lr at its floor at ``step`` (rule 7): no multiply reduction would move any,
        or the decay has ended."""
        if self._decay is not None:
            return self.decay_to is not None and step >= self.decay_to
        if cur is self._floored:
            return True
        if self._multiply(cur, self._min_lrs) is cur:
            self._floored = cur
            return True
        return False

    def advance(self, step: int, value: float) -> str:
        if self.stopped_at is not None:
            self._last = (_STOPPED, step, value)
            self.action = "stop"
            self.reduced = False
            return "stop"
        before = self.lrs
        decaying = self.decay_from is not None
        cur = self._decay_lrs_at(step) if decaying else before
        at_floor = self._stop_after is not None and self._at_floor(step, cur)
        cooldown = self.cooldown_counter
        reduced = False
        if value - value != 0.0:  # NaN or +/-inf: divergence (rule 2)
            improved = False
            floors = self._targets if decaying else self._min_lrs
            assert floors is not None
            new = self._multiply(cur, floors)
            if new is not cur:
                reduced = True
                if decaying:
                    self.decay_from = step
                    self.decay_lrs = new
            self.lrs = new
            self.bad_evaluations = 0
            self.cooldown_counter = self._cooldown
            action = "reduce" if reduced else "hold"
            self._last = (_DIVERGED, step, value, before, cur, decaying)
        else:
            # smoothing (rule 3)
            smoothing = self._smoothing
            if smoothing == _WINDOW:
                recent = self.recent
                if len(recent) >= self._window:
                    recent = recent[len(recent) - self._window + 1 :]
                recent = (*recent, value)
                self.recent = recent
                # summed oldest first, one addition at a time (a left fold, in C): not sum(),
                # whose rounding changed in Python 3.12, nor fsum
                m = reduce(add, recent) / len(recent)
            elif smoothing == _EMA:
                ev = self.ema_value
                m = value if ev is None else self._ema * ev + self._one_minus_ema * value
                self.ema_value = m
            else:
                m = value
            # reference (rule 4): torch's _is_better(m, ref)
            ref = self.best
            ref_step = self.best_step
            if ref is None:
                improved = True
            else:
                limit = ref * self._shift if self._rel else ref + self._shift
                improved = m > limit if self._max else m < limit
            history = self.history
            n_ref = len(history)
            if self._best_of is None:
                if improved:
                    self.best = m
                    self.best_step = step
            else:
                if len(history) >= self._best_of:
                    history = history[len(history) - self._best_of + 1 :]
                self.history = (*history, (step, m))
                self.best_step, self.best = _best_of(self.history, self._max)
            # patience, torch's order (rule 5)
            bad = 0 if improved else self.bad_evaluations + 1
            action = "hold"
            if cooldown > 0:
                self.cooldown_counter = cooldown - 1
                bad = 0
                action = "cooldown"
            response = _NONE
            if bad > self._patience and not decaying:
                decay = self._decay
                if decay is None:
                    new = self._multiply(cur, self._min_lrs)
                    if new is not cur:
                        self.lrs = new
                        action = "reduce"
                        reduced = True
                        response = _REDUCED
                    else:
                        response = _HELD
                else:
                    self.decay_from = step
                    self.decay_to = step + decay.steps
                    self.decay_lrs = cur
                    self._targets = _targets(cur, decay.floor, self._dtype or _same_dtype)
                    action = "decay"
                    reduced = True
                    response = _DECAY_STARTED
                self.cooldown_counter = self._cooldown
                self.bad_evaluations = 0
            else:
                self.bad_evaluations = bad
            if decaying:
                self.lrs = cur
            self._last = (
                _SEEN,
                step,
                value,
                before,
                cur,
                m,
                improved,
                ref,
                ref_step,
                n_ref,
                cooldown,
                bad,
                response,
            )
        if decaying and not reduced:
            assert self.decay_to is not None
            if step < self.decay_to or self.lrs != before:
                action = "decay"
            elif action == "cooldown":
                action = "hold"  # the plateau response is spent: no cooldown to wait for
        # stop (rule 7)
        if self._stop_after is not None:
            if at_floor and not improved:
                self.floor_evaluations += 1
                if self.floor_evaluations > self._stop_after:
                    self.stopped_at = step
                    action = "stop"
            else:
                self.floor_evaluations = 0
        self.action = action
        self.reduced = reduced
        return action

    # -- the reason -------------------------------------------------------------------------

    def reason(self) -> str:
        last = self._advanced()
        p, metric, lrs = self._p, self._metric, self.lrs
        kind, step, value = last[0], last[1], last[2]
        if kind == _STOPPED:
            return (
                f"stopped at step {self.stopped_at} (an early-stopping signal: every lr at its "
                f"floor and {metric} no longer improving): {metric} {_value_text(value)} at step "
                f"{step} changes nothing, {fmt_lrs(lrs)} held"
            )
        before, cur = last[3], last[4]
        decay = self._decay
        if kind == _DIVERGED:
            text = f"diverged: {metric} is {_name(value)}"
            if last[5]:  # during a decay
                assert decay is not None
                span = f"{decay.shape} decay to step {self.decay_to}"
                if self.reduced:
                    text += f": the {span} restarts from {fmt_change(cur, lrs)}"
                else:
                    text += (
                        ", but no lr can go lower (each at its decay floor or within eps "
                        f"{fmt(p.eps)} of it)"
                    )
                    text += f", the {span} goes on: " if lrs != before else ": "
                    text += fmt_change(before, lrs) if lrs != before else f"{fmt_lrs(lrs)} held"
            elif self.reduced:
                text += p.reduction_text(True, cur, lrs)
            else:
                text += (
                    f", but no lr can go lower (each at its min_lr or within eps {fmt(p.eps)} "
                    f"of it): {fmt_lrs(lrs)} held"
                )
            text += ", and the patience count restarts"
        else:
            m, improved, ref, ref_step, n_ref, cooldown, bad, response = last[5:]
            text = self._seen(value, m, improved, ref, ref_step, n_ref)
            if self.decay_from is not None and response != _DECAY_STARTED:
                assert decay is not None
                span = f"{decay.shape} decay from step {self.decay_from} to {self.decay_to}"
                if step < (self.decay_to or 0):
                    text += f", during the {span}: " + (
                        fmt_change(before, lrs) if lrs != before else f"{fmt_lrs(lrs)} held"
                    )
                elif lrs != before:
                    text += f", the {span} ends: {fmt_change(before, lrs)}, at its floor"
                else:
                    text += f", the {span} has ended: {fmt_lrs(lrs)} held at its floor"
            else:
                said = ""  # what the plateau response says, if there is a plateau
                if bad > p.patience and response == _DECAY_STARTED:
                    assert decay is not None and self._targets is not None
                    said = (
                        f": a {decay.shape} decay over {plural(decay.steps, 'step')} "
                        f"starts, from {fmt_lrs(lrs)} at step {step} to "
                        f"{fmt_lrs(self._targets)} at step {self.decay_to}"
                    )
                elif bad > p.patience:
                    said = p.reduction_text(response == _REDUCED, before, lrs)
                text += p.patience_text(improved, cooldown, bad, lrs, said)
        if self._stop_after is not None and self.floor_evaluations:
            n = plural(self.floor_evaluations, "evaluation")
            if self.action == "stop":
                text += (
                    f"; every lr at its floor and no improvement for {n} > stop_after "
                    f"{self._stop_after}: stop (an early-stopping signal)"
                )
            else:
                text += (
                    f"; every lr at its floor and no improvement for {n} "
                    f"(stop_after {self._stop_after})"
                )
        return text

    def _seen(
        self,
        value: float,
        m: float,
        improved: bool,
        ref: float | None,
        ref_step: int | None,
        n_ref: int,
    ) -> str:
        p = self._p
        seen = f"{self._metric} {fmt(value)}"
        if p.window > 1:
            seen += f" (mean of the last {plural(len(self.recent), 'value')}: {fmt(m)})"
        elif p.ema > 0.0:
            seen += f" (moving average, ema {fmt(p.ema)}: {fmt(m)})"
        if ref is None:
            return f"{seen} is the first value compared and sets the reference"
        at = f" (step {ref_step})" if ref_step is not None else ""
        if p.best_of is None:
            against = f"best {fmt(ref)}{at}"
        else:
            against = (
                f"{fmt(ref)}{at}, the best of the last {plural(n_ref, 'value')} compared "
                f"(best_of {p.best_of}),"
            )
        rule = f"{p.threshold_mode} threshold {fmt(p.threshold)}"
        verb = "improved" if improved else "did not improve"
        return f"{seen} {verb} on {against} beyond {rule}"

    # -- the state --------------------------------------------------------------------------

    def state_doc(self) -> dict[str, Any]:
        best, ev, dl = self.best, self.ema_value, self.decay_lrs
        return {
            "bad_evaluations": self.bad_evaluations,
            "best": best if best is None else float_token(best),
            "best_step": self.best_step,
            "cooldown_counter": self.cooldown_counter,
            "decay_from": self.decay_from,
            "decay_lrs": dl if dl is None else [float_token(x) for x in dl],
            "decay_to": self.decay_to,
            "ema_value": ev if ev is None else float_token(ev),
            "floor_evaluations": self.floor_evaluations,
            "history": [[s, float_token(v)] for s, v in self.history],
            "lrs": [float_token(x) for x in self.lrs],
            "recent": [float_token(x) for x in self.recent],
            "stopped_at": self.stopped_at,
        }


def _best_of(history: tuple[tuple[int, float], ...], maximize: bool) -> tuple[int, float]:
    """The best (step, m) of ``history`` (the oldest of equal ones: min and max keep the first
    of equal items; every m is finite)."""
    return (max if maximize else min)(history, key=itemgetter(1))
