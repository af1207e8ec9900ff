"""A retime: an operator gives a running schedule a new horizon without a jump in lr, as a
retime entry of the run's log (who asked, from which step, the new horizon, the mode).

The arithmetic is ``lrpilot.policies.retime``'s (a time map around the policy, which says on
the contract whether it has a horizon); the entry is built by ``lrpilot.entries.retime``, which
verify calls too. Like a cooldown entry it stands where the log stood when it was asked, so a
rewind below that step supersedes it.
"""

from __future__ import annotations

from typing import Any

from lrpilot import entries
from lrpilot.canonical import canonical_json
from lrpilot.domain.deciding import chain_of, load_state, now, resolved
from lrpilot.domain.errors import Conflict, Invalid, RunNotFound
from lrpilot.policies import PolicyError
from lrpilot.policies.retime import retimed
from lrpilot.store.records import NewDecision, RunHead, RunKey, appended
from lrpilot.store.runs import Store, WriteTx


def retime_entry(
    head: RunHead,
    at_step: int,
    horizon: int,
    mode: str,
    created_at: str,
    client: dict[str, Any] | None = None,
    who: dict[str, str] | None = None,
) -> NewDecision:
    """The retime entry for the run at ``head``; Conflict (409) when it cannot be retimed
    there (the message says why), Invalid (422) for a horizon not after ``at_step``."""
    policy, params = resolved(head.spec)
    state = load_state(policy, head)
    at = entries.standing(head.last_step, None if head.scale is None else head.scale.step)
    try:
        new = retimed(policy, params, state, at_step, horizon, mode, at)
        has = policy.horizon(params, state)
    except PolicyError as exc:
        loc, message = exc.errors[0]
        if loc == ("horizon",):
            raise Invalid(["body", "horizon"], message, kind="retime") from None
        raise Conflict(f"run {head.run_id!r} cannot be retimed: {message}") from None
    assert has is not None  # retimed() refuses a policy without one
    state_doc = new.model_dump()
    entry = entries.retime(
        chain_of(head),
        0 if at is None else at,
        created_at,
        at_step=at_step,
        horizon=horizon,
        mode=mode,
        param=has.param,
        policy_lrs=new.lrs,
        state=state_doc,
        client=client,
        who=who,
    ).seal()
    return appended(head.key, entry, canonical_json(state_doc), head.last_step, head.scale)


def retime(
    store: Store,
    run: RunKey,
    at_step: int,
    horizon: int,
    mode: str,
    client: dict[str, Any] | None = None,
    who: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Give the run's schedule the new ``horizon`` from ``at_step`` (a step not yet decided):
    the retime entry appended, and the run as it then stands."""

    def work(tx: WriteTx) -> NewDecision:
        head = tx.lock_run(run)
        if head is None:
            raise RunNotFound(f"run {run.run_id!r} not found")
        entry = retime_entry(head, at_step, horizon, mode, now(), client, who)
        tx.append_decision(entry)
        return entry

    entry = store.transact(work)
    doc = store.get_run(run)
    return {"run_id": run.run_id, "at_step": at_step, "lrs": doc["lrs"], "decision": entry.doc}
