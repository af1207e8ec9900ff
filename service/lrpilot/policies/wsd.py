"""``wsd@1``: warmup, a stable phase at the base lrs, then a decay to a floor (warmup-stable-decay).

transformers' ``get_wsd_schedule``'s arguments, names and defaults, and its values: at every
setting the two share, the lrs are the base lrs times transformers' factor, in its float
operations (linear and 1-sqrt shapes bit for bit; a cosine within a few ulps: transformers
calls libm's cos, lrpilot a fixed polynomial, ``lrpilot.policies.arith``). With ``W`` =
``num_warmup_steps``, ``S`` the decay's first step, ``D`` its length, ``m`` = ``min_lr_ratio``,
the factor at training step k is:

* **warmup** (k < W): ``p = float(k) / float(W)``, ``f`` = p (linear), ``(1 - cos(pi p)) / 2``
  (cosine), ``1 - sqrt(1 - p)`` (1-sqrt), then ``max(0.0, f * (1.0 - m) + m)``; or
  ``m ** (1 - p)`` (exponential: from m to 1 geometrically, m > 0);
* **stable** (W <= k < S): 1.0;
* **decay** (S <= k < S + D): ``p = float(k - S) / float(D)``, ``f`` = 1 - p (linear),
  ``(1 + cos(2 pi num_cycles p)) / 2`` (cosine), ``1 - sqrt(p)`` (1-sqrt), then
  ``max(0.0, f * (1.0 - m) + m)``; or ``m ** p`` (exponential, m > 0); or ``drop_factor ** j``
  (step: j is how many of ``drop_at``, fractions of the decay, are <= p: DeepSeek's x0.316 at
  80% and 90% of a run is S at 80%, D 20%, drop_at [0.0, 0.5]);
* **after** (k >= S + D): m.

Where the decay starts: ``S = W + num_stable_steps``; else ``floor(decay_start_fraction *
num_training_steps)``; else ``num_training_steps - num_decay_steps`` (transformers' rule). ``D``
is ``num_decay_steps``, else what is left of ``num_training_steps`` after S. With none of
``num_stable_steps``, ``num_training_steps`` and ``decay_start_fraction`` (transformers refuses
this) the stable phase lasts until the run decides the decay: on a plateau of the metric, or
(later) by a cooldown on demand.

**Decided during the run.** The state holds the decay when the run decided it
(``decay_start``, ``decay_steps``, ``decay_type``; null: the params' own), and what the plateau
trigger has seen (``best``, ``bad_evaluations``). With ``plateau`` set, evaluations in the
stable phase (W <= step < S) run torch's ReduceLROnPlateau rule (mode, threshold,
threshold_mode; a NaN never improves): ``bad_evaluations > patience`` starts the decay at that
evaluation's step, D = ``num_decay_steps`` long (action "decay", counted as a reduction); the
trigger fires once. A cooldown on demand is ``Wsd.cooldown``: the same three state fields set
from a logged request (the route that logs it is a later addition: no new version needed).

The lrs at a step are a function of the params and those state fields: the run's evaluations
do not change them until a decay is decided, so ``open_loop`` is False (a decision may move
the decay's start).
"""

from __future__ import annotations

from fractions import Fraction
from math import floor, inf, sqrt
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, PrivateAttr, StrictFloat

from lrpilot.canonical import float_token
from lrpilot.policies import common
from lrpilot.policies.arith import cos2_frac, cos2_turns, exp, ipow, log
from lrpilot.policies.base import (
    Cooldown,
    FieldStepper,
    Frozen,
    Horizon,
    Loc,
    PolicyError,
    State,
    check_step,
)
from lrpilot.policies.curve import Curve, Schedule, ScheduleParams, Steps, WarmupType, warmup_ramp
from lrpilot.policies.text import fmt, fmt_change, fmt_lrs, plural

DecayType = Literal["linear", "cosine", "1-sqrt", "exponential", "step"]
Ratio = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]


