"""A guard around a run's policy: trouble (a non-finite metric, a spike) rolls the run back.

Pure, like the policies: no I/O, no clock. A run created with ``"guard": {...}``
(``lrpilot.spec.GuardSpec``) has its policy wrapped in a ``Guarded`` policy, whose state holds
the inner policy's state (``policy``) beside the guard's own: the rollbacks so far, the cut on
the lrs (``lr_factor`` to the power of the rollbacks), and what the spike rule needs (the best
value of the live branch, or the last ``window`` values). It is the state every entry carries,
so verify replays the guard as it replays any policy.

An observation that is no trouble goes to the inner policy; the lrs served are the inner
policy's times the cut. Trouble is decided here, the inner policy never sees it:

- ``rollback``: to the newest checkpoint the job declared strictly before the trouble's step
  (the stepper asks ``find`` for it: the store, or the replay's live checkpoints), the cut
  multiplied by ``lr_factor``. A rewind to the checkpoint's step follows it in the log
  (``lrpilot.domain.guarding``): the trouble stays as a superseded branch. A rewind restores
  the inner policy's state and the spike rule's as of its step, and keeps the rollbacks and the
  cut (``carry``): they are the run's, not the branch's.
- ``reduce``: trouble with no checkpoint declared before it: the lrs are cut in place (the
  reason says so), counted as a rollback.
- ``stop``: trouble after ``max_rollbacks`` rollbacks; from then on every decision is a stop.

Each observation costs O(1), or O(window) for the zscore rule (at most ``MAX_GUARD_WINDOW``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pydantic import PrivateAttr

from lrpilot import entries
from lrpilot.canonical import canonical_json, parse_float
from lrpilot.entries import Draft, Kind, Ranks, Stamp
from lrpilot.policies.base import (
    Frozen,
    Policy,
    PolicyError,
    State,
    Stepper,
    extras_of,
    fmt,
    fmt_change,
)
from lrpilot.spec import GuardSpec, RunSpec


class Checkpoint(NamedTuple):
    """A checkpoint the job declared: its entry's seq, its step, the job's ref for it."""

    seq: int
    step: int
    ref: str


Finder = Callable[[int], Checkpoint | None]  # the newest live checkpoint strictly before a step


class GuardedState(State):
    """The guarded policy's state: ``lrs`` served (the inner policy's times ``cut``), the inner
    policy's state as its log holds it (``policy``), and the guard's own."""

    policy: dict[str, Any]
    rollbacks: int = 0
    cut: float = 1.0
    stopped: bool = False
    best: float | None = None  # ratio rule: the best (lowest) finite value of the live branch
    window: tuple[float, ...] = ()  # zscore rule: the last ``window`` finite values
    _inner: State | None = PrivateAttr(default=None)


def _doc(state: State) -> dict[str, Any]:
    """A state as its log holds it once read back (lists, non-finite numbers as names)."""
    loaded: dict[str, Any] = json.loads(canonical_json(state.model_dump()))
    return loaded


class Guarded(Policy):
    """``inner`` with a guard: the name, version and params are the inner policy's."""

    actions = ("rollback", "reduce", "stop")
    open_loop = False  # an observation may roll the run back

    def __init__(self, inner: Policy, guard: GuardSpec) -> None:
        self.inner, self.guard = inner, guard
        self.name, self.version = inner.name, inner.version
        self.description = inner.description
        self.params_model = inner.params_model

    def resolve(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        resolved = self.inner.resolve(params, base_lrs)
        scheduled = extras_of(self.inner.init(resolved, base_lrs))
        if scheduled:  # the guard's cut and rollbacks are on the lrs alone
            what = " and the ".join(scheduled)
            raise PolicyError(
                [
                    (
                        ("guard",),
                        f"{self.inner.name}@{self.inner.version} schedules the {what}, which a "
                        "guarded run cannot serve (a guard serves the lr only): turn that off "
                        "in the policy's params, or run it without a guard",
                    )
                ]
            )
        return resolved

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> GuardedState:
        inner = self.inner.init(params, base_lrs)
        return GuardedState(lrs=inner.lrs, policy=_doc(inner))

    def load_state(self, data: dict[str, Any]) -> GuardedState:
        return GuardedState.model_validate(data)

    def inner_state(self, state: State) -> State:
        assert isinstance(state, GuardedState)
        if state._inner is None:
            state._inner = self.inner.load_state(state.policy)
        return state._inner

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(state, GuardedState)
        lrs = self.inner.lrs_at(params, self.inner_state(state), step)
        return _cut(lrs, state.cut)

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> GuardStepper:
        assert isinstance(state, GuardedState)
        inner = self.inner.stepper(params, self.inner_state(state), metric)
        return GuardStepper(self.guard, inner, state, metric)

    def summary_fields(self, params: Frozen, state: State) -> dict[str, Any]:
        assert isinstance(state, GuardedState)
        fields = self.inner.summary_fields(params, self.inner_state(state))
        fields["guard"] = {"rollbacks": state.rollbacks, "cut": state.cut, "stopped": state.stopped}
        return fields

    def carry(self, restored: State, current: State) -> GuardedState:
        """What a rewind restores: ``restored`` (the state as of its step: the inner policy's
        and the spike rule's) with the rollbacks, the cut and the stop of ``current``."""
        assert isinstance(restored, GuardedState) and isinstance(current, GuardedState)
        inner_lrs = tuple(parse_float(x) for x in restored.policy["lrs"])
        return restored.model_copy(
            update={
                "lrs": _cut(inner_lrs, current.cut),
                "rollbacks": current.rollbacks,
                "cut": current.cut,
                "stopped": current.stopped,
            }
        )


def _cut(lrs: tuple[float, ...], cut: float) -> tuple[float, ...]:
    return lrs if cut == 1.0 else tuple(lr * cut for lr in lrs)


class _Trouble(NamedTuple):
    trigger: str  # "nan" or "spike"
    detail: str  # what the value is, against what


class GuardStepper:
    """The guarded policy's stepper: the inner stepper, and the guard's state beside it.
    ``find`` (set by whoever drives it) names the checkpoint a rollback goes to."""

    def __init__(self, guard: GuardSpec, inner: Stepper, state: GuardedState, metric: str) -> None:
        self.guard, self.inner, self.metric = guard, inner, metric
        self.rollbacks, self.cut, self.stopped = state.rollbacks, state.cut, state.stopped
        self.best, self.window = state.best, list(state.window)
        self.action, self.lrs, self.reduced = "", state.lrs, False
        self.find: Finder | None = None
        self.target: Checkpoint | None = None  # the last rollback's checkpoint
        self.trouble: _Trouble | None = None  # the last advance's trouble (None: none)
        self._previous: tuple[float, ...] = state.lrs

    def advance(self, step: int, value: float) -> str:
        self._previous, self.target, self.reduced = self.lrs, None, False
        self.trouble = None
        if self.stopped:  # a stop stands: every later decision is one
            self.action = "stop"
            return self.action
        self.trouble = self._trouble(value)
        if self.trouble is None:
            self.action = self.inner.advance(step, value)
            self.reduced = self.inner.reduced
            self.lrs = _cut(self.inner.lrs, self.cut)
            if math.isfinite(value):
                self._seen(value)
            return self.action
        if self.rollbacks >= self.guard.max_rollbacks:
            self.stopped = True
            self.action = "stop"
            return self.action
        self.rollbacks += 1
        self.cut *= self.guard.lr_factor
        self.lrs = _cut(self.inner.lrs, self.cut)
        self.target = self.find(step) if self.find is not None else None
        self.action = "rollback" if self.target is not None else "reduce"
        self.reduced = self.target is None
        return self.action

    def _trouble(self, value: float) -> _Trouble | None:
        guard, name = self.guard, self.metric
        if not math.isfinite(value):
            if "nan" in guard.on:
                return _Trouble("nan", f"{name} {value!r} is not finite")
            return None
        spike = guard.spike
        if spike is None:
            return None
        if spike.rule == "ratio":
            best = self.best
            if best is not None and best > 0.0 and value > spike.ratio * best:
                return _Trouble(
                    "spike", f"{name} {fmt(value)} is above {spike.ratio!r} x the best {fmt(best)}"
                )
            return None
        window = self.window
        if len(window) < spike.window:
            return None
        mean = math.fsum(window) / len(window)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in window) / len(window))
        if std > 0.0 and value > mean + spike.k * std:
            return _Trouble(
                "spike",
                f"{name} {fmt(value)} is {(value - mean) / std:.3g} standard deviations above "
                f"the mean {fmt(mean)} of the last {len(window)} values (k {spike.k!r})",
            )
        return None

    def _seen(self, value: float) -> None:
        spike = self.guard.spike
        if spike is None:
            return
        if spike.rule == "ratio":
            if self.best is None or value < self.best:
                self.best = value
            return
        self.window.append(value)
        if len(self.window) > spike.window:
            del self.window[0]

    def reason(self) -> str:
        if self.action == "":
            raise RuntimeError("no observation advanced yet: there is no reason to give")
        if self.trouble is None and not self.stopped:
            return self.inner.reason()
        if self.trouble is None:
            return f"the guard stopped the run after {self.rollbacks} rollbacks: stop"
        what = f"{self.trouble.detail} ({self.trouble.trigger})"
        max_ = self.guard.max_rollbacks
        if self.action == "stop":
            return f"{what}; {self.rollbacks} rollbacks already (max_rollbacks {max_}): stop"
        change = fmt_change(self._previous, self.lrs)
        count = f"rollback {self.rollbacks} of {max_}"
        if self.target is None:
            return (
                f"{what}; no checkpoint declared before this step to roll back to: lrs cut in "
                f"place x {self.guard.lr_factor!r} ({count}): {change}"
            )
        return (
            f"{what}: {count} to checkpoint {self.target.ref!r} (step {self.target.step}), "
            f"lrs cut x {self.guard.lr_factor!r}: {change}"
        )

    def state(self) -> GuardedState:
        return GuardedState.model_validate(self.state_doc())

    def state_doc(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "cut": self.cut,
            "lrs": list(self.lrs),
            "policy": self.inner.state_doc(),
            "rollbacks": self.rollbacks,
            "stopped": self.stopped,
            "window": list(self.window),
        }


