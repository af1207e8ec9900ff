"""``plateau@1``: reduce the learning rate when a metric stops improving.

Two flavors reproduce the two reference implementations to the last bit:

* ``torch``: ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (the threshold test runs before
  the cooldown, ``num_bad > patience`` reduces, a group moves only if it changes by more than
  ``eps``). Learning rates are Python floats, as in a torch param group.
* ``keras``: ``keras.callbacks.ReduceLROnPlateau`` (the cooldown runs before the improvement
  test, ``wait >= patience`` reduces, the first evaluation always sets ``best``). Keras keeps
  the learning rate in a float32 variable and compares the metric as float32 tensors, so this
  flavor rounds exactly where keras does.

A NaN metric is never an improvement in either flavor, except as keras' very first evaluation,
which keras takes as ``best`` unconditionally (after which nothing improves on it).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, StrictFloat

from lrpilot.canonical import float_token
from lrpilot.policies import common
from lrpilot.policies.base import FieldStepper, Frozen, Loc, Policy, PolicyError, State
from lrpilot.policies.common import to_f32  # by name: keras' advance() rounds with it each step
from lrpilot.policies.text import fmt, fmt_change, fmt_lrs, plural


class _TorchFlavor(Frozen):
    flavor: Literal["torch"] = "torch"


# flavor first, then torch's args: pydantic orders the fields from the last base to the first
class TorchParams(common.TorchPlateauArgs, _TorchFlavor):
    """torch.optim.lr_scheduler.ReduceLROnPlateau's arguments, names and defaults."""


class KerasParams(Frozen):
    """keras.callbacks.ReduceLROnPlateau's arguments (mode 'auto' is not taken: say min or max)."""

    flavor: Literal["keras"]
    mode: Literal["min", "max"] = "min"
    factor: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 0.1
    patience: common.Count = 10
    min_delta: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-4
    cooldown: common.Count = 0
    min_lr: common.MinLr = 0.0


Params = TorchParams | KerasParams


class PlateauState(State):
    best: float | None  # None only in keras before the first evaluation
    best_step: int | None
    bad_evaluations: int  # torch's num_bad_epochs, keras' wait
    cooldown_counter: int


class Plateau(Policy):
    name = "plateau"
    version = 1
    description = (
        "Reduce the learning rate by `factor` when the metric has not improved for `patience` "
        "evaluations. flavor 'torch' (default) reproduces torch's ReduceLROnPlateau exactly, "
        "flavor 'keras' reproduces keras' ReduceLROnPlateau exactly."
    )
    actions = ("hold", "reduce", "cooldown")
    params_model = TorchParams  # the default flavor
    schema_type = Annotated[TorchParams | KerasParams, Field(discriminator="flavor")]
    examples = (
        {"patience": 5, "factor": 0.5},
        {"flavor": "keras", "patience": 3, "min_delta": 0.001, "min_lr": 1e-5},
    )
    state_model = PlateauState

    def params_model_for(self, params: dict[str, Any]) -> type[TorchParams] | type[KerasParams]:
        flavor = params.get("flavor", "torch")
        if flavor == "torch":
            return TorchParams
        if flavor == "keras":
            return KerasParams
        raise PolicyError([(("flavor",), f"flavor must be 'torch' or 'keras', got {flavor!r}")])

    def check(self, params: Params, base_lrs: tuple[float, ...]) -> list[tuple[Loc, str]]:
        if isinstance(params, TorchParams):
            return params.torch_errors(len(base_lrs))
        return common.group_count_errors(("min_lr",), params.min_lr, len(base_lrs))

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> PlateauState:
        if isinstance(params, KerasParams):
            return PlateauState(
                lrs=tuple(to_f32(lr) for lr in base_lrs),
                best=None,
                best_step=None,
                bad_evaluations=0,
                cooldown_counter=0,
            )
        assert isinstance(params, TorchParams)
        return PlateauState(
            lrs=tuple(base_lrs),
            best=math.inf if params.mode == "min" else -math.inf,
            best_step=None,
            bad_evaluations=0,
            cooldown_counter=0,
        )

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        return state.lrs  # changed only by a decision: held between evaluations

    def stepper(
        self, params: Frozen, state: State, metric: str = "metric"
    ) -> TorchStepper | KerasStepper:
        """The state as plain attributes, to advance one observation at a time (what-if replay);
        a reduction is what counts as reduced ("reduce" is the only such action)."""
        assert isinstance(state, PlateauState)
        if isinstance(params, KerasParams):
            return KerasStepper(params, state, metric)
        assert isinstance(params, TorchParams)
        return TorchStepper(params, state, metric)


def _best_text(best: float | None, best_step: int | None) -> str:
    at = f" (step {best_step})" if best_step is not None else ""
    return f"best {fmt(best) if best is not None else 'none'}{at}"


