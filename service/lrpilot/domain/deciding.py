"""One observation decided: the policy stepped, the decision built and sealed onto the chain.

Pure functions over a run's head (``lrpilot.store.records.RunHead``): no SQL, no HTTP. The
service (``lrpilot.domain.decisions``) runs them inside a store transaction; what is decided is
built by ``lrpilot.entries``, the builder verify calls too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lrpilot import entries
from lrpilot.canonical import canonical_json, parse_float, same_float
from lrpilot.domain.errors import Conflict
from lrpilot.entries import NOBODY, Asker, Chain, Ranks
from lrpilot.guard import Finder, GuardStepper, drafted, guard_doc, guarded
from lrpilot.policies import Frozen, Observation, Policy, State, get_policy
from lrpilot.policies.retime import around
from lrpilot.spec import RunSpec, RunStored
from lrpilot.store.records import NewDecision, NewRun, RunHead, Stored, appended


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_RESOLVED: dict[int, tuple[RunStored, Policy, Frozen]] = {}
_RESOLVED_MAX = 4096


def resolved(spec: RunStored) -> tuple[Policy, Frozen]:
    """A stored run's policy and params; they were validated at creation: resolved once a
    process (the store hands out one object for each stored spec)."""
    known = _RESOLVED.get(id(spec))
    if known is not None and known[0] is spec:
        return known[1], known[2]
    # a policy with a horizon may be retimed: its states then carry a time map (policies.retime)
    policy = guarded(around(get_policy(spec.policy.name, spec.policy.version)), spec.guard)
    params = policy.resolve(dict(spec.policy.params), tuple(spec.base_lrs))
    if len(_RESOLVED) >= _RESOLVED_MAX:
        _RESOLVED.clear()
    _RESOLVED[id(spec)] = (spec, policy, params)  # the spec is held: its id stays its own
    return policy, params


def new_run(run_id: str, spec: RunSpec, created_at: str, project: str = "default") -> NewRun:
    """The run to store in ``project``: params resolved (PolicyError if invalid), initial
    state, config hash."""
    policy = guarded(get_policy(spec.policy.name, spec.policy.version), spec.guard)
    base_lrs = tuple(spec.base_lrs)
    params = policy.resolve(dict(spec.policy.params), base_lrs)
    params_doc = params.model_dump()
    pid = spec.policy.id
    stored = RunStored.model_construct(
        **{
            **spec.model_dump(exclude={"policy", "aggregate", "scaling", "guard"}),
            "policy": spec.policy.model_copy(update={"params": params_doc}),
            "aggregate": spec.aggregate,
            "scaling": spec.scaling,
            "guard": spec.guard,
            "run_id": run_id,
            "config_hash": entries.config_hash(pid, params_doc, base_lrs, guard_doc(spec)),
            "created_at": created_at,
        }
    )
    initial = policy.init(params, base_lrs)
    return NewRun(
        spec=stored,
        state=canonical_json(initial.model_dump()),
        lrs=canonical_json(list(initial.lrs)),
        project=project,
    )


def check_same_spec(stored: RunStored, run: NewRun) -> None:
    """A run's spec never changes: creating it again must ask for the same one."""
    asked = run.spec
    # compared as canonical JSON: resolved params may hold tuples where the stored ones are lists
    if canonical_json(stored.header_doc() | {"created_at": ""}) != canonical_json(
        asked.header_doc() | {"created_at": ""}
    ):
        aggregate = None if stored.aggregate is None else stored.aggregate.model_dump()
        scaling = None if stored.scaling is None else stored.scaling.model_dump()
        raise Conflict(
            f"run {asked.run_id!r} exists with another spec (config_hash "
            f"{stored.config_hash[:12]}…, metric {stored.metric!r}, labels "
            f"{canonical_json(stored.labels)}, aggregate "
            f"{canonical_json(aggregate) if aggregate else 'none'}, scaling "
            f"{canonical_json(scaling) if scaling else 'none'}, clock {stored.clock}); a run's "
            "spec never changes: use a new run_id"
        )


