"""The one loop that drives a policy through a run's log: observations, resizes, rewinds,
cooldowns and retimes.

Pure, like the policies: no I/O, no SQL, no HTTP, no clock. Everything that replays a policy
is built on ``Replay``: verify (``lrpilot.audit.verify``, both branches of a rewound log), the
what-ifs (``POST /v1/simulate``, ``lrpilot simulate``), ``lrpilot plot`` from a spec, the lrs
over a range (``GET /lrs``) and the golden-file scripts.

It runs a policy's ``Stepper`` (the policy's own rule over plain mutable state, see
``lrpilot.policies.base``), so a replay of a million observations costs one ``advance()`` each;
reasons and frozen states are built only for the observations a caller asks them of.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrpilot.entries import Rewound
from lrpilot.guard import Checkpoint, Guarded, GuardStepper
from lrpilot.policies.base import Frozen, Policy, State, Stepper, extras_of
from lrpilot.policies.retime import retimable
from lrpilot.spec import InForce, factor, scaled


def _step(checkpoint: Checkpoint) -> int:
    return checkpoint.step


@dataclass
class _Ahead:
    """A rewind further on in the log: the entry it will restore and how many it will
    supersede, found as the replay goes (an entry survives until the first later rewind to a
    step below its own)."""

    rewind: Rewound
    restores: int | None = None  # seq of the last surviving entry at or below to_step
    state: State | None = None  # the state right after it
    force: InForce | None = None  # the scale in force right after it
    superseded: int = 0


@dataclass(frozen=True, slots=True)
class Restored:
    """What a rewind restored: the entry it went back to (None: the start), the state and the
    scale in force again, and how many entries it superseded."""

    restores_seq: int | None
    state: State
    force: InForce | None
    superseded: int


class Replay:
    """A run's policy, driven one log entry at a time.

    ``params`` are resolved params (``policy.resolve``) and ``state`` the state to start from
    (the policy's initial state when None). ``scaling`` is the run's scaling rule, ``force``
    the scale in force at the start. ``rewinds`` are the log's rewind entries, known before the
    replay starts (a first pass reads them): the replay then finds, as it goes, the state each
    will restore, holding a few values per rewind, so memory stays flat in the log's length.
    """

    def __init__(
        self,
        policy: Policy,
        params: Frozen,
        base_lrs: Sequence[float],
        metric: str = "metric",
        *,
        state: State | None = None,
        scaling: Mapping[str, Any] | None = None,
        force: InForce | None = None,
        rewinds: Sequence[Rewound] = (),
    ) -> None:
        self.policy, self.params, self.metric = policy, params, metric
        self.base_lrs = tuple(base_lrs)
        self._initial: State | None = None
        start = state if state is not None else self.initial
        # the live branch's checkpoints, by (step, seq): what a guarded run rolls back to
        self.checkpoints: list[Checkpoint] = []
        self.stepper: Stepper = self._stepper(start)
        self.scaling = scaling
        self.base_force = InForce.of(scaling, None)
        self.force = force or self.base_force
        self.previous: tuple[float, ...] = self.stepper.lrs  # the policy's lrs before the last
        self._ahead = [_Ahead(r) for r in sorted(rewinds, key=lambda r: r.seq)]

    # -- what stands ----------------------------------------------------------------------

    @property
    def initial(self) -> State:
        """The policy's initial state (what a rewind to before the first entry restores)."""
        if self._initial is None:
            self._initial = self.policy.init(self.params, self.base_lrs)
        return self._initial

    @property
    def factor(self) -> float:
        """The scaling rule's factor on the policy's lrs (1.0 without one)."""
        return 1.0 if self.force is None else self.force.factor

    @property
    def lrs(self) -> list[float]:
        """The lrs served now: the policy's, times the factor in force."""
        return scaled(self.stepper.lrs, self.factor)

    def state(self) -> State:
        return self.stepper.state()

    def _stepper(self, state: State) -> Stepper:
        stepper = self.policy.stepper(self.params, state, self.metric)
        if isinstance(stepper, GuardStepper):
            stepper.find = self.newest_checkpoint
        return stepper

    def newest_checkpoint(self, before: int) -> Checkpoint | None:
        """The live checkpoint of the largest step below ``before`` (the last declared of that
        step), if any: where a guarded run rolls back to from trouble at ``before``."""
        at = bisect.bisect_left(self.checkpoints, before, key=_step)
        return self.checkpoints[at - 1] if at else None

    # -- one entry ------------------------------------------------------------------------

    def observe(self, step: int, value: float, seq: int | None = None) -> str:
        """A decided observation: the policy advances; its action."""
        self.previous = self.stepper.lrs
        action = self.stepper.advance(step, value)
        if self._ahead and seq is not None:
            self._joined(seq, step)
        return action

    def resize(self, step: int, size: int, seq: int | None = None) -> InForce:
        """A scale entry: the served lrs change by the scaling rule's factor, the policy's
        state does not. The scale in force before it."""
        assert self.scaling is not None and self.force is not None
        was = self.force
        self.force = InForce(size, factor(self.scaling, size), step)
        if self._ahead and seq is not None:
            self._joined(seq, step)
        return was

    def checkpoint(self, seq: int, step: int, ref: str) -> None:
        """A checkpoint entry: the state does not change; a later rewind below its step
        supersedes it, none restores it."""
        bisect.insort(self.checkpoints, Checkpoint(seq, step, ref), key=_step)  # seqs grow
        for ahead in self._ahead:
            if ahead.rewind.to_step < step:
                ahead.superseded += 1
                return

    def cooldown(
        self,
        step: int,
        at_step: int,
        steps: int,
        shape: str | None,
        decided: int | None,
        seq: int | None = None,
    ) -> None:
        """A cooldown entry at ``step``: the policy's decay starts at ``at_step``
        (``Policy.cooldown``, told the log's last step, ``decided``; PolicyError when it
        refuses). The lrs in force do not change."""
        state = self.policy.cooldown(self.params, self.state(), at_step, steps, shape, decided)
        self.previous = self.stepper.lrs
        self.stepper = self._stepper(state)
        if self._ahead and seq is not None:
            self._joined(seq, step)

    def retime(
        self,
        step: int,
        at_step: int,
        horizon: int,
        mode: str,
        decided: int | None,
        seq: int | None = None,
    ) -> None:
        """A retime entry at ``step``: the schedule reaches its end at ``horizon`` from
        ``at_step`` on (``lrpilot.policies.retime``; PolicyError when it cannot)."""
        state = retimable(self.policy).retime(
            self.params, self.state(), at_step, horizon, mode, decided
        )
        self.previous = self.stepper.lrs
        self.stepper = self._stepper(state)
        if self._ahead and seq is not None:
            self._joined(seq, step)

    def rewind(self, seq: int) -> Restored:
        """A rewind entry (the next one the replay was told of): the state as of its step
        again. AssertionError if ``seq`` is not that rewind (verify checks first)."""
        ahead = self._ahead.pop(0)
        assert ahead.rewind.seq == seq
        restored = ahead.state if ahead.restores is not None else self.initial
        force = ahead.force if ahead.restores is not None else self.base_force
        assert restored is not None
        if isinstance(self.policy, Guarded):  # the rollbacks and the cut are kept
            restored = self.policy.carry(restored, self.stepper.state())
        to_step = ahead.rewind.to_step
        del self.checkpoints[bisect.bisect_right(self.checkpoints, to_step, key=_step) :]
        self.previous = self.stepper.lrs
        self.stepper = self._stepper(restored)
        self.force = force
        if self._ahead:
            self._joined(seq, to_step)
        return Restored(ahead.restores, restored, force, ahead.superseded)

    def next_rewind(self) -> Rewound | None:
        return self._ahead[0].rewind if self._ahead else None

    def _joined(self, seq: int, step: int) -> None:
        """Entry ``seq`` (at ``step``) joined the live branch. The first rewind ahead to a step
        below it will supersede it; every rewind before that one may restore it (the last such
        entry is the one a rewind restores)."""
        state: State | None = None
        for ahead in self._ahead:
            if ahead.rewind.to_step < step:
                ahead.superseded += 1
                return
            state = state or self.stepper.state()
            ahead.restores, ahead.state, ahead.force = seq, state, self.force

    # -- a stream of observations -----------------------------------------------------------

    def run(self, observations: Iterable[tuple[int, float]]) -> Iterator[Stepper]:
        """Feed (step, value) pairs through the policy; yield the stepper after each one (the
        same object each time: read what you need before the next; ``previous`` is not kept
        up to date here)."""
        stepper = self.stepper
        advance = stepper.advance
        for step, value in observations:  # the hot loop of a what-if: nothing else in it
            advance(step, value)
            yield stepper


def replay(
    policy: Policy,
    params: Frozen,
    state: State,
    observations: Iterable[tuple[int, float]],
    metric: str = "metric",
) -> Iterator[Stepper]:
    """``Replay.run`` from ``state``: the stepper after each observation. The stepper is built
    here, at the call, so a policy that refuses them raises now rather than at the first
    ``next()``."""
    return Replay(policy, params, state.lrs, metric, state=state).run(observations)


def trace(steppers: Iterable[Stepper]) -> list[tuple[str, tuple[float, ...]]]:
    """(action, lrs) after each observation of a ``replay`` (what-if): ``trace(replay(...))``.
    The lrs tuples are the stepper's own: one object as long as no reduction changes them."""
    return [(s.action, s.lrs) for s in steppers]


def lrs_range(
    policy: Policy,
    params: Frozen,
    state: State,
    by: float,
    first: int,
    count: int,
    changes: Iterable[tuple[int, State, float]],
    every: int = 1,
) -> tuple[list[list[float]], dict[str, list[list[float]]]]:
    """The lrs served at ``count`` training steps from ``first``, ``every`` steps apart, and
    what the policy schedules beside them (momentum, weight decay) there, from the same states:
    one list a step, by name; empty when the policy schedules none. ``state`` is in force
    before ``first``, its lrs served times ``by``; ``changes`` are (step, state, factor) of the
    live entries from ``first`` on, in step order (each a decision's, a rewind's or a resize's:
    the state it left and the scaling rule's factor on what it served). A scaling rule scales
    the lrs only."""
    lrs_at, extras_at = policy.lrs_at, policy.extras_at
    schedules_extras = bool(extras_of(state))
    lrs: list[list[float]] = []
    extras: dict[str, list[list[float]]] = {}
    upcoming = iter(changes)
    change = next(upcoming, None)
    for step in range(first, first + count * every, every):
        while change is not None and change[0] <= step:
            _, state, by = change
            change = next(upcoming, None)
        lrs.append(scaled(lrs_at(params, state, step), by))
        if schedules_extras:
            for name, values in extras_at(params, state, step).items():
                extras.setdefault(name, []).append(list(values))
    return lrs, extras
