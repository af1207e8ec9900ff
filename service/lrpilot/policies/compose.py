"""Composition: phases one after another (``sequence@1``), plateau control as a scale on a
schedule (``scaled@1``), and a policy per param group (``groups@1``).

Two clocks: schedules count training steps, plateau control counts evaluations.

* ``sequence@1`` is torch's SequentialLR that also takes plateau control as a phase (warmup,
  then plateau: the case torch refuses). Phase *i* runs from the previous phase's
  ``until_step`` (0 for the first) up to, not including, its own; the last phase never ends.
  Every phase starts from the run's base lrs. A schedule phase counts training steps from its
  own start (SequentialLR restarts each scheduler's clock); a plateau phase sees the steps as
  they are, so its reasons name the real steps.
* ``scaled@1`` is optax's reduce_on_plateau used as a scale: the lrs at a step are the
  schedule's lrs times a scale per param group, and the scale is what the plateau policy
  decides when run from base lrs of 1.0 (``factor`` multiplies it, ``min_lr`` floors it). A
  cosine decay whose level drops by ``factor`` on each plateau is
  ``{"schedule": cosine@1, "plateau": plateau@1}``.
* ``groups@1`` gives each group of the run's param groups its own policy (a fine-tune's
  backbone on a cosine, its head on warmup-then-plateau): every group decides each
  observation, from its own base lrs, on the real steps; the run's lrs are the groups' lrs in
  the run's order, one decision a step. What the groups schedule beside the lrs (momentum,
  weight decay) is placed the same way; every group schedules each of them or none.
* ``sequence@1`` and ``scaled@1`` serve their inner policies' lrs only: an inner policy that
  schedules more is refused rather than its momentum dropped.

The inner policies are any released versions; their params are resolved (every default
filled) into the composite's params, so the config hash covers them.
"""

from __future__ import annotations

import abc
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, ClassVar

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    ValidationError,
    model_serializer,
)

from lrpilot.canonical import canonical_json, to_strict
from lrpilot.policies.base import (
    EXTRAS,
    Extras,
    Frozen,
    Loc,
    Policy,
    PolicyError,
    State,
    StepperBase,
    extras_of,
    policy_id,
)
from lrpilot.policies.text import fmt_change, fmt_lrs

MAX_PHASES = 16
MAX_DEPTH = 3  # a composite inside a composite inside a composite, no deeper


class PolicyRef(Frozen):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[StrictInt, Field(ge=1)]
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


class Phase(Frozen):
    policy: PolicyRef
    until_step: Annotated[StrictInt, Field(ge=1, le=2**62)] | None = None


class SequenceParams(Frozen):
    phases: Annotated[tuple[Phase, ...], Field(min_length=1, max_length=MAX_PHASES)]
    # Filled by resolve from the run's base lrs (every phase starts from them); not a knob.
    base_lrs: tuple[float, ...] = ()


class ScaledParams(Frozen):
    schedule: PolicyRef
    plateau: PolicyRef
    base_lrs: tuple[float, ...] = ()  # filled by resolve, as for sequence@1


class SequenceState(State):
    phase: int  # the phase of the last decision
    inner: dict[str, Any]  # that phase's policy state, as its JSON document


class ScaledState(State):
    scale: dict[str, Any]  # the plateau policy's state: its lrs are the scales


# -- resolving inner policies ----------------------------------------------------------------


def _registry(name: str, version: int) -> Policy:
    from lrpilot.policies import get_policy  # the registry imports this module

    return get_policy(name, version)


def _depth(params: Any, limit: int = MAX_DEPTH + 1) -> int:
    """How deep composites nest in ``params`` (1 for none), counted no further than ``limit``."""
    if not isinstance(params, dict) or limit <= 1:
        return 1
    refs: list[Any] = [params.get("schedule"), params.get("plateau")]
    for key in ("phases", "groups"):  # sequence@1's phases, groups@1's groups: each a policy
        items = params.get(key)
        if isinstance(items, list):
            refs += [item.get("policy") for item in items if isinstance(item, dict)]
    inner = [_depth(ref.get("params"), limit - 1) for ref in refs if isinstance(ref, dict)]
    return 1 + max(inner, default=0)


def _resolve_ref(
    ref: PolicyRef, base_lrs: tuple[float, ...], loc: Loc
) -> tuple[Policy, dict[str, Any]]:
    """The inner policy and its resolved params (as a document); PolicyError located under
    loc (a policy's own errors start with "params")."""
    try:
        policy = _registry(ref.name, ref.version)
        resolved = policy.resolve(dict(ref.params), base_lrs)
    except PolicyError as exc:
        raise exc.within(*loc) from None
    return policy, resolved.model_dump()


