"""A retime: a running schedule given a new horizon without a jump in lr, applied around the
policy, whose own rule and state are untouched.

A retimed run's state is the policy's own state (``inner``, as its entries hold it) and a
*time map*: piecewise linear, from the training step to the schedule's step. The policy is
asked at the schedule's step (its reasons say that step; the wrapper adds the training step).
The map's segments are integers: the schedule's step at training step k of a segment from
(k0, s0) to (k1, s1) is ``s0 + (k - k0) * (s1 - s0) // (k1 - k0)``, exact and the same on
every machine; from k1 on, one schedule step a training step again (the schedule's own
behaviour past its horizon: a cosine climbs back, torch's way; the others hold).

Two modes, both without a jump at ``at_step`` (a):

* ``keep_fraction``: the fraction of the schedule done at a is kept, and the rest of the
  schedule is finished over the new horizon: the segment (a, s(a)) -> (horizon, end).
* ``keep_lr``: the lr at a is kept and the rest of the curve is fitted from there: the
  schedule's last decay (from its peak to its end) is run again over [a, horizon], its values
  mapped affinely, each group's, so that it starts at the lr in force at a and still ends at
  the schedule's floor: ``floor + (lr - floor) * ratio``. Before the peak (a warmup) there is
  no decay to fit yet: refused.

A policy declares its horizon on the contract (``Policy.horizon``: the param, the peak and the
end, in schedule steps; None: it has none and cannot be retimed). Runs that are never retimed
never see this module's state: their entries keep the bytes they always had.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, StrictFloat, StrictInt

from lrpilot.canonical import float_token
from lrpilot.policies.base import (
    Cooldown,
    Extras,
    Frozen,
    Horizon,
    Policy,
    PolicyError,
    State,
    Stepper,
    check_step,
    extras_of,
)
from lrpilot.policies.text import fmt_lrs

Mode = Literal["keep_lr", "keep_fraction"]
MODES: tuple[str, ...] = ("keep_lr", "keep_fraction")
MAX_SEGMENTS = 64  # retimes a run's state holds (a segment each)


class Segment(Frozen):
    """From training step ``k0`` (schedule step ``s0``) to ``k1`` (``s1``), linearly, then one
    schedule step a training step; in force until the next segment's ``k0``. With a value map
    (``floor``, ``ratio``: one each a group) when it re-fits the curve (keep_lr)."""

    k0: StrictInt
    s0: StrictInt
    k1: StrictInt
    s1: StrictInt
    mode: Mode
    floor: list[StrictFloat] | None = None
    ratio: list[StrictFloat] | None = None

    def at(self, k: int) -> int:
        if k >= self.k1:
            return self.s1 + (k - self.k1)
        return self.s0 + (k - self.k0) * (self.s1 - self.s0) // (self.k1 - self.k0)


class RetimedState(State):
    """The policy's own state as its entries hold it, and the time map (its segments in
    training-step order; a step before the first is the schedule's own step)."""

    inner: dict[str, Any]
    timemap: list[Segment] = Field(max_length=MAX_SEGMENTS)
    _parsed: State | None = PrivateAttr(default=None)


def schedule_step(timemap: list[Segment], k: int) -> int:
    """The schedule's step at training step ``k``."""
    for segment in reversed(timemap):
        if k >= segment.k0:
            return segment.at(k)
    return k


def _segment_at(timemap: list[Segment], k: int) -> Segment | None:
    for segment in reversed(timemap):
        if k >= segment.k0:
            return segment
    return None


def _mapped(segment: Segment | None, lrs: tuple[float, ...]) -> tuple[float, ...]:
    if segment is None or segment.floor is None or segment.ratio is None:
        return lrs
    return tuple(
        [f + (x - f) * r for x, f, r in zip(lrs, segment.floor, segment.ratio, strict=True)]
    )