class WsdPlateau(Frozen):
    """A plateau of the metric that starts the decay: torch's ReduceLROnPlateau's names,
    defaults and comparison (no factor, cooldown or min_lr: the response is the decay)."""

    mode: Literal["min", "max"] = "min"
    patience: common.Count = 10
    threshold: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"

    def improves(self, a: float, best: float) -> bool:
        """torch's _is_better(a, best), in its arithmetic (a NaN never improves)."""
        t = self.threshold
        if self.mode == "min":
            return a < (best * (1.0 - t) if self.threshold_mode == "rel" else best - t)
        return a > (best * (t + 1.0) if self.threshold_mode == "rel" else best + t)


class WsdParams(ScheduleParams):
    """transformers' get_wsd_schedule's arguments, names and defaults, plus the decay shapes
    and starts it lacks and the plateau trigger."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"num_warmup_steps": 1000, "num_decay_steps": 2000, "num_training_steps": 20000},
                {
                    "num_warmup_steps": 2000,
                    "num_training_steps": 100000,
                    "decay_start_fraction": 0.8,
                    "decay_type": "step",
                    "drop_at": [0.0, 0.5],
                    "drop_factor": 0.316,
                },
                {
                    "num_warmup_steps": 500,
                    "num_decay_steps": 5000,
                    "decay_type": "1-sqrt",
                    "plateau": {"patience": 5},
                },
            ]
        }
    )

    num_warmup_steps: Annotated[Steps, Field(description="steps of the warmup to the base lrs")]
    num_decay_steps: Annotated[
        Steps | None,
        Field(description="steps of the decay (null: the rest of num_training_steps)"),
    ] = None
    num_training_steps: Annotated[
        Steps | None,
        Field(description="the horizon: warmup + stable + decay (transformers' rule)"),
    ] = None
    num_stable_steps: Annotated[
        Steps | None,
        Field(description="steps at the base lrs after the warmup (wins over the horizon)"),
    ] = None
    warmup_type: WarmupType = "linear"
    decay_type: DecayType = "cosine"
    min_lr_ratio: Annotated[Ratio, Field(description="the floor, as a ratio of the base lrs")] = 0.0
    num_cycles: Annotated[
        StrictFloat,
        Field(ge=0.0, allow_inf_nan=False, description="cosine decay: waves (0.5: a half-cosine)"),
    ] = 0.5
    decay_start_fraction: Annotated[
        StrictFloat | None,
        Field(gt=0.0, le=1.0, description="the decay starts at this fraction of the horizon"),
    ] = None
    drop_at: Annotated[
        list[Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]],
        Field(max_length=64, description="step decay: drops at these fractions of the decay"),
    ] = Field(default_factory=lambda: [0.0, 0.5])
    drop_factor: Annotated[
        StrictFloat, Field(gt=0.0, le=1.0, description="step decay: each drop's factor")
    ] = 0.316
    plateau: Annotated[
        WsdPlateau | None,
        Field(description="start the decay when the metric stalls in the stable phase"),
    ] = None

    # the curve of the decay a run decided (one at a time): built on first use
    _decided: dict[tuple[int | None, int | None, str | None], Curve] = PrivateAttr(
        default_factory=dict
    )

    def decay_start(self) -> int | None:
        """The planned decay's first step (None: until the run decides it)."""
        w, t = self.num_warmup_steps, self.num_training_steps
        if self.num_stable_steps is not None:
            return w + self.num_stable_steps
        if self.decay_start_fraction is not None and t is not None:
            return floor(Fraction(self.decay_start_fraction) * t)
        if t is not None and self.num_decay_steps is not None:
            return t - self.num_decay_steps
        return None

    def decay_length(self, start: int | None) -> int | None:
        if self.num_decay_steps is not None:
            return self.num_decay_steps
        if self.num_training_steps is not None and start is not None:
            return self.num_training_steps - start
        return None

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        errors: list[tuple[Loc, str]] = []
        w, t = self.num_warmup_steps, self.num_training_steps
        if self.num_stable_steps is not None and self.decay_start_fraction is not None:
            errors.append(
                (
                    ("decay_start_fraction",),
                    "give num_stable_steps or decay_start_fraction, not both: each says where "
                    "the decay starts",
                )
            )
        if self.decay_start_fraction is not None and t is None:
            errors.append(
                (("num_training_steps",), "decay_start_fraction is a fraction of it: required")
            )
        alone = self.num_stable_steps is None and self.decay_start_fraction is None
        if t is not None and alone and self.num_decay_steps is None:
            errors.append(
                (
                    ("num_decay_steps",),
                    "required with num_training_steps alone (or give num_stable_steps or "
                    "decay_start_fraction): where would the decay start?",
                )
            )
        start = self.decay_start()
        if start is not None and start < w:
            errors.append(
                (
                    ("num_warmup_steps",),
                    f"the decay would start at step {start}, inside the warmup "
                    f"(num_warmup_steps {w}): the stable phase would last {start - w} steps",
                )
            )
        if start is not None and t is not None and start > t:
            errors.append(
                (
                    ("num_training_steps",),
                    f"the decay would start at step {start}, after num_training_steps {t}",
                )
            )
        if start is not None and self.decay_length(start) is None:
            errors.append(
                (("num_decay_steps",), "required: how long is the decay? (or num_training_steps)")
            )
        if self.plateau is not None and self.num_decay_steps is None:
            errors.append(
                (("num_decay_steps",), "required with plateau: the decay it starts lasts that long")
            )
        for loc, kind in (("warmup_type", self.warmup_type), ("decay_type", self.decay_type)):
            if kind == "exponential" and self.min_lr_ratio == 0.0:
                errors.append(
                    (
                        (loc,),
                        f"{loc} exponential goes geometrically to min_lr_ratio: it needs "
                        "min_lr_ratio > 0",
                    )
                )
        return errors

    def _curve(self, base: tuple[float, ...]) -> Curve:
        start = self.decay_start()
        return self.curve_with(base, start, self.decay_length(start), self.decay_type)

    def curve_with(
        self, base: tuple[float, ...], start: int | None, length: int | None, shape: str
    ) -> Curve:
        """step -> lrs with the decay from ``start`` (None: none yet), ``length`` steps long,
        of ``shape``."""
        w, m = self.num_warmup_steps, self.min_lr_ratio
        warm, keep, log_m = float(max(1, w)), 1.0 - m, log(m) if m > 0.0 else -inf
        cycles = self.num_cycles
        drops, drop = sorted(self.drop_at), self.drop_factor
        floor_lrs = tuple([b * m for b in base])
        span = float(max(1, length or 0))

        ramp = warmup_ramp(self.warmup_type, m)

        def warmup(k: int) -> float:
            return ramp(float(k) / warm)

        def decay(p: float) -> float:
            if shape == "exponential":
                return exp(p * log_m)
            if shape == "step":
                return ipow(drop, sum(1 for d in drops if d <= p))
            if shape == "linear":
                f = 1.0 - p
            elif shape == "cosine":
                f = cos2_frac(p) if cycles == 0.5 else cos2_turns(cycles * p)
            else:
                f = 1.0 - sqrt(p)
            return max(0.0, f * keep + m)

        def curve(k: int) -> tuple[float, ...]:
            if k < w:
                f = warmup(k)
            elif start is None or k < start:
                return base
            elif length is None or k >= start + length:
                return floor_lrs
            else:
                f = decay(float(k - start) / span)
            return tuple([b * f for b in base])

        return curve