@lru_cache(maxsize=1024)
def _inner(ref_json: str, base_lrs: tuple[float, ...]) -> tuple[Policy, Frozen, State]:
    """An inner policy, its params and its initial state, from the canonical JSON of a resolved
    PolicyRef: resolved once a process (pure, so cached)."""
    import json

    ref = json.loads(ref_json)
    policy = _registry(ref["name"], ref["version"])
    params = policy.resolve(ref["params"], base_lrs)
    return policy, params, policy.init(params, base_lrs)


# What a params or state object leads to (its phases' policies, its inner state loaded),
# found once an object: lrs_at runs once a training step with the same two. Keyed by the
# object itself (kept alive here, so its id is not reused); bounded.
_MEMO: OrderedDict[int, tuple[object, Any]] = OrderedDict()
_MEMO_MAX = 4096


def _memo(obj: object, compute: Callable[[], Any]) -> Any:
    hit = _MEMO.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    value = compute()
    _MEMO[id(obj)] = (obj, value)
    if len(_MEMO) > _MEMO_MAX:
        with contextlib.suppress(KeyError):  # another thread trimmed it first
            _MEMO.popitem(last=False)
    return value


def _ref_json(ref: PolicyRef) -> str:
    return canonical_json(ref.model_dump())


def _scheduled(ref: PolicyRef, base_lrs: tuple[float, ...]) -> Extras:
    """What a resolved inner policy schedules beside the lrs (its params decide it, so its
    initial state tells)."""
    return extras_of(_inner(_ref_json(ref), base_lrs)[2])


def _lr_only(
    ref: PolicyRef, base_lrs: tuple[float, ...], loc: Loc, composite: Policy
) -> list[tuple[Loc, str]]:
    """The error for an inner policy that schedules more than the lr inside a composite that
    serves its inner policies' lrs only (sequence@1, scaled@1): refused rather than dropped
    without a word (those versions' decisions carry the lrs alone, and stay so)."""
    scheduled = _scheduled(ref, base_lrs)
    if not scheduled:
        return []
    return [
        (
            loc,
            f"{ref.id} schedules the {' and the '.join(scheduled)}, which "
            f"{policy_id(composite.name, composite.version)} cannot serve (it serves the lr "
            "only): turn that off in its params, or run it alone or as a group of groups@1",
        )
    ]


class Composite(Policy):
    """What sequence@1 and scaled@1 share: inner policies in the params, nested at most
    MAX_DEPTH deep, and the run's base lrs kept in the resolved params (not a knob)."""

    filled_params = ("base_lrs",)
    depth_loc: ClassVar[str]  # where an error on nesting too deep is located

    def resolve_params(self, params: dict[str, Any], base_lrs: tuple[float, ...]) -> Frozen:
        # base_lrs is the run's: resolve fills it in, whatever the params say (a stored run's
        # params carry the ones it filled, and are resolved again, maybe for other base lrs:
        # what-if)
        params = {k: v for k, v in params.items() if k != "base_lrs"}
        if _depth(params) > MAX_DEPTH:
            raise PolicyError([((self.depth_loc,), f"policies nest at most {MAX_DEPTH} deep")])
        return self.bind(self.validate(params), base_lrs)

    @abc.abstractmethod
    def bind(self, raw: Any, base_lrs: tuple[float, ...]) -> Frozen:
        """The validated params with every inner policy's params resolved, and base_lrs."""

    def validation_errors(self, exc: ValidationError) -> list[tuple[Loc, str]]:
        errors = exc.errors()
        # a list whose items failed also "has too few items" (pydantic counts the valid ones):
        # name the items, not a false claim about the list
        failed_items = {e["loc"][:1] for e in errors if len(e["loc"]) > 1}
        errors = [e for e in errors if not (e["type"] == "too_short" and e["loc"] in failed_items)]
        return [(tuple(e["loc"]), f"{'.'.join(map(str, e['loc']))}: {e['msg']}") for e in errors]


# -- sequence@1 ------------------------------------------------------------------------------


def _starts(params: SequenceParams) -> list[int]:
    return [0] + [p.until_step or 0 for p in params.phases[:-1]]


def _phase_of(params: SequenceParams, step: int) -> int:
    for i, phase in enumerate(params.phases):
        if phase.until_step is None or step < phase.until_step:
            return i
    return len(params.phases) - 1


