"""Checkpoints declared, rewinds, and a guarded run's rollbacks (issue 18, docs/guard.md).

A job declares the checkpoints it saves (``POST /v1/runs/{run_id}/checkpoints``): each is a
checkpoint entry of the chain. A guarded run (``lrpilot.guard``) decides trouble as a rollback
to the newest live one before the trouble's step; the rewind to its step follows the rollback
in the same transaction, so the run goes on from the checkpoint exactly as after a rewind,
and the trouble stays in the log as a superseded branch. The rewind is written here, once, for
both: an admin's (``lrpilot.domain.logs.Audit.rewind``) and a rollback's.
"""

from __future__ import annotations

from typing import Any

from lrpilot import entries
from lrpilot.canonical import canonical_json, parse_float, same_float
from lrpilot.domain.deciding import chain_of, load_state, now, resolved
from lrpilot.domain.errors import RunNotFound
from lrpilot.entries import NOBODY, Asker
from lrpilot.guard import Checkpoint, Finder, Guarded
from lrpilot.spec import InForce
from lrpilot.store.records import NewDecision, RunHead, RunKey, Stored, appended
from lrpilot.store.runs import Store, WriteTx

MAX_REF = 1024  # characters of a checkpoint's ref (a path, a name)
# A run's summary shows its live branch's newest checkpoints, this many, and the count of all:
# a job that saves every 100 steps for a week has thousands (the rest: GET /checkpoints' pages).
SUMMARY_CHECKPOINTS = 20


def rewound(
    tx: WriteTx,
    head: RunHead,
    to_step: int,
    asker: Asker = NOBODY,
) -> NewDecision | None:
    """Append the rewind that makes the run's state what it was right after ``to_step`` (the
    later entries are kept, marked superseded); None for a rewind to or past the last step,
    which changes nothing. A guarded run keeps its rollbacks and cut (``Guarded.carry``)."""
    key = head.key
    if head.spec.aggregate is not None:  # the ranks will report those steps again
        tx.drop_reports_after(key, to_step)
    # past the last entry: nothing to supersede (a resize may come after the last step)
    force = head.scale
    latest = max(
        head.last_step if head.last_step is not None else -1,
        force.step if force is not None and force.step is not None else -1,
    )
    if to_step >= latest:
        return None
    policy, params = resolved(head.spec)
    target = tx.live_at_or_before(key, to_step)
    if target is None:  # before the first decision: the policy's initial state
        initial = policy.init(params, tuple(head.spec.base_lrs))
        restores, state, lrs = None, initial.model_dump(), list(initial.lrs)
    else:
        restores, doc = target
        state, lrs = doc["state"], doc["lrs"]
    scale = _scale_at(tx, head, to_step)
    if isinstance(policy, Guarded):
        carried = policy.carry(policy.load_state(state), load_state(policy, head))
        state = carried.model_dump()
        by = 1.0 if scale is None else scale.factor
        lrs = list(carried.lrs) if by == 1.0 else [lr * by for lr in carried.lrs]
    superseded = tx.supersede_after(key, to_step)
    entry = entries.rewind(
        entries.Stamp(chain_of(head), to_step, now(), asker),
        restores_seq=restores,
        superseded=superseded,
        lrs=lrs,
        previous_lrs=head.lrs.value,
        state=state,
        restored_force=scale,
    ).seal()
    rewind = appended(
        head.key, entry, canonical_json(state), to_step, scale if scale is not None else _base(head)
    )
    tx.append_decision(rewind)
    return rewind


def _base(head: RunHead) -> InForce | None:
    scaling = head.spec.scaling
    return InForce.of(None if scaling is None else scaling.model_dump(), None)


def _scale_at(tx: WriteTx, head: RunHead, step: int) -> InForce | None:
    """The scale a rewind to ``step`` restores: its last live scale entry's (None: the base
    size, from the start, or no scaling rule)."""
    if head.spec.scaling is None:
        return None
    doc = tx.live_scale_at_or_before(head.key, step)
    if doc is None:
        return None
    return InForce(int(doc["resize"]["to"]), parse_float(doc["scale"]), int(doc["step"]))


