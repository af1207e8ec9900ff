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
import struct
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictFloat, StrictInt, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from lrpilot.policies.base import (
    Frozen,
    Loc,
    Observation,
    Outcome,
    PolicyError,
    State,
    fmt,
    fmt_change,
    fmt_lrs,
)


def _check_min_lr(v: float | list[float]) -> float | list[float]:
    values = v if isinstance(v, list) else [v]
    if not values or not all(math.isfinite(x) and x >= 0.0 for x in values):
        raise PydanticCustomError(
            "min_lr",
            "must be a finite number >= 0, or a non-empty list of them (one per param group)",
        )
    return v


# Strict floats: true and "0.2" are refused, JSON ints are taken (as floats).
MinLr = Annotated[StrictFloat | list[StrictFloat], AfterValidator(_check_min_lr)]
Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class TorchParams(Frozen):
    """torch.optim.lr_scheduler.ReduceLROnPlateau's arguments, names and defaults."""

    flavor: Literal["torch"] = "torch"
    mode: Literal["min", "max"] = "min"
    factor: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Count = 10
    threshold: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: Count = 0
    min_lr: MinLr = 0.0
    eps: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-8


class KerasParams(Frozen):
    """keras.callbacks.ReduceLROnPlateau's arguments (mode 'auto' is not taken: say min or max)."""

    flavor: Literal["keras"]
    mode: Literal["min", "max"] = "min"
    factor: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Count = 10
    min_delta: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-4
    cooldown: Count = 0
    min_lr: MinLr = 0.0


Params = TorchParams | KerasParams
_SCHEMA_ADAPTER: TypeAdapter[Params] = TypeAdapter(
    Annotated[TorchParams | KerasParams, Field(discriminator="flavor")]
)


class PlateauState(State):
    best: float | None  # None only in keras before the first evaluation
    best_step: int | None
    bad_evaluations: int  # torch's num_bad_epochs, keras' wait
    cooldown_counter: int