class Sequence(Composite):
    name = "sequence"
    version = 1
    description = (
        "Phases one after another, each any released policy, from step 0 to its until_step "
        "(the last never ends): e.g. a linear warmup, then plateau control. Every phase starts "
        "from the run's base lrs; a schedule phase counts steps from its own start, a plateau "
        "phase sees the real steps."
    )
    actions = ("warmup", "decay")  # and its phases' actions
    params_model = SequenceParams
    state_model = SequenceState
    depth_loc = "phases"
    examples = (
        {
            "phases": [
                {
                    "policy": {
                        "name": "linear",
                        "version": 1,
                        "params": {"start_factor": 0.1, "total_iters": 1000},
                    },
                    "until_step": 1000,
                },
                {"policy": {"name": "plateau", "version": 1, "params": {"patience": 5}}},
            ]
        },
    )

    def bind(self, raw: SequenceParams, base_lrs: tuple[float, ...]) -> SequenceParams:
        errors: list[tuple[Loc, str]] = []
        phases = []
        previous = 0
        for i, phase in enumerate(raw.phases):
            last = i == len(raw.phases) - 1
            if last and phase.until_step is not None:
                errors.append(
                    (
                        ("phases", i, "until_step"),
                        "the last phase never ends: give it no until_step",
                    )
                )
            if not last and phase.until_step is None:
                errors.append(
                    (
                        ("phases", i, "until_step"),
                        f"phase {i + 1} needs an until_step: without one, phase {i + 2} could "
                        "never start",
                    )
                )
            if phase.until_step is not None and phase.until_step <= previous:
                errors.append(
                    (
                        ("phases", i, "until_step"),
                        f"until_step {phase.until_step} must be above the phase's start "
                        f"{previous}: the phase could never run",
                    )
                )
            previous = max(previous, phase.until_step or previous)
            inner, resolved = _resolve_ref(phase.policy, base_lrs, ("phases", i, "policy"))
            if i > 0 and inner.from_step_zero:
                errors.append(
                    (
                        ("phases", i, "policy", "name"),
                        f"{phase.policy.id} counts training steps from 0: it can only be the "
                        "first phase",
                    )
                )
            phases.append(
                Phase(
                    policy=phase.policy.model_copy(update={"params": resolved}),
                    until_step=phase.until_step,
                )
            )
            errors += _lr_only(phases[-1].policy, base_lrs, ("phases", i, "policy"), self)
        if errors:
            raise PolicyError(errors)
        return SequenceParams(phases=tuple(phases), base_lrs=tuple(base_lrs))

    def _phase(self, p: SequenceParams, i: int) -> tuple[Policy, Frozen, State]:
        phases: list[tuple[Policy, Frozen, State]] = _memo(
            p, lambda: [_inner(_ref_json(ph.policy), p.base_lrs) for ph in p.phases]
        )
        return phases[i]

    def _clock(self, p: SequenceParams, i: int, policy: Policy, step: int) -> int:
        return step - _starts(p)[i] if policy.open_loop else step

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> SequenceState:
        assert isinstance(params, SequenceParams)
        _, _, initial = self._phase(params, 0)
        return SequenceState(lrs=initial.lrs, phase=0, inner=initial.model_dump())

    def _inner_state(self, p: SequenceParams, state: SequenceState, i: int) -> State:
        policy, _, initial = self._phase(p, i)
        if i != state.phase:
            return initial
        loaded: State = _memo(state, lambda: policy.load_state(state.inner))
        return loaded

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(params, SequenceParams) and isinstance(state, SequenceState)
        i = max(_phase_of(params, step), state.phase)
        policy, inner_params, _ = self._phase(params, i)
        inner = self._inner_state(params, state, i)
        return policy.lrs_at(inner_params, inner, self._clock(params, i, policy, step))

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> SequenceStepper:
        assert isinstance(params, SequenceParams) and isinstance(state, SequenceState)
        return SequenceStepper(self, params, state, metric)