def _seen_text(metric: str, value: float, improved: bool, best: float | None, best_step: int | None,
               rule: str) -> str:  # fmt: skip
    seen = f"{metric} {fmt(value)}"
    if improved:
        return f"{seen} improved on {_best_text(best, best_step)} beyond {rule}"
    verb = "is not a number and cannot improve" if math.isnan(value) else "did not improve"
    return f"{seen} {verb} on {_best_text(best, best_step)} beyond {rule}"


# The steppers hold a PlateauState as plain attributes and advance it one observation at a time.
# advance() is the rule and nothing else: no pydantic, no strings but the action; it keeps the
# few facts the reason needs (the values before the step) in one tuple, and reason() writes the
# sentence from them only when asked. Plateau.step() goes through them too: one implementation.
# The params stay in _p for what only reason() and a reduction read.


class _PlateauStepper(FieldStepper):
    """What both flavors' steppers hold alike: a PlateauState as plain attributes, and the
    params the rule reads at every step."""

    __slots__ = (
        "_cooldown",
        "_min",
        "_patience",
        "bad_evaluations",
        "best",
        "best_step",
        "cooldown_counter",
    )

    state_model = PlateauState
    best: float | None
    best_step: int | None
    bad_evaluations: int
    cooldown_counter: int

    def __init__(
        self, s: PlateauState, metric: str, mode: str, patience: int, cooldown: int
    ) -> None:
        super().__init__(s, metric)
        self._min = mode == "min"
        self._patience = patience
        self._cooldown = cooldown

    def state_doc(self) -> dict[str, Any]:
        best = self.best
        return {
            "bad_evaluations": self.bad_evaluations,
            "best": best if best is None else float_token(best),
            "best_step": self.best_step,
            "cooldown_counter": self.cooldown_counter,
            "lrs": [float_token(x) for x in self.lrs],
        }


class TorchStepper(_PlateauStepper):
    """plateau@1 flavor torch: torch's ``ReduceLROnPlateau.step``, in torch's order."""

    __slots__ = ("_abs_shift", "_held", "_p", "_rel", "_rel_epsilon")

    best: float
    _held: tuple[float, ...] | None  # lrs that a reduction was found to leave as they are
    # (value, better, best, best_step, cooldown_counter before the step, bad evaluations as
    # compared with patience, lrs before the step): what reason() needs
    _last: tuple[float, bool, float, int | None, int, int, tuple[float, ...]] | None

    def __init__(self, p: TorchParams, s: PlateauState, metric: str) -> None:
        assert s.best is not None, "flavor torch starts from best = +/-inf, never None"
        super().__init__(s, metric, p.mode, p.patience, p.cooldown)
        self._p = p
        self._rel = p.threshold_mode == "rel"
        # torch's _is_better computes rel_epsilon = 1.0 - threshold (min) or threshold + 1.0
        # (max) and compares with best * rel_epsilon: that rounding order is part of the
        # contract (not best - best * threshold). In abs mode torch compares with
        # best - threshold (min) or best + threshold (max); IEEE 754 defines a - b as a + (-b),
        # rounded once, so best + (-threshold) is torch's best - threshold to the bit.
        self._rel_epsilon = 1.0 - p.threshold if self._min else p.threshold + 1.0
        self._abs_shift = -p.threshold if self._min else p.threshold
        self._held = None

    def advance(self, step: int, value: float) -> str:
        best = self.best
        best_step = self.best_step
        bad = self.bad_evaluations
        cooldown = self.cooldown_counter
        lrs = self.lrs
        # torch's _is_better (see __init__ for the rounding); NaN compares False: never better
        limit = best * self._rel_epsilon if self._rel else best + self._abs_shift
        better = value < limit if self._min else value > limit
        if better:
            self.best = value
            self.best_step = step
            bad = 0
        else:
            bad += 1
        action = "hold"
        # torch tests the threshold first, then the cooldown: a step in cooldown still moves
        # best, and its bad evaluations are forgotten
        if cooldown > 0:
            self.cooldown_counter = cooldown - 1
            bad = 0
            action = "cooldown"
        if bad > self._patience:  # torch: num_bad_epochs > patience
            # the reduction is a function of the lrs alone: lrs it once left as they were
            # (every group within eps of its floor) are not worked out again
            if lrs is not self._held:
                new = self._reduce(lrs)
                if new != lrs:
                    self.lrs = new
                    action = "reduce"
                else:
                    self._held = lrs
            self.cooldown_counter = self._cooldown
            self.bad_evaluations = 0
        else:
            self.bad_evaluations = bad
        self._last = (value, better, best, best_step, cooldown, bad, lrs)
        self.action = action
        self.reduced = action == "reduce"
        return action

    def _reduce(self, lrs: tuple[float, ...]) -> tuple[float, ...]:
        """torch's _reduce_lr: each group to max(lr * factor, min_lr), moved only if it changes
        by more than eps (a Python float, as in a torch param group)."""
        p = self._p
        factor, eps = p.factor, p.eps
        new = []
        for lr, floor in zip(lrs, common.per_group(p.min_lr, len(lrs)), strict=True):
            candidate = max(lr * factor, floor)
            new.append(candidate if lr - candidate > eps else lr)
        return tuple(new)

    def reason(self) -> str:
        value, better, best, best_step, cooldown, bad, before = self._advanced()
        p, lrs = self._p, self.lrs
        rule = f"{p.threshold_mode} threshold {fmt(p.threshold)}"
        text = _seen_text(self._metric, value, better, best, best_step, rule)
        reduced = self.action == "reduce"
        response = p.reduction_text(reduced, before, lrs) if bad > p.patience else ""
        return text + p.patience_text(better, cooldown, bad, lrs, response)