def drafted(
    at: Stamp,
    value: float,
    stepper: Stepper,
    previous_lrs: Sequence[float],
    ranks: Ranks | None = None,
) -> Draft:
    """The entry of the observation ``stepper`` just advanced on, by the builder of its kind:
    a rollback's (a guarded run's, naming its checkpoint), or a decision's. The decide path
    and verify both build it here."""
    common: dict[str, Any] = {
        "reason": stepper.reason(),
        "lrs": stepper.lrs,
        "previous_lrs": previous_lrs,
        "state": stepper.state_doc(),
    }
    if stepper.action != Kind.ROLLBACK:
        action = stepper.action
        return entries.decision(at, value, action=action, ranks=ranks, **common)
    assert isinstance(stepper, GuardStepper)
    target, trouble = stepper.target, stepper.trouble
    assert target is not None and trouble is not None
    return entries.rollback(
        at,
        value,
        trigger=trouble.trigger,
        to=target,
        count=stepper.rollbacks,
        **common,
    )


def guarded(policy: Policy, guard: GuardSpec | None) -> Policy:
    """A run's policy: ``policy`` itself without a guard, else wrapped in one."""
    return policy if guard is None else Guarded(policy, guard)


def guard_doc(spec: RunSpec) -> dict[str, Any] | None:
    """A run's guard as its config hash pins it (None: no guard)."""
    return None if spec.guard is None else spec.guard.model_dump(exclude_none=True)