class SequenceStepper(StepperBase):
    """sequence@1 advanced in place: the phase's own stepper does the work; a new phase gets a
    new stepper from its initial state."""

    __slots__ = ("_inner", "_lead", "_metric", "_params", "_phase", "_policy")

    def __init__(
        self, policy: Sequence, params: SequenceParams, state: SequenceState, metric: str
    ) -> None:
        super().__init__(state.lrs)
        self._policy, self._params, self._metric = policy, params, metric
        self._phase = state.phase
        inner_policy, inner_params, _ = policy._phase(params, state.phase)
        self._inner = inner_policy.stepper(
            inner_params, policy._inner_state(params, state, state.phase), metric
        )
        self._lead = ""

    def advance(self, step: int, value: float) -> str:
        params, policy = self._params, self._policy
        i = max(_phase_of(params, step), self._phase)
        inner_policy, inner_params, initial = policy._phase(params, i)
        lead = f"phase {i + 1} of {len(params.phases)} ({params.phases[i].policy.id})"
        switched = i != self._phase
        if switched:
            self._inner = inner_policy.stepper(inner_params, initial, self._metric)
            self._phase = i
            lead += f", from step {_starts(params)[i]}"
        before = self.lrs
        action = self._inner.advance(policy._clock(params, i, inner_policy, step), value)
        lrs = self._inner.lrs
        if switched and lrs != before:  # the new phase starts elsewhere than the last left
            lead += f" ({fmt_change(before, lrs)} as it begins)"
            if action in ("hold", "cooldown"):
                action = (
                    "warmup" if any(b > a for a, b in zip(before, lrs, strict=True)) else "decay"
                )
        self._lead, self.action, self.lrs, self.reduced = lead, action, lrs, self._inner.reduced
        return action

    def reason(self) -> str:
        if not self.action:
            raise RuntimeError("no observation advanced yet: there is no reason to give")
        return f"{self._lead}: {self._inner.reason()}"

    def state(self) -> SequenceState:
        return SequenceState(
            lrs=self.lrs, phase=self._phase, inner=self._inner.state().model_dump()
        )

    def state_doc(self) -> dict[str, Any]:
        return {
            "inner": self._inner.state_doc(),
            "lrs": [to_strict(x) for x in self.lrs],
            "phase": self._phase,
        }


# -- scaled@1 ------------------------------------------------------------------------------


class Scaled(Composite):
    name = "scaled"
    version = 1
    description = (
        "A schedule times a scale that plateau control decides (optax's reduce_on_plateau as "
        "a scale): e.g. a cosine decay whose level drops by factor on each plateau. The plateau "
        "policy runs from base lrs of 1.0: its lrs are the scales, its min_lr floors them."
    )
    actions = ("hold", "warmup", "decay")
    params_model = ScaledParams
    state_model = ScaledState
    depth_loc = "schedule"
    examples = (
        {
            "schedule": {"name": "cosine", "version": 1, "params": {"T_max": 10000}},
            "plateau": {"name": "plateau", "version": 1, "params": {"patience": 3, "factor": 0.5}},
        },
    )

    def bind(self, raw: ScaledParams, base_lrs: tuple[float, ...]) -> ScaledParams:
        schedule, sched_params = _resolve_ref(raw.schedule, base_lrs, ("schedule",))
        ones = tuple(1.0 for _ in base_lrs)
        plateau, plat_params = _resolve_ref(raw.plateau, ones, ("plateau",))
        errors: list[tuple[Loc, str]] = []
        if not schedule.open_loop:
            errors.append(
                (("schedule",), f"{raw.schedule.id} is not a schedule (its lrs follow the metric)")
            )
        if plateau.open_loop:
            errors.append(
                (("plateau",), f"{raw.plateau.id} is a schedule: it never follows the metric")
            )
        bound = ScaledParams(
            schedule=raw.schedule.model_copy(update={"params": sched_params}),
            plateau=raw.plateau.model_copy(update={"params": plat_params}),
            base_lrs=tuple(base_lrs),
        )
        errors += _lr_only(bound.schedule, base_lrs, ("schedule",), self)
        if errors:
            raise PolicyError(errors)
        return bound

    def _parts(self, p: ScaledParams) -> tuple[Policy, Frozen, State, Policy, Frozen, State]:
        ones = tuple(1.0 for _ in p.base_lrs)
        parts: tuple[Policy, Frozen, State, Policy, Frozen, State] = _memo(
            p,
            lambda: (
                *_inner(_ref_json(p.schedule), p.base_lrs),
                *_inner(_ref_json(p.plateau), ones),
            ),
        )
        return parts

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> ScaledState:
        assert isinstance(params, ScaledParams)
        sched, sp, s0, plat, pp, p0 = self._parts(params)
        lrs = _times(sched.lrs_at(sp, s0, 0), plat.lrs_at(pp, p0, 0))
        return ScaledState(lrs=lrs, scale=p0.model_dump())

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(params, ScaledParams) and isinstance(state, ScaledState)
        sched, sp, s0, plat, pp, _ = self._parts(params)
        scale: State = _memo(state, lambda: plat.load_state(state.scale))
        return _times(sched.lrs_at(sp, s0, step), plat.lrs_at(pp, scale, step))

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> ScaledStepper:
        assert isinstance(params, ScaledParams) and isinstance(state, ScaledState)
        return ScaledStepper(self, params, state, metric)