class WsdState(State):
    """The lrs, the decay as the run decided it (null: the params' own) and what the plateau
    trigger has seen."""

    decay_start: int | None = None
    decay_steps: int | None = None
    decay_type: DecayType | None = None
    best: float = inf
    bad_evaluations: int = 0


def _curve_for(p: WsdParams, start: int | None, steps: int | None, shape: str | None) -> Curve:
    """The curve with the decay a run decided (``start`` None: the params' own)."""
    if start is None:
        return p.curve
    key = (start, steps, shape)
    curve = p._decided.get(key)
    if curve is None:
        curve = p.curve_with(p._base_lrs, start, steps, shape or p.decay_type)
        p._decided.clear()  # one decided decay in force at a time
        p._decided[key] = curve
    return curve


class Wsd(Schedule):
    """warmup-stable-decay: a schedule whose decay a run may decide (the state holds it)."""

    open_loop = False
    state_model = WsdState
    params_model: type[WsdParams]

    def __init__(self) -> None:
        super().__init__(
            "wsd",
            WsdParams,
            "Warmup (linear, cosine, 1-sqrt or exponential), a stable phase at the base lrs, "
            "then a decay (linear, cosine, 1-sqrt, exponential or step drops) to min_lr_ratio "
            "times the base lrs: transformers' get_wsd_schedule, its names and values; the decay "
            "starts at a step, a fraction of the horizon, or on a plateau of the metric.",
        )

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> WsdState:
        state = super().init(params, base_lrs)
        assert isinstance(params, WsdParams)
        best = -inf if params.plateau is not None and params.plateau.mode == "max" else inf
        return WsdState(lrs=state.lrs, best=best)

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(params, WsdParams) and isinstance(state, WsdState)
        check_step(step)
        return _curve_for(params, state.decay_start, state.decay_steps, state.decay_type)(step)

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> WsdStepper:
        assert isinstance(params, WsdParams) and isinstance(state, WsdState)
        return WsdStepper(params, state, metric)

    cooldown_shapes = get_args(DecayType)

    def horizon(self, params: Frozen, state: State) -> Horizon | None:
        """The decay's end (its start is the peak), as the run decided it or as planned;
        none while the stable phase has no end yet."""
        assert isinstance(params, WsdParams) and isinstance(state, WsdState)
        decided = state.decay_start is not None
        start = state.decay_start if decided else params.decay_start()
        length = state.decay_steps if decided else params.decay_length(start)
        if start is None or length is None:
            return None
        return Horizon("num_training_steps", start, start + length)

    def _cooldown(self, params: Frozen, state: State, asked: Cooldown) -> WsdState:
        """The state with the decay started at ``at_step`` for ``steps`` steps (``shape``, null:
        the params' decay_type): a cooldown on demand. PolicyError when ``at_step`` is already
        decided (at or before ``last_step``), in the warmup, or once the decay has begun."""
        assert isinstance(params, WsdParams) and isinstance(state, WsdState)
        at_step, steps, shape, last_step = asked
        if shape is not None and shape not in self.cooldown_shapes:
            why = f"shape {shape!r} is not one of {', '.join(self.cooldown_shapes)}"
            raise PolicyError([(("shape",), why)])
        start = state.decay_start if state.decay_start is not None else params.decay_start()
        if last_step is not None and at_step <= last_step:
            why = f"step {at_step} is already decided (the run's last step is {last_step})"
        elif (state.decay_start, state.decay_steps, state.decay_type) == (at_step, steps, shape):
            return state  # this very cooldown is in force: a retry
        elif at_step < params.num_warmup_steps:
            why = f"step {at_step} is in the warmup (num_warmup_steps {params.num_warmup_steps})"
        elif start is not None and at_step >= start:
            why = f"the decay starts at step {start}: there is no stable phase left at {at_step}"
        elif (shape or params.decay_type) == "exponential" and params.min_lr_ratio == 0.0:
            why = "an exponential decay goes geometrically to min_lr_ratio: it needs one > 0"
        else:
            return state.model_copy(
                update={"decay_start": at_step, "decay_steps": steps, "decay_type": shape}
            )
        raise PolicyError([(("at_step",), why)])


