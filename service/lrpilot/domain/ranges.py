"""The lrs at one training step, and over a range of steps: for ranks that only read.

A schedule moves the lrs between evaluations, so the lrs at a step are the policy's
``lrs_at(step)`` from the state of the last live entry at or before it (the initial state
before the first), times the scale in force there. Both reads run the one replay loop's range
function, ``lrpilot.replay.lrs_range``.
"""

from __future__ import annotations

from typing import Any

from lrpilot import replay
from lrpilot.canonical import parse_float
from lrpilot.domain.deciding import resolved
from lrpilot.domain.scaling import unsettled_from
from lrpilot.policies import Frozen, Policy, State
from lrpilot.policies.base import extras_of
from lrpilot.store.records import RunHead, RunKey
from lrpilot.store.runs import Store

MAX_LRS_VALUES = 200_000  # numbers in one GET /lrs answer (steps x param groups): ~4 MiB


def _in_force(
    policy: Policy, params: Frozen, head: RunHead, entry: dict[str, Any] | None
) -> tuple[State, float]:
    """The policy state a stored entry left and the scaling rule's factor on the lrs it
    served (1.0 when it carries none); before the first entry (None), the initial state."""
    if entry is None:
        return policy.init(params, tuple(head.spec.base_lrs)), 1.0
    return policy.load_state(entry["state"]), parse_float(entry.get("scale", 1.0))


def lr_at(store: Store, run: RunKey, step: int | None) -> tuple[dict[str, Any], bool]:
    """The lrs in force at training step ``step`` (the latest when None), and whether the run
    is decided through ``step`` (a resize may still change lrs that are decided: then they are
    not ``certain``)."""
    head, row = store.decision_at_or_before(run, step)
    policy, params = resolved(head.spec)
    if step is None:
        lrs = head.lrs.value
        seq, at = (head.last_seq or None), head.last_step
        extras = extras_of(head.state.value)
    else:
        seq, at, entry = row if row is not None else (None, None, None)
        state, by = _in_force(policy, params, head, entry)
        lrs = replay.lrs_range(policy, params, state, by, step, 1, ())[0][0]
        extras = policy.extras_at(params, state, step)
    decided = step is None or (
        (head.last_step is not None and head.last_step >= step) or policy.open_loop
    )
    settled = unsettled_from(head)
    answer = {
        "run_id": run.run_id,
        "step": step,
        "lrs": lrs,
        "seq": seq,
        "decided_at_step": at,
        # no later evaluation can change them, nor (a run with a scaling rule) a resize
        "certain": decided and (step is None or settled is None or step < settled),
    }
    for name, values in extras.items():  # only what the policy schedules
        answer[name] = list(values)
    return answer, decided


def lrs_range(store: Store, run: RunKey, first: int, count: int, every: int = 1) -> dict[str, Any]:
    """The lrs of ``count`` training steps from ``first``, ``every`` steps apart (a run clocked
    in tokens reads a long range in a few points, never one a token), and the last step of the
    range that no later evaluation can change (None when none is certain yet). An answer holds
    at most ``MAX_LRS_VALUES`` numbers: with many param groups, fewer steps (``count`` says how
    many; ask again from there)."""
    head, before, within = store.decisions_between(run, first, first + (count - 1) * every, every)
    groups = len(head.spec.base_lrs)
    count = max(1, min(count, MAX_LRS_VALUES // max(1, groups)))
    last = first + (count - 1) * every
    policy, params = resolved(head.spec)
    state, by = _in_force(policy, params, head, before)
    changes = [(step, *_in_force(policy, params, head, entry)) for step, entry in within]
    lrs, extras = replay.lrs_range(policy, params, state, by, first, count, changes, every)
    if policy.open_loop:
        certain: int | None = last
    elif head.last_step is None or head.last_step < first:
        certain = None
    else:
        certain = min(last, head.last_step)
    settled = unsettled_from(head)
    if certain is not None and settled is not None:  # a resize may still change the rest
        certain = min(certain, settled - 1) if settled > first else None
    return {
        "run_id": run.run_id,
        "from": first,
        "count": count,
        "every": every,
        "lrs": lrs,
        "certain_through": certain,
        "open_loop": policy.open_loop,
        **extras,  # only what the policy schedules
    }