class ScaledStepper(StepperBase):
    """scaled@1 advanced in place: the plateau policy's stepper decides the scale."""

    __slots__ = ("_base", "_inner", "_last_step", "_params", "_parts")

    def __init__(
        self, policy: Scaled, params: ScaledParams, state: ScaledState, metric: str
    ) -> None:
        super().__init__(state.lrs)
        self._params = params
        self._parts = policy._parts(params)
        _, _, _, plat, pp, _ = self._parts
        self._inner = plat.stepper(pp, _memo(state, lambda: plat.load_state(state.scale)), metric)
        self._base: tuple[float, ...] = ()
        self._last_step = 0

    def advance(self, step: int, value: float) -> str:
        sched, sp, s0, _, _, _ = self._parts
        self._last_step = step
        inner_action = self._inner.advance(step, value)
        base = sched.lrs_at(sp, s0, step)
        lrs = _times(base, self._inner.lrs)  # the plateau's lrs at its evaluation: the scales
        if inner_action not in ("hold", "cooldown"):
            action = inner_action  # the plateau's own news (reduce, decay, stop) comes first
        elif lrs == self.lrs:
            action = "hold"
        else:
            action = "warmup" if any(b > a for a, b in zip(self.lrs, lrs, strict=True)) else "decay"
        self._base, self.action, self.lrs, self.reduced = base, action, lrs, self._inner.reduced
        return action

    def reason(self) -> str:
        if not self.action:
            raise RuntimeError("no observation advanced yet: there is no reason to give")
        return (
            f"scale: {self._inner.reason()}; {self._params.schedule.id} at step "
            f"{self._last_step}: {fmt_lrs(self._base)} x scale {list(self._inner.lrs)} = "
            f"{fmt_lrs(self.lrs)}"
        )

    def state(self) -> ScaledState:
        return ScaledState(lrs=self.lrs, scale=self._inner.state().model_dump())

    def state_doc(self) -> dict[str, Any]:
        return {"lrs": [to_strict(x) for x in self.lrs], "scale": self._inner.state_doc()}


def _times(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x * y for x, y in zip(a, b, strict=True))


# -- groups@1 ------------------------------------------------------------------------------

MAX_GROUPS = 64  # groups of a groups@1 policy (each may cover many of the run's param groups)
GROUP_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
# How significant a group's action is: the decision's action is its groups' most significant
# one (the first group's, on a tie). An action not listed (a later policy's) ranks just below
# "stop": news the run must see. Frozen with the version.
ACTION_ORDER = ("stop", "reduce", "decay", "warmup", "cooldown", "hold")
_UNLISTED_RANK = 0.5
_RANKS: dict[str, float] = {action: n for n, action in enumerate(ACTION_ORDER)}


ParamGroups = (
    Annotated[StrictInt, Field(ge=1, le=1024)]
    | Annotated[
        tuple[Annotated[StrictInt, Field(ge=0, le=1023)], ...], Field(min_length=1, max_length=1024)
    ]
)


class Group(Frozen):
    name: Annotated[str, Field(pattern=GROUP_NAME_PATTERN)] = Field(
        description="the group's name, as its reasons give it", examples=["backbone"]
    )
    policy: PolicyRef
    param_groups: ParamGroups = Field(
        default=1,
        description="the run's param groups this group decides: their indices in base_lrs "
        "(from 0), or how many (the next ones in order, after the previous group's)",
    )


class GroupsParams(Frozen):
    groups: Annotated[tuple[Group, ...], Field(min_length=1, max_length=MAX_GROUPS)] = Field(
        description="each group: a name, its policy and the run's param groups it decides; "
        "every param group in exactly one group"
    )
    base_lrs: tuple[float, ...] = ()  # filled by resolve, as for sequence@1


class GroupsState(State):
    groups: tuple[dict[str, Any], ...]  # each group's policy state, as its JSON document
    # What the groups schedule beside the lrs (EXTRAS), in the run's order, as the lrs are;
    # None: not scheduled, and then absent from the document, so that a run whose groups
    # schedule none keeps the state (and the log) it always had.
    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None

    @model_serializer(mode="wrap")
    def _scheduled_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        doc: dict[str, Any] = handler(self)
        for name in EXTRAS:
            if name in doc and doc[name] is None:
                del doc[name]
        return doc


