"""Elastic jobs: a resize rescales a run's lrs by its scaling rule, as a scale entry.

A run created with ``"scaling": {"rule": "linear", "by": "world_size", "base": 8}`` says that
its base_lrs were tuned for 8 ranks (``lrpilot.spec.ScalingSpec`` holds the rule's arithmetic).
When the job reports another size (the world_size of its observations, or
``POST /v1/runs/{run_id}/resize``), a scale entry joins the chain: from its step on, every lr
the run serves is the policy's lr times the rule's factor.
"""

from __future__ import annotations

import math
from typing import Any

from lrpilot import entries
from lrpilot.domain.deciding import chain_of, load_state, now, resolved
from lrpilot.domain.errors import Conflict, Invalid, RunNotFound
from lrpilot.entries import NOBODY, Asker
from lrpilot.spec import InForce, factor, scaled
from lrpilot.store.records import NewDecision, RunHead, RunKey, appended
from lrpilot.store.runs import Store, WriteTx


def scale_entry(head: RunHead, at: entries.Stamp, size: int) -> NewDecision:
    """The entry that rescales the run's lrs for a new ``size`` from its step on: the policy's
    state stays as it is, the lrs it serves change by the scaling rule's factor."""
    spec, was = head.spec.scaling, head.scale
    assert spec is not None and was is not None
    policy, _ = resolved(head.spec)
    state = load_state(policy, head)
    by = factor(spec.model_dump(), size)
    # the lrs in force, and the base lrs a schedule may climb back to (a warmup, a restart)
    for lrs in (list(state.lrs), list(head.spec.base_lrs)):
        pairs = zip(scaled(lrs, by), lrs, strict=True)
        if any(math.isinf(new) and not math.isinf(old) for new, old in pairs):
            raise Conflict(
                f"{spec.by} {size} would scale the lrs of run {head.run_id!r} by {by!r} past "
                f"the largest float ({lrs} x {by!r}): not rescaled"
            )
    entry = entries.scale(at, size, policy_lrs=state.lrs, state=head.state.value).seal()
    return appended(head.key, entry, head.state.text, head.last_step, InForce(size, by, at.step))


def unsettled_from(head: RunHead) -> int | None:
    """The first step whose lrs a resize may still change (a run with a scaling rule: a resize
    may apply from its last decided step, or from its last resize's step, on); None without a
    scaling rule."""
    if head.scale is None:
        return None
    return max(head.last_step or 0, head.scale.step or 0)


def check_resize_step(head: RunHead, step: int, what: str) -> None:
    """A step may not go below the step the run's last resize applies from."""
    force, spec = head.scale, head.spec.scaling
    if force is not None and force.step is not None and step < force.step:
        raise Conflict(
            f"{what} {step} is below step {force.step} of run {head.run_id!r}, where its "
            f"{spec.by if spec else 'size'} {force.size} applies from: steps must not go "
            "backwards (a job resumed from an older checkpoint should rewind the run first)"
        )


def resized(
    tx: WriteTx,
    head: RunHead,
    step: int,
    by: str,
    size: int,
    heads: dict[RunKey, RunHead],
    asker: Asker = NOBODY,
) -> tuple[RunHead, NewDecision | None]:
    """The head after a scale entry for ``size`` at ``step`` and the entry, appended when the
    run scales by ``by`` and ``size`` is not the size in force (else the head, and None)."""
    force, spec = head.scale, head.spec.scaling
    if force is None or spec is None or size == force.size or spec.by != by:
        return head, None
    entry = scale_entry(head, entries.Stamp(chain_of(head), step, now(), asker), size)
    tx.append_decision(entry)
    heads[head.key] = head = head.after(entry)
    return head, entry


def resized_on_retry(
    tx: WriteTx,
    head: RunHead,
    step: int,
    world_size: int | None,
    heads: dict[RunKey, RunHead],
    asker: Asker,
) -> None:
    """A retry of the last decided step that says another world_size: the job resumed from
    the checkpoint of its last evaluation on another number of ranks (a resize may apply from
    that step). The answer stays the step's decision; the lrs from the step on are rescaled."""
    force = head.scale
    if (
        world_size is None
        or force is None
        or step != head.last_step
        or (force.step is not None and step < force.step)
    ):
        return
    resized(tx, head, step, "world_size", world_size, heads, asker)


def resize(
    store: Store,
    run: RunKey,
    step: int,
    by: str,
    size: int,
    asker: Asker,
) -> dict[str, Any]:
    """An elastic job's new world_size or global batch size from training step ``step`` on: a
    scale entry rescales the lrs by the run's scaling rule (none when ``size`` is already in
    force). ``step`` may be the last decided step (a job resumed from the checkpoint of its
    last evaluation), never below it."""

    def work(tx: WriteTx) -> NewDecision | None:
        head = tx.lock_run(run)
        if head is None:
            raise RunNotFound(f"run {run.run_id!r} not found")
        spec = head.spec.scaling
        if spec is None:
            raise Conflict(
                f"run {run.run_id!r} has no scaling rule: create the run with "
                '"scaling": {"rule": "linear", "by": "world_size", "base": N} to rescale '
                "its lrs when the job resizes"
            )
        if by != spec.by:
            raise Invalid(
                ["body", by],
                f"run {run.run_id!r} scales by {spec.by}: the resize must give {spec.by}",
                kind="scaling",
            )
        if head.last_step is not None and step < head.last_step:
            raise Conflict(
                f"step {step} is below the last decided step {head.last_step} of run "
                f"{run.run_id!r}: a resize applies from a step not yet decided (a job resumed "
                "from an older checkpoint should rewind the run first)"
            )
        check_resize_step(head, step, "step")
        return resized(tx, head, step, by, size, {}, asker)[1]

    entry = store.transact(work)
    doc = store.get_run(run)
    return {
        "run_id": run.run_id,
        "step": step,
        "resized": entry is not None,
        "lrs": doc["lrs"],
        "scale": doc["scale"],
        "decision": None if entry is None else entry.doc,
    }