# -- a rollback ---------------------------------------------------------------------------------


def finder(tx: WriteTx, run: RunKey) -> Finder:
    """The newest live checkpoint before a step, read when a guarded run is in trouble."""

    def find(before: int) -> Checkpoint | None:
        found = tx.live_checkpoint_before(run, before)
        if found is None:
            return None
        seq, step, doc = found
        return Checkpoint(seq, step, str(doc["checkpoint"]["ref"]))

    return find


def answered_rollback(tx: WriteTx, head: RunHead, step: int, value: float) -> str | None:
    """A retry of the step whose rollback is the run's last thing done (the rollback, then its
    rewind, at the head): that rollback, not a second one. One read by primary key, for a
    guarded run's observations only."""
    if head.last_seq < 2 or head.last_step is None or step <= head.last_step:
        return None
    stored = tx.entry_at_seq(head.key, head.last_seq - 1, entries.Kind.ROLLBACK)
    if stored is None:
        return None
    doc = stored.value
    if doc["step"] != step or not same_float(parse_float(doc["value"]), value):
        return None
    return stored.text


def rolled_back(tx: WriteTx, head: RunHead, decision: NewDecision, asker: Asker) -> RunHead:
    """After a rollback decision (appended, ``head`` after it): the rewind to its checkpoint's
    step, at the request of whoever posted the observation (``asker``). The head after it."""
    assert decision.doc is not None
    to_step = int(decision.doc["rollback"]["checkpoint"]["step"])
    rewind = rewound(tx, head, to_step, asker)
    assert rewind is not None  # the checkpoint is below the trouble's step
    return head.after(rewind)


# -- checkpoints ----------------------------------------------------------------------------------


def declare(
    store: Store,
    run: RunKey,
    step: int,
    ref: str,
    asker: Asker = NOBODY,
) -> tuple[dict[str, Any], bool]:
    """A checkpoint the job saved at ``step``: its entry, and whether it is new. The same
    step and ref again while that entry is live is a retry: its entry, nothing new. Another
    ref at the same step is another checkpoint (a job may save "last" and "best" there); a
    guarded run rolls back to the newest declared."""

    def work(tx: WriteTx) -> tuple[dict[str, Any], bool]:
        head = tx.lock_run(run)
        if head is None:
            raise RunNotFound(f"run {run.run_id!r} not found")
        same = tx.live_checkpoint(run, step, ref)
        if same is not None:
            return same.value, False
        at = entries.Stamp(chain_of(head), step, now(), asker)
        entry = entries.checkpoint(at, ref, lrs=head.lrs.value, state=head.state.value).seal()
        tx.append_decision(appended(head.key, entry, head.state.text, head.last_step, head.scale))
        return entry.doc, True

    return store.transact(work)


def listed(
    store: Store, run: RunKey, after: int, limit: int, max_chars: int | None = None
) -> dict[str, Any]:
    """A page of the run's checkpoints after seq ``after`` (at most ``limit``), oldest first,
    each with whether a rewind superseded it; ``next``: the seq the following page starts
    after, None on the last page."""
    _, head = store.head(run)
    rows, after_last = store.checkpoint_page(run, head.last_seq, after, limit, max_chars)
    items = []
    for body, superseded in rows:
        doc = Stored(body).value
        items.append({**_named(doc), "created_at": doc["created_at"], "superseded": superseded})
    return {"run_id": run.run_id, "items": items, "next": after_last}


def newest(store: Store, run: RunKey, last_seq: int) -> tuple[list[dict[str, Any]], int]:
    """The summary's checkpoints: the live branch's last ``SUMMARY_CHECKPOINTS`` (seq, step,
    ref), oldest first, and how many the live branch has."""
    bodies, total = store.newest_checkpoints(run, last_seq, SUMMARY_CHECKPOINTS)
    return [_named(Stored(body).value) for body in bodies], total


def _named(doc: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint entry as lists name it: its seq, its step, the job's ref for it."""
    return {"seq": doc["seq"], "step": doc["step"], "ref": doc["checkpoint"]["ref"]}