def _indices(group: Group) -> tuple[int, ...]:
    """A resolved group's param groups (resolve turns a count into the indices)."""
    assert isinstance(group.param_groups, tuple)
    return group.param_groups


def _bind_param_groups(
    groups: tuple[Group, ...], size: int
) -> tuple[list[tuple[int, ...]], list[tuple[Loc, str]]]:
    """Each group's indices into the run's base lrs, every one in exactly one group; or the
    errors (located under the params)."""
    counts = [isinstance(g.param_groups, int) for g in groups]
    if any(counts) and not all(counts):
        return [], [
            (
                ("groups", i, "param_groups"),
                "give every group a count of param groups or every group a list of indices, "
                "not both (a group without param_groups counts 1)",
            )
            for i, g in enumerate(groups)
            if isinstance(g.param_groups, int)
        ]
    if all(counts):
        total = sum(g.param_groups for g in groups if isinstance(g.param_groups, int))
        if total != size:
            return [], [
                (
                    ("groups",),
                    f"the groups' param_groups add up to {total}, the run has {size} base lrs: "
                    "every param group needs exactly one group",
                )
            ]
        out, start = [], 0
        for g in groups:
            assert isinstance(g.param_groups, int)
            out.append(tuple(range(start, start + g.param_groups)))
            start += g.param_groups
        return out, []
    errors: list[tuple[Loc, str]] = []
    owner: dict[int, str] = {}
    for i, g in enumerate(groups):
        for j, index in enumerate(_indices(g)):
            loc: Loc = ("groups", i, "param_groups", j)
            if index >= size:
                errors.append(
                    (
                        loc,
                        f"param group {index} does not exist: the run has {size} base lrs "
                        f"(0 to {size - 1})",
                    )
                )
            elif index in owner:
                errors.append(
                    (
                        loc,
                        f"param group {index} is in group {owner[index]!r} already: every "
                        "param group needs exactly one group",
                    )
                )
            else:
                owner[index] = g.name
    missing = [k for k in range(size) if k not in owner]
    if missing and not errors:
        listed = ", ".join(map(str, missing[:16])) + (", ..." if len(missing) > 16 else "")
        these = f"param group {listed} is" if len(missing) == 1 else f"param groups {listed} are"
        errors.append((("groups",), f"{these} in no group: every base lr needs a group"))
    return [_indices(g) for g in groups], errors


