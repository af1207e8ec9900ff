"""A cooldown on demand: an operator starts the policy's decay from a later step, as a cooldown
entry of the run's log (who asked, why, from which step, how long, which shape).

The policy says whether and how (``Policy.cooldown``: WSD ends its stable phase; a policy
without one refuses); the entry is built by ``lrpilot.entries.cooldown``, which verify calls
too. The entry stands at the step where the log stood when it was asked (the run's last
decided step, or its last resize's), so a rewind below that step supersedes it as it does the
decisions after it; the decay itself starts at a later step, ``at_step``.
"""

from __future__ import annotations

from typing import Any

from lrpilot import entries
from lrpilot.canonical import canonical_json
from lrpilot.domain.deciding import chain_of, load_state, now, resolved
from lrpilot.domain.errors import Conflict, Invalid, RunNotFound
from lrpilot.policies import PolicyError
from lrpilot.store.records import NewDecision, RunHead, RunKey, appended
from lrpilot.store.runs import Store, WriteTx


def cooldown_entry(
    head: RunHead,
    at_step: int,
    steps: int,
    shape: str | None,
    why: str | None,
    created_at: str,
    client: dict[str, Any] | None = None,
    who: dict[str, str] | None = None,
) -> NewDecision:
    """The cooldown entry for the run at ``head``; Conflict (409) when the policy refuses
    (its message names why), Invalid (422) for a shape it does not know."""
    policy, params = resolved(head.spec)
    state = load_state(policy, head)
    at = entries.standing(head.last_step, None if head.scale is None else head.scale.step)
    try:
        cooled = policy.cooldown(params, state, at_step, steps, shape, at)
    except PolicyError as exc:
        loc, message = exc.errors[0]
        if loc == ("shape",):
            raise Invalid(["body", "shape"], message, kind="cooldown") from None
        raise Conflict(f"run {head.run_id!r} cannot cool down: {message}") from None
    state_doc = cooled.model_dump()
    entry = entries.cooldown(
        chain_of(head),
        0 if at is None else at,
        created_at,
        at_step=at_step,
        steps=steps,
        shape=shape,
        why=why,
        policy_lrs=cooled.lrs,
        state=state_doc,
        client=client,
        who=who,
    ).seal()
    return appended(head.key, entry, canonical_json(state_doc), head.last_step, head.scale)


def cooldown(
    store: Store,
    run: RunKey,
    at_step: int,
    steps: int,
    shape: str | None,
    why: str | None,
    client: dict[str, Any] | None = None,
    who: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start the run's decay at ``at_step`` (a step not yet decided), ``steps`` long: the
    cooldown entry appended, and the run as it then stands."""

    def work(tx: WriteTx) -> NewDecision:
        head = tx.lock_run(run)
        if head is None:
            raise RunNotFound(f"run {run.run_id!r} not found")
        entry = cooldown_entry(head, at_step, steps, shape, why, now(), client, who)
        tx.append_decision(entry)
        return entry

    entry = store.transact(work)
    doc = store.get_run(run)
    return {"run_id": run.run_id, "at_step": at_step, "lrs": doc["lrs"], "decision": entry.doc}