class WsdStepper(FieldStepper):
    """A WSD run's state as plain attributes: each advance runs the plateau trigger (if any)
    on the value, then answers the curve at the step."""

    __slots__ = (
        "_p",
        "_planned",
        "bad_evaluations",
        "best",
        "decay_start",
        "decay_steps",
        "decay_type",
    )

    state_model = WsdState
    decay_start: int | None
    decay_steps: int | None
    decay_type: DecayType | None
    best: float
    bad_evaluations: int
    # (lrs before, step, value, the trigger's words or ""): what reason() needs with the state
    _last: tuple[tuple[float, ...], int, float, str] | None

    def __init__(self, p: WsdParams, s: WsdState, metric: str) -> None:
        super().__init__(s, metric)
        self._p, self._planned = p, p.decay_start()

    def _trigger(self, step: int, value: float) -> tuple[str, bool]:
        """The plateau trigger on one evaluation: its words for the reason ("" if it did not
        look: no trigger, not the stable phase, the decay already decided), and whether it
        started the decay."""
        p, rule, planned = self._p, self._p.plateau, self._planned
        if (
            rule is None
            or self.decay_start is not None
            or step < p.num_warmup_steps
            or (planned is not None and step >= planned)
        ):
            return "", False
        best = self.best
        if rule.improves(value, best):
            self.best, self.bad_evaluations = value, 0
            return f"; {self._metric} {fmt(value)} improved on best {fmt(best)}", False
        self.bad_evaluations += 1
        bad = self.bad_evaluations
        text = f"; {self._metric} {fmt(value)} did not improve on best {fmt(best)} for "
        if bad <= rule.patience:
            return text + f"{plural(bad, 'evaluation')} (patience {rule.patience})", False
        self.decay_start, self.decay_steps = step, p.num_decay_steps
        return text + (
            f"{plural(bad, 'evaluation')} > patience {rule.patience}: a plateau, the decay "
            "starts here"
        ), True

    def _phase(self, step: int) -> str:
        p = self._p
        start = self.decay_start if self.decay_start is not None else self._planned
        length = self.decay_steps if self.decay_start is not None else p.decay_length(start)
        if step < p.num_warmup_steps:
            return f"{p.warmup_type} warmup to step {p.num_warmup_steps}"
        if start is None or step < start:
            return "stable" + ("" if start is None else f" until step {start}")
        shape = self.decay_type or p.decay_type
        assert length is not None  # a decay has a length (WsdParams._check, cooldown)
        if step < start + length:
            return f"{shape} decay from step {start} to {start + length}"
        return f"after the decay (min_lr_ratio {fmt(p.min_lr_ratio)})"

    def advance(self, step: int, value: float) -> str:
        before = self.lrs
        trigger, fired = self._trigger(step, value)
        lrs = _curve_for(self._p, self.decay_start, self.decay_steps, self.decay_type)(step)
        if fired:
            action = "decay"
        elif lrs == before:
            action = "hold"
        else:
            action = "warmup" if any(a > b for a, b in zip(lrs, before, strict=True)) else "decay"
        if lrs != before:
            self.lrs = lrs
        self.reduced = fired
        self._last = (before, step, value, trigger)
        self.action = action
        return action

    def reason(self) -> str:
        before, step, value, trigger = self._advanced()
        phase = self._phase(step)
        change = f"{fmt_lrs(self.lrs)} held" if self.lrs == before else fmt_change(before, self.lrs)
        logged = trigger or f" ({self._metric} {fmt(value)} logged)"
        return f"wsd at step {step}, {phase}: {change}{logged}"

    def state_doc(self) -> dict[str, Any]:
        return {
            "lrs": [float_token(x) for x in self.lrs],
            "decay_start": self.decay_start,
            "decay_steps": self.decay_steps,
            "decay_type": self.decay_type,
            "best": float_token(self.best),
            "bad_evaluations": self.bad_evaluations,
        }


WSD = Wsd()