# The states this process wrote last, by their canonical JSON: the next decision of a run reads
# back the very text its previous decision stored, and need not parse and validate it again.
# States are frozen, so sharing them is safe; the bound only caps memory.
_STATES: dict[tuple[str, str], State] = {}
_STATES_MAX = 4096


def load_state(policy: Policy, head: RunHead) -> State:
    """The policy state where the run's log stands."""
    key = (head.spec.policy.id, head.state.text)
    state = _STATES.get(key)
    if state is None:
        state = policy.load_state(head.state.value)
    return state


def _remember_state(policy_id: str, state_json: str, state: State) -> None:
    if len(_STATES) >= _STATES_MAX:
        _STATES.clear()
    _STATES[(policy_id, state_json)] = state


def chain_of(head: RunHead) -> Chain:
    """Where the run's log stands, as the entry builders take it."""
    spec = head.spec
    return Chain(
        spec.run_id,
        spec.policy.id,
        spec.config_hash,
        head.last_seq,
        head.head_hash,
        None if spec.scaling is None else spec.scaling.model_dump(),
        head.scale,
    )


def decide(
    head: RunHead,
    step: int,
    value: float,
    asker: Asker = NOBODY,
    ranks: Ranks | None = None,
    find: Finder | None = None,
) -> NewDecision:
    """The decision for a new step (above ``head.last_step``), sealed onto the chain now;
    ``asker`` who posted the observation; ``ranks`` (aggregated mode) the reports ``value``
    is the weighted mean of; ``find`` (a guarded run) the newest live checkpoint before a step,
    where a rollback goes."""
    spec = head.spec
    policy, params = resolved(spec)
    state = load_state(policy, head)
    at = entries.Stamp(chain_of(head), step, now(), asker)
    if spec.guard is not None:
        return _guarded(head, policy, params, state, at, value, ranks, find)
    outcome, new_state = policy.step(
        params, state, Observation(step=step, value=value, metric=spec.metric or "metric")
    )
    state_doc = new_state.model_dump()
    entry = entries.decision(
        at,
        value,
        action=outcome.action,
        reason=outcome.reason,
        lrs=outcome.lrs,
        previous_lrs=state.lrs,  # a policy's state carries the lrs in force
        state=state_doc,
        ranks=ranks,
    ).seal()
    state_json = canonical_json(state_doc)
    _remember_state(spec.policy.id, state_json, new_state)
    return appended(head.key, entry, state_json, step, head.scale, 1 if outcome.reduced else 0)


def _guarded(
    head: RunHead,
    policy: Policy,
    params: Frozen,
    state: State,
    at: entries.Stamp,
    value: float,
    ranks: Ranks | None,
    find: Finder | None,
) -> NewDecision:
    """``decide`` for a guarded run: its stepper, which may decide a rollback (to the
    checkpoint ``find`` names: the caller appends the rewind to it)."""
    stepper = policy.stepper(params, state, head.spec.metric or "metric")
    assert isinstance(stepper, GuardStepper)
    stepper.find = find
    stepper.advance(at.step, value)
    entry = drafted(at, value, stepper, state.lrs, ranks)
    return appended(
        head.key,
        entry.seal(),
        canonical_json(entry.doc["state"]),
        at.step,
        head.scale,
        1 if stepper.reduced else 0,
    )


def retried(head: RunHead, step: int, value: float, stored: Stored | None) -> str:
    """The answer to a step at or below the last decided one: the stored decision of that step
    when the value is the same (a retry never counts twice), else a Conflict."""
    if stored is None:
        raise Conflict(
            f"step {step} is below the last decided step {head.last_step} of run "
            f"{head.run_id!r} and was never decided: steps must not go backwards "
            "(a job resumed from an older checkpoint should rewind the run first)"
        )
    decision = stored.value
    was = parse_float(decision["value"])
    if not same_float(was, value):
        raise Conflict(
            f"step {step} of run {head.run_id!r} was already decided (seq {decision['seq']}) "
            f"with value {was!r}; this request says {value!r}: a step's value cannot change"
        )
    return stored.text