class Groups(Composite):
    name = "groups"
    version = 1
    description = (
        "A policy per param group: each group of the run's param groups (a fine-tune's "
        "backbone, its head) decided by its own released policy from its own base lrs, every "
        "group at every observation, on the real steps; one decision a step, whose action is "
        "the groups' most significant (stop, reduce, decay, warmup, cooldown, hold) and whose "
        "reason gives each group's."
    )
    actions = ACTION_ORDER  # and its groups' actions
    params_model = GroupsParams
    state_model = GroupsState
    depth_loc = "groups"
    examples = (
        {
            "groups": [
                {
                    "name": "backbone",
                    "policy": {
                        "name": "cosine_with_min_lr",
                        "version": 1,
                        "params": {
                            "num_warmup_steps": 300,
                            "num_training_steps": 1000,
                            "min_lr_rate": 0.1,
                        },
                    },
                    "param_groups": 1,
                },
                {
                    "name": "head",
                    "policy": {
                        "name": "sequence",
                        "version": 1,
                        "params": {
                            "phases": [
                                {
                                    "policy": {
                                        "name": "linear",
                                        "version": 1,
                                        "params": {"start_factor": 0.01, "total_iters": 100},
                                    },
                                    "until_step": 100,
                                },
                                {
                                    "policy": {
                                        "name": "plateau",
                                        "version": 1,
                                        "params": {"patience": 3, "factor": 0.5},
                                    }
                                },
                            ]
                        },
                    },
                    "param_groups": 1,
                },
            ],
            # the run's base lrs this example is written for, one a group (a composite's
            # params carry the run's: resolve fills them in, whatever is given here)
            "base_lrs": [0.02, 0.1],
        },
    )

    def bind(self, raw: GroupsParams, base_lrs: tuple[float, ...]) -> GroupsParams:
        indices, errors = _bind_param_groups(raw.groups, len(base_lrs))
        seen: dict[str, int] = {}
        for i, g in enumerate(raw.groups):
            if g.name in seen:
                errors.append(
                    (
                        ("groups", i, "name"),
                        f"group {g.name!r} is named twice (groups {seen[g.name]} and {i}): "
                        "give each group its own name",
                    )
                )
            seen.setdefault(g.name, i)
        if errors:  # each group's policy is resolved for its own base lrs: known by now
            raise PolicyError(errors)
        groups = []
        for i, (g, idx) in enumerate(zip(raw.groups, indices, strict=True)):
            loc: Loc = ("groups", i, "policy")
            if g.policy.id == policy_id(self.name, self.version):
                errors.append(
                    (
                        (*loc, "name"),
                        f"a group's policy cannot be {g.policy.id}: give its groups here, one list",
                    )
                )
                continue
            try:
                inner, resolved = _resolve_ref(g.policy, tuple(base_lrs[k] for k in idx), loc)
            except PolicyError as exc:
                errors.extend(exc.errors)
                continue
            if inner.from_step_zero:
                errors.append(
                    (
                        (*loc, "name"),
                        f"{g.policy.id} counts training steps from 0 and decides the run's end: "
                        "run it alone, not as a group",
                    )
                )
            groups.append(
                Group(
                    name=g.name,
                    policy=g.policy.model_copy(update={"params": resolved}),
                    param_groups=idx,
                )
            )
        if errors:
            raise PolicyError(errors)
        errors = _all_or_none(groups, base_lrs)
        if errors:
            raise PolicyError(errors)
        return GroupsParams(groups=tuple(groups), base_lrs=tuple(base_lrs))

    def parts(self, p: GroupsParams) -> list[tuple[Policy, Frozen, State, tuple[int, ...]]]:
        """Each group's policy, params, initial state and indices: found once a params object."""
        parts: list[tuple[Policy, Frozen, State, tuple[int, ...]]] = _memo(
            p,
            lambda: [
                (
                    *_inner(_ref_json(g.policy), tuple(p.base_lrs[k] for k in _indices(g))),
                    _indices(g),
                )
                for g in p.groups
            ],
        )
        return parts

    def _states(self, p: GroupsParams, state: GroupsState) -> list[State]:
        states: list[State] = _memo(
            state,
            lambda: [
                policy.load_state(doc)
                for (policy, _, _, _), doc in zip(self.parts(p), state.groups, strict=True)
            ],
        )
        return states

    def init(self, params: Frozen, base_lrs: tuple[float, ...]) -> GroupsState:
        assert isinstance(params, GroupsParams)
        parts = self.parts(params)
        size = len(params.base_lrs)
        lrs = _in_run_order(size, [(s.lrs, idx) for _, _, s, idx in parts])
        extras = _joined(size, [(extras_of(s), idx) for _, _, s, idx in parts])
        return GroupsState(lrs=lrs, groups=tuple(s.model_dump() for _, _, s, _ in parts), **extras)

    def lrs_at(self, params: Frozen, state: State, step: int) -> tuple[float, ...]:
        assert isinstance(params, GroupsParams) and isinstance(state, GroupsState)
        return _in_run_order(
            len(params.base_lrs),
            [
                (policy.lrs_at(inner_params, inner, step), idx)
                for (policy, inner_params, _, idx), inner in zip(
                    self.parts(params), self._states(params, state), strict=True
                )
            ],
        )

    def extras_at(self, params: Frozen, state: State, step: int) -> Extras:
        assert isinstance(params, GroupsParams) and isinstance(state, GroupsState)
        if state.momentum is None and state.weight_decay is None:
            return {}  # the groups schedule none (bind lets all of them or none)
        return _joined(
            len(params.base_lrs),
            [
                (policy.extras_at(inner_params, inner, step), idx)
                for (policy, inner_params, _, idx), inner in zip(
                    self.parts(params), self._states(params, state), strict=True
                )
            ],
        )

    def stepper(self, params: Frozen, state: State, metric: str = "metric") -> GroupsStepper:
        assert isinstance(params, GroupsParams) and isinstance(state, GroupsState)
        return GroupsStepper(self, params, state, metric)