class Retimed(Policy):
    """``policy`` with retimes: the same name, version, params and rule; a retimed state is
    answered through its time map, any other state by the policy itself."""

    def __init__(self, policy: Policy) -> None:
        self.inner = policy
        self.name, self.version = policy.name, policy.version
        self.description = policy.description
        self.params_model = policy.params_model
        self.actions = policy.actions  # type: ignore[misc]
        self.open_loop = policy.open_loop  # type: ignore[misc]
        self.from_step_zero = policy.from_step_zero  # type: ignore[misc]
        self.state_model = policy.state_model  # type: ignore[misc]
        self.cooldown_shapes = policy.cooldown_shapes  # type: ignore[misc]

    # the policy's own: params, its initial state, its horizon ----------------------------

    def resolve(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        return self.inner.resolve(params, base_lrs)

    def resolve_params(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        return self.inner.resolve_params(params, base_lrs)

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> State:
        return self.inner.init(params, base_lrs)

    def horizon(self, params: Frozen, state: State) -> Horizon | None:
        return self.inner.horizon(params, self._inner_state(state))

    def summary_fields(self, params: Frozen, state: State) -> dict[str, Any]:
        return self.inner.summary_fields(params, self._inner_state(state))

    def _cooldown(self, params: Frozen, state: State, asked: Cooldown) -> State:
        if isinstance(state, RetimedState):
            raise PolicyError(
                [((), "the run was retimed: its decay is the retimed schedule's (retime it again)")]
            )
        return self.inner._cooldown(params, state, asked)

    # a retimed state ------------------------------------------------------------------------

    def load_state(self, data: dict[str, Any]) -> State:
        if "timemap" in data:
            return RetimedState.model_validate(data)
        return self.inner.load_state(data)

    def _inner_state(self, state: State) -> State:
        if not isinstance(state, RetimedState):
            return state
        if state._parsed is None:
            state._parsed = self.inner.load_state(state.inner)
        return state._parsed

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        if not isinstance(state, RetimedState):
            return self.inner.lrs_at(params, state, step)
        check_step(step)
        inner = self._inner_state(state)
        s = schedule_step(state.timemap, step)
        return _mapped(_segment_at(state.timemap, step), self.inner.lrs_at(params, inner, s))

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> Stepper:
        if not isinstance(state, RetimedState):
            return self.inner.stepper(params, state, metric)
        inner = self.inner.stepper(params, self._inner_state(state), metric)
        return RetimedStepper(inner, state.timemap, state.lrs)

    def extras_at(self, params: Frozen, state: State, step: int) -> Extras:
        # (a retimed state schedules none: retime refuses a policy that schedules extras)
        return {} if isinstance(state, RetimedState) else self.inner.extras_at(params, state, step)

    # the retime itself ---------------------------------------------------------------------

    def retime(
        self,
        params: Frozen,
        state: State,
        at_step: int,
        horizon: int,
        mode: str,
        last_step: int | None,
    ) -> RetimedState:
        """``state`` with a time map that reaches the schedule's end at training step
        ``horizon`` from ``at_step`` on (``mode``: keep_lr or keep_fraction; the module's
        docstring). PolicyError, located at the field to blame, when it cannot."""
        inner = self._inner_state(state)
        has = self.inner.horizon(params, inner)
        if has is None:
            raise _no_horizon(self, " (or none planned yet)")
        scheduled = extras_of(inner)
        if scheduled:  # the time map is on the lrs alone
            what = " and the ".join(scheduled)
            name = f"{self.name}@{self.version}"
            raise PolicyError([((), f"{name} schedules the {what}: a retime moves the lr only")])
        if mode not in MODES:
            raise PolicyError([(("mode",), f"mode {mode!r} is not one of {', '.join(MODES)}")])
        if last_step is not None and at_step <= last_step:
            raise PolicyError(
                [
                    (
                        ("at_step",),
                        f"step {at_step} is already decided (the run's last step is {last_step})",
                    )
                ]
            )
        if horizon <= at_step:
            raise PolicyError(
                [(("horizon",), f"the new horizon {horizon} is not after at_step {at_step}")]
            )
        timemap = list(state.timemap) if isinstance(state, RetimedState) else []
        if isinstance(state, RetimedState):
            last = state.timemap[-1]
            if (last.k0, last.k1, last.mode) == (at_step, horizon, mode):
                return state  # this very retime is in force: a retry
        if len(timemap) + 1 > MAX_SEGMENTS:
            raise PolicyError([((), f"the run was retimed too often (its map has {len(timemap)} "
                                    "segments)")])  # fmt: skip
        s_a = schedule_step(timemap, at_step)
        if s_a >= has.end:
            raise PolicyError(
                [
                    (
                        ("at_step",),
                        f"the schedule has ended at step {at_step} (its {has.param} is "
                        f"reached at schedule step {has.end}): there is nothing left to retime",
                    )
                ]
            )
        # the map before at_step stays as it is (a segment holds until the next one begins);
        # one that began at or after it (a retime not reached yet) is replaced
        kept = [segment for segment in timemap if segment.k0 < at_step]
        if mode == "keep_fraction":
            segment = Segment(k0=at_step, s0=s_a, k1=horizon, s1=has.end, mode="keep_fraction")
            held = _segment_at(kept, at_step)
            if held is not None and held.floor is not None:  # a re-fit's value map holds on
                segment = segment.model_copy(update={"floor": held.floor, "ratio": held.ratio})
        else:
            if s_a < has.peak:
                raise PolicyError(
                    [
                        (
                            ("mode",),
                            f"keep_lr fits the schedule's decay from the lr at step {at_step}, "
                            f"which is before its peak (schedule step {has.peak}): use "
                            "keep_fraction",
                        )
                    ]
                )
            lr_a = self.lrs_at(params, state, at_step)
            top = self.inner.lrs_at(params, inner, has.peak)
            floor = self.inner.lrs_at(params, inner, has.end)
            ratio = [
                (x - f) / (t - f) if t != f else 1.0
                for x, t, f in zip(lr_a, top, floor, strict=True)
            ]
            segment = Segment(k0=at_step, s0=has.peak, k1=horizon, s1=has.end, mode="keep_lr",
                              floor=list(floor), ratio=ratio)  # fmt: skip
        doc = (
            state.inner
            if isinstance(state, RetimedState)
            else self.inner.stepper(params, inner).state_doc()
        )
        return RetimedState(lrs=state.lrs, inner=doc, timemap=[*kept, segment])


class RetimedStepper:
    """The policy's stepper, driven at the schedule's steps; its lrs through the value map."""

    __slots__ = ("_inner", "_k", "_s", "_timemap", "action", "lrs", "reduced")

    def __init__(self, inner: Stepper, timemap: list[Segment], lrs: tuple[float, ...]) -> None:
        self._inner, self._timemap = inner, timemap
        self.action, self.lrs, self.reduced = "", lrs, False
        self._k = self._s = -1

    def advance(self, step: int, value: float) -> str:
        s = schedule_step(self._timemap, step)
        inner = self._inner
        inner.advance(s, value)
        before = self.lrs
        lrs = _mapped(_segment_at(self._timemap, step), inner.lrs)
        if inner.reduced:  # the policy decided something (a plateau started the decay)
            action = inner.action
        elif lrs == before:
            action = "hold"
        else:  # a schedule's words, from what is served
            action = "warmup" if any(a > b for a, b in zip(lrs, before, strict=True)) else "decay"
        self.lrs, self.reduced, self.action = lrs, inner.reduced, action
        self._k, self._s = step, s
        return action

    def reason(self) -> str:
        text = self._inner.reason()
        mapped = "" if self.lrs == self._inner.lrs else f", served as {fmt_lrs(self.lrs)}"
        return f"{text}; retimed: training step {self._k} is schedule step {self._s}{mapped}"

    def state(self) -> RetimedState:
        return RetimedState(lrs=self.lrs, inner=self._inner.state_doc(), timemap=self._timemap)

    def state_doc(self) -> dict[str, Any]:
        return {
            "inner": self._inner.state_doc(),
            "lrs": [float_token(x) for x in self.lrs],
            "timemap": [segment.model_dump() for segment in self._timemap],
        }


def _no_horizon(policy: Policy, more: str) -> PolicyError:
    name = f"{policy.name}@{policy.version}"
    return PolicyError([((), f"policy {name} has no horizon to move{more}")])


def retimable(policy: Policy) -> Retimed:
    """A run's policy as ``around`` gave it, to retime (``Retimed.retime``); PolicyError naming
    the policy when it has no horizon at all."""
    if not isinstance(policy, Retimed):
        raise _no_horizon(policy, "")
    return policy


def around(policy: Policy) -> Policy:
    """``policy`` able to be retimed when it declares a horizon on the contract (its
    ``horizon`` overridden); else itself."""
    if type(policy).horizon is Policy.horizon:
        return policy
    return Retimed(policy)