class KerasStepper(_PlateauStepper):
    """plateau@1 flavor keras: keras' ``ReduceLROnPlateau.on_epoch_end``, in keras' order."""

    __slots__ = ("_best_f32", "_floored", "_p", "_signed_delta")

    _best_f32: float  # to_f32(best), kept with best: keras compares float32 tensors
    _floored: tuple[float, ...] | None  # lrs that a reduction found all at their min_lr
    # (value, improved, best, best_step, cooldown_counter before the step, wait as compared
    # with patience, lrs before the step): what reason() needs
    _last: tuple[float, bool, float | None, int | None, int, int, tuple[float, ...]] | None

    def __init__(self, p: KerasParams, s: PlateauState, metric: str) -> None:
        super().__init__(s, metric, p.mode, p.patience, p.cooldown)
        self._p = p
        # keras: monitor_op(current - min_delta, best), with min_delta negated for mode min
        self._signed_delta = -p.min_delta if self._min else p.min_delta
        self._floored = None
        self._best_f32 = to_f32(s.best) if s.best is not None else math.nan

    def advance(self, step: int, value: float) -> str:
        best = self.best
        best_step = self.best_step
        cooldown = cooldown_before = self.cooldown_counter
        wait = self.bad_evaluations
        lrs = self.lrs
        action = "hold"
        # keras runs the cooldown before the improvement test
        if cooldown > 0:
            cooldown -= 1
            wait = 0
            action = "cooldown"
        if best is None:
            improved = True  # keras takes its first evaluation as best, whatever it is (NaN too)
        else:
            # keras: monitor_op(current - min_delta, best) on float32 tensors
            lhs = to_f32(value - self._signed_delta)
            improved = lhs < self._best_f32 if self._min else lhs > self._best_f32
        if improved:
            self.best = value
            self._best_f32 = to_f32(value)
            self.best_step = step
            wait = 0
        elif cooldown == 0:
            wait += 1
            # keras: wait >= patience. Once every lr is at its min_lr, keras' wait grows on and
            # on and every evaluation tries again: lrs found all at their floor are not re-tried.
            if wait >= self._patience and lrs is not self._floored:
                new = self._reduce(lrs)
                if new is None:
                    self._floored = lrs
                else:
                    self.lrs = new
                    action = "reduce"
                    cooldown = self._cooldown
        self._last = (value, improved, best, best_step, cooldown_before, wait, lrs)
        self.cooldown_counter = cooldown
        self.action = action
        if action == "reduce":
            self.bad_evaluations = 0
            self.reduced = True
        else:
            self.bad_evaluations = wait
            self.reduced = False
        return action

    def _reduce(self, lrs: tuple[float, ...]) -> tuple[float, ...] | None:
        """keras' reduction, or None when every lr is at its min_lr: a group moves if its
        float32 lr is above float32(min_lr), to max(lr * factor, min_lr) stored in float32
        (which can round back to the same lr: keras still counts it as a reduction)."""
        p = self._p
        factor, floors = p.factor, common.per_group(p.min_lr, len(lrs))
        # keras compares the float32 lr with np.float32(min_lr)
        reducible = [lr > to_f32(floor) for lr, floor in zip(lrs, floors, strict=True)]
        if not any(reducible):
            return None
        return tuple(
            to_f32(max(lr * factor, floor)) if r else lr
            for lr, floor, r in zip(lrs, floors, reducible, strict=True)
        )

    def reason(self) -> str:
        value, improved, best, best_step, cooldown, wait, before = self._advanced()
        p = self._p
        held = f": {fmt_lrs(self.lrs)} held"
        if best is None:
            text = f"{self._metric} {fmt(value)} is the first evaluation and sets best"
        else:
            rule = f"min_delta {fmt(p.min_delta)}"
            text = _seen_text(self._metric, value, improved, best, best_step, rule)
        left = cooldown - 1 if cooldown > 0 else 0  # after this step's countdown
        if improved:
            if cooldown > 0:
                text += f", in cooldown ({plural(left, 'evaluation')} left)"
            return text + held
        if left > 0:
            return text + f", in cooldown ({plural(left, 'evaluation')} left)" + held
        if wait < p.patience:
            return text + f" for {plural(wait, 'evaluation')} (patience {p.patience})" + held
        text += f" for {plural(wait, 'evaluation')} >= patience {p.patience}"
        if self.action != "reduce":
            return text + ", but every lr is at its min_lr" + held
        text += f": {fmt_change(before, self.lrs)}"
        if p.cooldown:
            text += f", then cooldown {p.cooldown}"
        return text
