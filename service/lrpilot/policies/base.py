"""What every policy is: pure functions over plain, frozen data.

A policy is ``init(params, base_lrs) -> state`` and
``step(params, state, observation) -> (outcome, state)``. No I/O, no clock, no randomness:
the same inputs give the same outputs on every machine, which is what makes a logged run
replayable bit for bit.

For long replays (what-if over a million observations) a policy also hands out a ``Stepper``:
the same rule over the same state, held in plain mutable attributes, with the reason text and
the frozen state built only when asked. A policy's ``step`` goes through its stepper, so there
is one implementation of each rule, and the golden logs check it.

Every policy derives from ``Policy``, which gives all of them what they do alike and declares
what the rest of the code may ask of one; a family writes only its rule. What released versions
share beyond that is frozen and stands in modules no version owns: ``lrpilot.policies.common``
(param types, float32 rounding, torch's plateau args and their words) and
``lrpilot.policies.text`` (how a reason writes numbers and lrs). A released version never
imports another version's module.

More than the lr: a policy may schedule, per param group, the momentum (Adam's betas[0]) and the
weight decay (``EXTRAS``). It keeps them in an ``ExtrasState`` (optional tuples: None when the
run's params schedule them not), answers them at any step with ``extras_at`` beside
``lrs_at``, and ``step`` returns them on the ``Outcome``. Every other policy's state keeps the
shape it always had; ``extras_of`` reads what a state, a state's document or a stepper holds.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

# The reasons' words and numbers, for the entries the service writes itself (rewind, scale).
from lrpilot.policies.text import fmt as fmt
from lrpilot.policies.text import fmt_change as fmt_change
from lrpilot.policies.text import fmt_lrs as fmt_lrs

Loc = tuple[str | int, ...]


class PolicyError(ValueError):
    """Params or base_lrs that a policy refuses: one (loc, message) per broken rule."""

    def __init__(self, errors: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in errors))
        self.errors = errors

    def within(self, *loc: str | int) -> PolicyError:
        """The same errors, located under ``loc`` (an inner object's errors in the outer one)."""
        return PolicyError([((*loc, *sub), msg) for sub, msg in self.errors])


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class State(Frozen):
    """A policy's state after a decision; every policy's state carries the lrs in force."""

    lrs: tuple[float, ...]


# What a policy may schedule beside the lrs, one value a param group: SGD's momentum (Adam's
# betas[0]) and the weight decay. A policy that schedules them keeps them in its state (so the
# chain pins them) as optional tuples named so; every other state keeps the shape it had.
EXTRAS: tuple[str, ...] = ("momentum", "weight_decay")
Extras = dict[str, tuple[float, ...]]


class ExtrasState(State):
    """The state of a policy that may schedule momentum and weight decay (None: not scheduled)."""

    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None


def extras_of(state: object) -> Extras:
    """The extras a state (a frozen one, its document, or a stepper holding it) schedules:
    only those it has."""
    out: Extras = {}
    for name in EXTRAS:
        value = state.get(name) if isinstance(state, Mapping) else getattr(state, name, None)
        if value is not None:
            out[name] = tuple(value)
    return out


def check_step(step: int) -> None:
    """The ValueError of ``lrs_at`` and ``extras_at`` asked a step before the first."""
    if step < 0:
        raise ValueError(f"steps start at 0, got {step}")


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
    # what it schedules beside the lrs (EXTRAS), one value a group; None: not scheduled
    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None


class Horizon(NamedTuple):
    """Where a schedule ends, as a retime moves it (``lrpilot.policies.retime``): the param
    that says so (for the messages), the schedule step its last decay starts from (its peak)
    and the schedule step it ends at."""

    param: str
    peak: int
    end: int


class Cooldown(NamedTuple):
    """A cooldown on demand as ``Policy.cooldown`` is asked it: the decay to start at
    ``at_step``, ``steps`` long, of ``shape`` (None: the policy's own), the run's log standing
    at ``last_step`` (None: nowhere yet)."""

    at_step: int
    steps: int
    shape: str | None
    last_step: int | None


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


class Policy(abc.ABC):
    """A released ``name@version``: pure functions over frozen data, and what the rest of the
    code may ask of a policy. Every policy derives from this class, which gives the behaviour
    they share once (``step`` over the stepper, ``resolve``'s error locations, the schema,
    defaults and state loading from the models); a family writes its rule: ``init``,
    ``lrs_at``, ``stepper`` and, if it has any, checks across params (``check``).

    Two clocks: a policy decides at *evaluations* (``step``, an observation at a training
    step), and answers the lrs in force at any *training step* (``lrs_at``), between
    evaluations too. A schedule is a pure function of the training step; plateau control
    changes its state only at evaluations.
    """

    # Identity: class attributes of a policy's class, or set by its constructor (the schedule
    # families are instances of one class). description is what GET /v1/policies serves.
    name: str
    version: int
    description: str
    actions: ClassVar[tuple[str, ...]]
    # True when observations never change the lrs (a pure schedule): every step's lrs are
    # certain in advance. False when the next evaluation may change them (plateau control).
    open_loop: ClassVar[bool] = False
    # True when the policy counts training steps from 0 whatever step it starts at (a range
    # test's ramp): in a sequence it can only be the first phase.
    from_step_zero: ClassVar[bool] = False
    # The params, with their defaults (a policy with flavors: its default flavor's).
    params_model: type[Frozen]
    # What the served params schema describes, when it is not params_model (the union of a
    # policy's flavors).
    schema_type: ClassVar[Any] = None
    # Examples for the served params schema (none: the model's own, if it gives any).
    examples: ClassVar[tuple[dict[str, Any], ...]] = ()
    # Params that resolve fills in from the run (not knobs): neither in the schema nor in the
    # defaults.
    filled_params: ClassVar[tuple[str, ...]] = ()
    state_model: ClassVar[type[State]] = State

    def params_schema(self) -> dict[str, Any]:
        if self.schema_type is None:
            schema = self.params_model.model_json_schema()
        else:
            schema = TypeAdapter(self.schema_type).json_schema()
        for name in self.filled_params:
            schema["properties"].pop(name, None)
        if self.examples:
            schema["examples"] = [dict(e) for e in self.examples]
        return schema

    def defaults(self) -> dict[str, Any]:
        """Every param that has a default, with it (a nested model as its JSON document)."""
        out: dict[str, Any] = {}
        for name, field in self.params_model.model_fields.items():
            if field.is_required() or name in self.filled_params:
                continue
            value = field.get_default(call_default_factory=True)
            out[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return out

    def resolve(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        """Validate params against base_lrs and fill every default; raise PolicyError, located
        relative to the run spec's "policy" object."""
        try:
            return self.resolve_params(params, base_lrs)
        except PolicyError as exc:
            raise exc.within("params") from None

    def resolve_params(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        """``resolve`` with PolicyError located relative to the params: validated, then the
        checks across params (all of them at once)."""
        resolved = self.validate(params)
        errors = self.check(resolved, base_lrs)
        if errors:
            raise PolicyError(errors)
        return resolved

    def params_model_for(self, params: dict[str, Any]) -> type[Frozen]:
        """The model that validates ``params`` (a policy with flavors picks the flavor's)."""
        return self.params_model

    def validate(self, params: dict[str, Any]) -> Frozen:
        try:
            return self.params_model_for(params).model_validate(params)
        except ValidationError as exc:
            raise PolicyError(self.validation_errors(exc)) from None

    def validation_errors(self, exc: ValidationError) -> list[tuple[Loc, str]]:
        """One (loc, message) per error pydantic found in the params."""
        return [
            (
                tuple(e["loc"]),
                f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})",
            )
            for e in exc.errors()
        ]

    def check(self, params: Any, base_lrs: tuple[float, ...]) -> list[tuple[Loc, str]]:
        """Rules across validated params, or against base_lrs: one (loc, message) a broken one."""
        return []

    @abc.abstractmethod
    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> State: ...

    def load_state(self, data: dict[str, Any]) -> State:
        return self.state_model.model_validate(data)

    def step(self, params: Frozen, state: State, obs: Observation) -> tuple[Outcome, State]:
        """One decision, through the stepper: the one implementation of the rule."""
        stepper = self.stepper(params, state, obs.metric)
        action = stepper.advance(obs.step, obs.value)
        state = stepper.state()
        extras = extras_of(state)
        return Outcome(stepper.lrs, action, stepper.reason(), stepper.reduced, **extras), state

    @abc.abstractmethod
    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        """The lrs in force at training step ``step``, given ``state``: the state after the last
        decision at or before ``step`` (the initial state when there is none). Pure and cheap:
        ranks that only read call it for every step they train."""

    def extras_at(self, params: Frozen, state: State, step: int) -> Extras:
        """What the policy schedules beside the lrs (``EXTRAS``) at training step ``step``, as
        ``lrs_at`` answers the lrs; empty when it schedules none (every policy but those whose
        state is an ``ExtrasState``)."""
        return {}

    @abc.abstractmethod
    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> Stepper:
        """``state`` in mutable form, to advance observation by observation (``metric`` is the
        name the reasons give the value)."""

    # The decay shapes a cooldown on demand may ask for (``cooldown``): none when the policy
    # has no cooldown.
    cooldown_shapes: ClassVar[tuple[str, ...]] = ()

    def cooldown(
        self,
        params: Frozen,
        state: State,
        at_step: int,
        steps: int,
        shape: str | None,
        last_step: int | None,
    ) -> State:
        """``state`` with the policy's decay started at ``at_step``, ``steps`` long, of
        ``shape`` (None: the policy's own): a cooldown on demand, logged as a cooldown entry.
        ``last_step`` is where the run's log stands (None: nowhere yet). PolicyError, located
        at the field to blame, when the policy cannot: by default it has no cooldown.

        A policy with a cooldown overrides ``_cooldown``, not this: the contract's arguments
        are spelled here once, and reach it as one ``Cooldown``."""
        return self._cooldown(params, state, Cooldown(at_step, steps, shape, last_step))

    def _cooldown(self, params: Frozen, state: State, asked: Cooldown) -> State:
        """``cooldown``, the request as one value (what a policy with a cooldown overrides)."""
        raise PolicyError(
            [
                (
                    (),
                    f"policy {policy_id(self.name, self.version)} has no cooldown on demand "
                    "(a policy with a stable phase to end has one: wsd@1)",
                )
            ]
        )

    def horizon(self, params: Frozen, state: State) -> Horizon | None:
        """The schedule's horizon given ``state`` (``Horizon``), which a retime may move; None
        when it has none (a retime is then refused): the default."""
        return None

    def summary_fields(self, params: Frozen, state: State) -> dict[str, Any]:
        """What a run's summary reports of this policy beyond what every run's does, from the
        state in force (none by default)."""
        return {}


class StepperBase:
    """What every stepper holds: the last advance's action ("" before the first), the lrs in
    force after it, and whether it counted as a reduction."""

    __slots__ = ("action", "lrs", "reduced")

    action: str
    lrs: tuple[float, ...]
    reduced: bool

    def __init__(self, lrs: tuple[float, ...]) -> None:
        self.action, self.lrs, self.reduced = "", lrs, False


class FieldStepper(StepperBase):
    """A stepper that holds its policy's state as attributes named as ``state_model``'s
    fields: loaded from the state it starts from, and ``state()`` built from them. ``_last``
    is what the last advance leaves for reason() to write its sentence from (None before the
    first advance); ``_metric`` the name the reasons give the value."""

    __slots__ = ("_last", "_metric")

    state_model: ClassVar[type[State]]
    _last: Any

    def __init__(self, state: State, metric: str) -> None:
        # StepperBase's lrs is one of the state's fields; a model's __dict__ holds their values
        for name, value in state.__dict__.items():
            setattr(self, name, value)
        self.action, self.reduced, self._metric, self._last = "", False, metric, None

    def _advanced(self) -> Any:
        """What the last advance left for reason(); RuntimeError before the first advance."""
        if self._last is None:
            raise RuntimeError("no observation advanced yet: there is no reason to give")
        return self._last

    def state(self) -> State:
        return self.state_model.model_validate(self, from_attributes=True)


def policy_id(name: str, version: int) -> str:
    return f"{name}@{version}"
