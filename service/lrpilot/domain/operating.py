"""An operator's decisions on a run's schedule, each an entry of the log of its own kind with
who asked: a cooldown on demand (``Policy.cooldown``: WSD ends its stable phase; a
``start_cooldown`` entry) and a retime (``lrpilot.policies.retime``: a new horizon without a
jump in lr; a ``retime`` entry).

The policy says whether and how; the entries are built by ``lrpilot.entries`` (``cooldown``,
``retime``), which verify calls too. Each entry stands where the log stood when it was asked
(the run's last decided step, or its last resize's: ``entries.standing``), so a rewind below
that step supersedes it as it does the decisions after it; what it changes starts at a later
step, ``at_step``, not yet decided: the lrs served now, and every waiting reader's answer, stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lrpilot import entries
from lrpilot.canonical import canonical_json
from lrpilot.domain.deciding import chain_of, load_state, now, resolved
from lrpilot.domain.errors import Conflict, Invalid, RunNotFound
from lrpilot.entries import NOBODY, AskedCooldown, AskedRetime, Asker
from lrpilot.policies import Frozen, Policy, PolicyError, State
from lrpilot.policies.retime import retimable
from lrpilot.store.records import NewDecision, RunHead, RunKey, appended
from lrpilot.store.runs import Store, WriteTx

# what the policy refuses because of a field of the body itself (a 422), by operation
_BODY_FIELDS = {"cooldown": ("shape",), "retime": ("horizon",)}


Change = Callable[[Policy, Frozen, State, int | None], tuple[State, Any]]
Build = Callable[[entries.Stamp, dict[str, Any], tuple[float, ...], Any], entries.Draft]


def _entry(
    head: RunHead, what: str, asker: Asker, change: Change, build: Build
) -> NewDecision | None:
    """The entry of an operator's decision on the run at ``head``, asked by ``asker``:
    ``change`` makes the new policy state from the state where the log stands (and anything
    ``build`` needs besides); ``build`` the entry, standing there; None when the state does
    not change (the decision is in force already: a retry). The policy's refusal is a
    Conflict (409), or an Invalid (422) when it blames a field of the body."""
    policy, params = resolved(head.spec)
    at = entries.standing(head.last_step, None if head.scale is None else head.scale.step)
    try:
        state, extra = change(policy, params, load_state(policy, head), at)
    except PolicyError as exc:
        loc, message = exc.errors[0]
        if loc and loc[0] in _BODY_FIELDS[what]:
            raise Invalid(["body", *map(str, loc)], message, kind=what) from None
        verb = "cool down" if what == "cooldown" else "be retimed"
        raise Conflict(f"run {head.run_id!r} cannot {verb}: {message}") from None
    state_doc = state.model_dump()
    if canonical_json(state_doc) == head.state.text:
        return None
    stamp = entries.Stamp(chain_of(head), 0 if at is None else at, now(), asker)
    entry = build(stamp, state_doc, state.lrs, extra).seal()
    return appended(head.key, entry, canonical_json(state_doc), head.last_step, head.scale)


def _append(
    store: Store, run: RunKey, at_step: int, what: str, asker: Asker, change: Change, build: Build
) -> dict[str, Any]:
    """The entry of an operator's decision (``_entry``) on the run as it stands, appended (none
    when the decision is in force already); the run as it then stands."""

    def work(tx: WriteTx) -> NewDecision | None:
        head = tx.lock_run(run)
        if head is None:
            raise RunNotFound(f"run {run.run_id!r} not found")
        entry = _entry(head, what, asker, change, build)
        if entry is not None:
            tx.append_decision(entry)
        return entry

    entry = store.transact(work)
    doc = store.get_run(run)
    return {
        "run_id": run.run_id,
        "at_step": at_step,
        "lrs": doc["lrs"],
        "decision": None if entry is None else entry.doc,
    }


def cooldown(
    store: Store, run: RunKey, asked: AskedCooldown, asker: Asker = NOBODY
) -> dict[str, Any]:
    """Start the run's decay as ``asked`` (POST /cooldown): a start_cooldown entry, none when
    that cooldown is in force already."""
    return _append(
        store,
        run,
        asked.at_step,
        "cooldown",
        asker,
        lambda policy, params, state, at: (policy.cooldown(params, state, *asked[:3], at), None),
        lambda stamp, state, lrs, _: entries.cooldown(
            stamp, asked=asked, policy_lrs=lrs, state=state
        ),
    )


def retime(store: Store, run: RunKey, asked: AskedRetime, asker: Asker = NOBODY) -> dict[str, Any]:
    """Give the run's schedule a new horizon as ``asked`` (POST /retime): a retime entry, none
    when that retime is in force already."""
    return _append(
        store,
        run,
        asked.at_step,
        "retime",
        asker,
        lambda policy, params, state, at: (
            retimable(policy).retime(params, state, *asked, at),
            policy.horizon(params, state),  # (a policy without one was refused)
        ),
        lambda stamp, state, lrs, has: entries.retime(
            stamp, asked=asked, param=has.param, policy_lrs=lrs, state=state
        ),
    )
