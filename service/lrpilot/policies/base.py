"""What every policy is: pure functions over plain, frozen data.

A policy is ``init(params, base_lrs) -> state`` and
``step(params, state, observation) -> (outcome, state)``. No I/O, no clock, no randomness:
the same inputs give the same outputs on every machine, which is what makes a logged run
replayable bit for bit.

For long replays (what-if over a million observations) a policy also hands out a ``Stepper``:
the same rule over the same state, held in plain mutable attributes, with the reason text and
the frozen state built only when asked. A policy's ``step`` goes through its stepper, so there
is one implementation of each rule, and the golden logs check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

Loc = tuple[str | int, ...]


class PolicyError(ValueError):
    """Params or base_lrs that a policy refuses: one (loc, message) per broken rule."""

    def __init__(self, errors: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in errors))
        self.errors = errors


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class State(Frozen):
    """A policy's state after a decision; every policy's state carries the lrs in force."""

    lrs: tuple[float, ...]


MAX_STEP = 2**62  # the largest step (and seq) anything holds: a BIGINT on every database


@dataclass(frozen=True, slots=True)
class Observation:
    step: int
    value: float
    metric: str = "metric"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a policy decided for one observation; the store turns it into a logged decision."""

    lrs: tuple[float, ...]
    action: str
    reason: str
    reduced: bool = False  # counted in the run's reductions (the policy says what counts)


class Stepper(Protocol):
    """A policy's state held in plain mutable form for a long replay: one advance() an observation.

    Before the first advance(), ``action`` is "" and reason() raises; lrs and state() are the
    state the stepper was built from.
    """

    action: str  # the last advance's action
    lrs: tuple[float, ...]  # the lrs in force after the last advance
    reduced: bool  # the last advance counts as a reduction (the policy says what counts)

    def advance(self, step: int, value: float) -> str:
        """Decide one observation, update the state in place; return the action."""
        ...

    def reason(self) -> str:
        """The last advance's reason, built only when asked (identical to step()'s)."""
        ...

    def state(self) -> State:
        """The frozen state after the last advance (identical to step()'s)."""
        ...

    def state_doc(self) -> dict[str, Any]:
        """``state()`` as a logged decision holds it once its JSON is read back (non-finite
        numbers as their string names, lists for tuples), without building the frozen model:
        what verify compares every decision's state with."""
        ...


class Policy(Protocol):
    """A released ``name@version``: pure functions over frozen data.

    Two clocks: a policy decides at *evaluations* (``step``, an observation at a training
    step), and answers the lrs in force at any *training step* (``lrs_at``), between
    evaluations too. A schedule is a pure function of the training step; plateau control
    changes its state only at evaluations.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    description: ClassVar[str]
    actions: ClassVar[tuple[str, ...]]
    # True when observations never change the lrs (a pure schedule): every step's lrs are
    # certain in advance. False when the next evaluation may change them (plateau control).
    open_loop: ClassVar[bool]

    def params_schema(self) -> dict[str, Any]: ...

    def defaults(self) -> dict[str, Any]: ...

    def resolve(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        """Validate params against base_lrs and fill every default; raise PolicyError."""
        ...

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> State: ...

    def load_state(self, data: dict[str, Any]) -> State: ...

    def step(self, params: Frozen, state: State, obs: Observation) -> tuple[Outcome, State]: ...

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        """The lrs in force at training step ``step``, given ``state``: the state after the last
        decision at or before ``step`` (the initial state when there is none). Pure and cheap:
        ranks that only read call it for every step they train."""
        ...

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> Stepper:
        """``state`` in mutable form, to advance observation by observation (``metric`` is the
        name the reasons give the value)."""
        ...


def policy_id(name: str, version: int) -> str:
    return f"{name}@{version}"


def fmt(x: float) -> str:
    """A number in a reason: exact (repr), so a reader can redo the comparison."""
    return repr(x)


def fmt_lrs(lrs: tuple[float, ...]) -> str:
    if len(lrs) == 1:
        return f"lr {fmt(lrs[0])}"
    return "lrs [" + ", ".join(fmt(x) for x in lrs) + "]"


def fmt_change(old: tuple[float, ...], new: tuple[float, ...]) -> str:
    if len(old) == 1:
        return f"lr {fmt(old[0])} -> {fmt(new[0])}"
    return (
        "lrs [" + ", ".join(fmt(x) for x in old) + "] -> [" + ", ".join(fmt(x) for x in new) + "]"
    )