def to_f32(x: float) -> float:
    """The nearest float32 (ties to even), as a float32 tensor or variable rounds a double."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", x))[0])
    except OverflowError:  # rounds beyond float32's largest finite value
        return math.copysign(math.inf, x)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Plateau:
    name: ClassVar[str] = "plateau"
    version: ClassVar[int] = 1
    description: ClassVar[str] = (
        "Reduce the learning rate by `factor` when the metric has not improved for `patience` "
        "evaluations. flavor 'torch' (default) reproduces torch's ReduceLROnPlateau exactly, "
        "flavor 'keras' reproduces keras' ReduceLROnPlateau exactly."
    )
    actions: ClassVar[tuple[str, ...]] = ("hold", "reduce", "cooldown")

    def params_schema(self) -> dict[str, Any]:
        return _SCHEMA_ADAPTER.json_schema()

    def defaults(self) -> dict[str, Any]:
        return TorchParams().model_dump()

    def resolve(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Params:
        try:
            return _resolve(params, base_lrs)
        except PolicyError as exc:  # locs relative to the run spec's "policy" object
            raise PolicyError([(("params", *loc), msg) for loc, msg in exc.errors]) from None

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

    def load_state(self, data: dict[str, Any]) -> PlateauState:
        return PlateauState.model_validate(data)

    def step(self, params: Frozen, state: State, obs: Observation) -> tuple[Outcome, PlateauState]:
        assert isinstance(state, PlateauState)
        if isinstance(params, KerasParams):
            return _keras_step(params, state, obs)
        assert isinstance(params, TorchParams)
        return _torch_step(params, state, obs)


def _resolve(params: dict[str, Any], base_lrs: tuple[float, ...]) -> Params:
    flavor = params.get("flavor", "torch")
    model: type[TorchParams] | type[KerasParams]
    if flavor == "torch":
        model = TorchParams
    elif flavor == "keras":
        model = KerasParams
    else:
        raise PolicyError([(("flavor",), f"flavor must be 'torch' or 'keras', got {flavor!r}")])
    try:
        resolved: Params = model.model_validate(params)
    except ValidationError as exc:
        raise PolicyError(
            [
                (
                    tuple(e["loc"]),
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})",
                )
                for e in exc.errors()
            ]
        ) from None
    errors: list[tuple[Loc, str]] = []
    if (
        isinstance(resolved, TorchParams)
        and resolved.threshold_mode == "rel"
        and resolved.mode == "min"
        and resolved.threshold >= 1.0
    ):
        errors.append(
            (
                ("threshold",),
                f"threshold must be < 1 with threshold_mode 'rel' and mode 'min' "
                f"(best * (1 - threshold) must stay positive), got {resolved.threshold!r}",
            )
        )
    if isinstance(resolved.min_lr, list) and len(resolved.min_lr) != len(base_lrs):
        errors.append(
            (
                ("min_lr",),
                f"min_lr has {len(resolved.min_lr)} values but there are {len(base_lrs)} "
                "param groups (base_lrs): give one value, or one per param group",
            )
        )
    if errors:
        raise PolicyError(errors)
    return resolved


def _min_lrs(min_lr: float | list[float], n: int) -> list[float]:
    return list(min_lr) if isinstance(min_lr, list) else [min_lr] * n


def _best_text(best: float | None, best_step: int | None) -> str:
    at = f" (step {best_step})" if best_step is not None else ""
    return f"best {fmt(best) if best is not None else 'none'}{at}"


def _torch_is_better(p: TorchParams, a: float, best: float) -> bool:
    # Written as torch writes it: the rounding of best * (1 - threshold) is part of the contract.
    if p.mode == "min" and p.threshold_mode == "rel":
        return a < best * (1.0 - p.threshold)
    if p.mode == "min":
        return a < best - p.threshold
    if p.threshold_mode == "rel":
        return a > best * (p.threshold + 1.0)
    return a > best + p.threshold


def _torch_step(p: TorchParams, s: PlateauState, obs: Observation) -> tuple[Outcome, PlateauState]:
    current = obs.value
    best, best_step = s.best, s.best_step
    assert best is not None
    better = _torch_is_better(p, current, best)
    rule = f"{p.threshold_mode} threshold {fmt(p.threshold)}"
    seen = f"{obs.metric} {fmt(current)}"
    if better:
        text = f"{seen} improved on {_best_text(best, best_step)} beyond {rule}"
        best, best_step, bad = current, obs.step, 0
    else:
        verb = "is not a number and cannot improve" if math.isnan(current) else "did not improve"
        text = f"{seen} {verb} on {_best_text(best, best_step)} beyond {rule}"
        bad = s.bad_evaluations + 1

    cooldown = s.cooldown_counter
    in_cooldown = cooldown > 0
    if in_cooldown:
        cooldown -= 1
        bad = 0  # torch ignores bad evaluations in cooldown
        text += f", in cooldown ({_plural(cooldown, 'evaluation')} left)"

    lrs = s.lrs
    action = "cooldown" if in_cooldown else "hold"
    if bad > p.patience:
        new = []
        for lr, floor in zip(lrs, _min_lrs(p.min_lr, len(lrs)), strict=True):
            candidate = max(lr * p.factor, floor)
            new.append(candidate if lr - candidate > p.eps else lr)
        text += f" for {_plural(bad, 'evaluation')} > patience {p.patience}"
        if tuple(new) != lrs:
            text += f": {fmt_change(lrs, tuple(new))}"
            if p.cooldown:
                text += f", then cooldown {p.cooldown}"
            lrs, action = tuple(new), "reduce"
        else:
            text += (
                f", but no lr would change by more than eps {fmt(p.eps)}: {fmt_lrs(lrs)} held"
            )
        cooldown, bad = p.cooldown, 0
    else:
        if not better and not in_cooldown:
            text += f" for {_plural(bad, 'evaluation')} (patience {p.patience})"
        text += f": {fmt_lrs(lrs)} held"

    state = PlateauState(
        lrs=lrs, best=best, best_step=best_step, bad_evaluations=bad, cooldown_counter=cooldown
    )
    return Outcome(lrs=lrs, action=action, reason=text, reduced=action == "reduce"), state


def _keras_step(p: KerasParams, s: PlateauState, obs: Observation) -> tuple[Outcome, PlateauState]:
    current = obs.value
    seen = f"{obs.metric} {fmt(current)}"
    cooldown, wait = s.cooldown_counter, s.bad_evaluations
    in_cooldown = cooldown > 0
    if in_cooldown:
        cooldown -= 1
        wait = 0

    best, best_step = s.best, s.best_step
    # keras: monitor_op(current - min_delta, best) on float32 tensors, min_delta negated for min.
    signed_delta = -p.min_delta if p.mode == "min" else p.min_delta
    rule = f"min_delta {fmt(p.min_delta)}"
    if best is None:
        improved = True
        text = f"{seen} is the first evaluation and sets best"
    else:
        lhs, rhs = to_f32(current - signed_delta), to_f32(best)
        improved = lhs < rhs if p.mode == "min" else lhs > rhs
        if improved:
            text = f"{seen} improved on {_best_text(best, best_step)} beyond {rule}"
        else:
            verb = (
                "is not a number and cannot improve" if math.isnan(current) else "did not improve"
            )
            text = f"{seen} {verb} on {_best_text(best, best_step)} beyond {rule}"

    lrs = s.lrs
    action = "cooldown" if in_cooldown else "hold"
    if improved:
        best, best_step, wait = current, obs.step, 0
        if in_cooldown:
            text += f", in cooldown ({_plural(cooldown, 'evaluation')} left)"
        text += f": {fmt_lrs(lrs)} held"
    elif cooldown > 0:
        text += f", in cooldown ({_plural(cooldown, 'evaluation')} left): {fmt_lrs(lrs)} held"
    else:
        wait += 1
        if wait >= p.patience:
            floors = _min_lrs(p.min_lr, len(lrs))
            # keras compares the float32 lr with np.float32(min_lr), then stores in float32
            reducible = [lr > to_f32(floor) for lr, floor in zip(lrs, floors, strict=True)]
            text += f" for {_plural(wait, 'evaluation')} >= patience {p.patience}"
            if any(reducible):
                new = tuple(
                    to_f32(max(lr * p.factor, floor)) if r else lr
                    for lr, floor, r in zip(lrs, floors, reducible, strict=True)
                )
                text += f": {fmt_change(lrs, new)}"
                if p.cooldown:
                    text += f", then cooldown {p.cooldown}"
                lrs, action = new, "reduce"
                cooldown, wait = p.cooldown, 0
            else:
                text += f", but every lr is at its min_lr: {fmt_lrs(lrs)} held"
        else:
            text += (
                f" for {_plural(wait, 'evaluation')} (patience {p.patience}): {fmt_lrs(lrs)} held"
            )

    state = PlateauState(
        lrs=lrs, best=best, best_step=best_step, bad_evaluations=wait, cooldown_counter=cooldown
    )
    return Outcome(lrs=lrs, action=action, reason=text, reduced=action == "reduce"), state