def _all_or_none(groups: list[Group], base_lrs: tuple[float, ...]) -> list[tuple[Loc, str]]:
    """An error for each group that schedules no momentum (weight decay) while another group
    does: its param groups would get none, and the optimizer's own value is not the
    service's to know or to serve."""
    scheduled = [set(_scheduled(g.policy, tuple(base_lrs[k] for k in _indices(g)))) for g in groups]
    errors: list[tuple[Loc, str]] = []
    for i, (g, names) in enumerate(zip(groups, scheduled, strict=True)):
        missing = [n for n in EXTRAS if n not in names and any(n in s for s in scheduled)]
        if missing:
            other = next(o for o, s in zip(groups, scheduled, strict=True) if missing[0] in s)
            errors.append(
                (
                    ("groups", i, "policy"),
                    f"every group schedules the {' and the '.join(missing)} or none: "
                    f"groups.{i} ({g.name}, {g.policy.id}) does not, group {other.name!r} does",
                )
            )
    return errors


def _joined(size: int, parts: list[tuple[Extras, tuple[int, ...]]]) -> Extras:
    """The run's extras from each group's and the indices they go to: those every group
    schedules (bind lets all of them or none)."""
    return {
        name: _in_run_order(size, [(extras[name], idx) for extras, idx in parts])
        for name in EXTRAS
        if parts and all(name in extras for extras, _ in parts)
    }


def _in_run_order(
    size: int, parts: list[tuple[tuple[float, ...], tuple[int, ...]]]
) -> tuple[float, ...]:
    """The run's lrs from each group's lrs and the indices they go to."""
    out = [0.0] * size
    for lrs, idx in parts:
        for k, lr in zip(idx, lrs, strict=True):
            out[k] = lr
    return tuple(out)


class GroupsStepper(StepperBase):
    """groups@1 advanced in place: each group's own stepper decides; O(1) a group for each
    observation. When the groups cover the run's param groups in order (a count each, the
    common case) their lrs are joined end to end, else placed by index. What the groups
    schedule beside the lrs (momentum, weight decay: all of them or none) is placed the same
    way, ``_placed``."""

    __slots__ = ("_extras", "_inner", "_names", "_order", "_size", "momentum", "weight_decay")

    momentum: tuple[float, ...] | None
    weight_decay: tuple[float, ...] | None

    def __init__(
        self, policy: Groups, params: GroupsParams, state: GroupsState, metric: str
    ) -> None:
        super().__init__(state.lrs)
        parts = policy.parts(params)
        self._inner = [
            inner_policy.stepper(inner_params, loaded, metric)
            for (inner_policy, inner_params, _, _), loaded in zip(
                parts, policy._states(params, state), strict=True
            )
        ]
        self._names = [f"{g.name} ({g.policy.id})" for g in params.groups]
        self._size = len(params.base_lrs)
        flat = [k for _, _, _, idx in parts for k in idx]
        # None: the groups' lrs joined end to end are the run's (no placing by index)
        self._order = None if flat == list(range(self._size)) else [idx for *_, idx in parts]
        self.momentum, self.weight_decay = state.momentum, state.weight_decay
        self._extras = tuple(extras_of(state))  # the names the groups schedule, if any

    def _placed(self, per_group: list[tuple[float, ...]]) -> tuple[float, ...]:
        """The run's values (one a param group) from each group's, in the groups' order."""
        if self._order is None:
            return tuple(x for values in per_group for x in values)
        return _in_run_order(self._size, list(zip(per_group, self._order, strict=True)))

    def advance(self, step: int, value: float) -> str:
        action, best, reduced = "", 99.0, False
        ranks = _RANKS
        joined: list[float] = []
        extend = joined.extend  # the groups' lrs end to end, gathered as they are decided
        for inner in self._inner:
            a = inner.advance(step, value)
            rank = ranks.get(a, _UNLISTED_RANK)
            if rank < best:
                action, best = a, rank
            if inner.reduced:
                reduced = True
            extend(inner.lrs)
        if self._order is None:
            self.lrs = tuple(joined)
        else:
            self.lrs = self._placed([inner.lrs for inner in self._inner])
        for name in self._extras:
            setattr(self, name, self._placed([getattr(inner, name) for inner in self._inner]))
        self.action, self.reduced = action, reduced
        return action

    def reason(self) -> str:
        if not self.action:
            raise RuntimeError("no observation advanced yet: there is no reason to give")
        return "; ".join(
            f"{name}: {inner.reason()}"
            for name, inner in zip(self._names, self._inner, strict=True)
        )

    def state(self) -> GroupsState:
        return GroupsState(
            lrs=self.lrs,
            groups=tuple(inner.state().model_dump() for inner in self._inner),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )

    def state_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "groups": [inner.state_doc() for inner in self._inner],
            "lrs": [to_strict(x) for x in self.lrs],
        }
        for name, values in extras_of(self).items():  # only what the groups schedule
            doc[name] = [to_strict(x) for x in values]
        return doc
