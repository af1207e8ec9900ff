"""/v1/runs/{run_id}/checkpoints: the checkpoints a job saved, declared in the run's log."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from lrpilot.api.auth import Reader, Writer
from lrpilot.api.deps import PageQuery, RunId, StoreDep
from lrpilot.api.models import CheckpointIn, CheckpointList, CheckpointOut
from lrpilot.api.responses import MAX_PAGE_CHARS, StrictJSONResponse, on_run
from lrpilot.domain import guarding

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post(
    "/{run_id}/checkpoints",
    response_model=CheckpointOut,
    status_code=201,
    responses={
        200: {"model": CheckpointOut, "description": "declared already (a retry)"},
        **on_run(),
    },
)
def declare_checkpoint(
    run_id: RunId, body: CheckpointIn, store: StoreDep, caller: Writer
) -> Response:
    """The job saved a checkpoint at `step` (`ref`: its own name or path for it): a checkpoint
    entry joins the run's log. A guarded run rolls back to the newest one before a step in
    trouble (docs/guard.md). The same step and ref again: 200 and the entry declared before."""
    run, asker = caller.run(run_id), caller.asker(body.client)
    doc, created = guarding.declare(store, run, body.step, body.ref, asker)
    answer = {"run_id": run_id, "declared": created, "decision": doc}
    return StrictJSONResponse(answer, status_code=201 if created else 200)


@router.get(
    "/{run_id}/checkpoints",
    response_model=CheckpointList,
    responses=on_run(),
)
def list_checkpoints(run_id: RunId, store: StoreDep, caller: Reader, page: PageQuery) -> Response:
    """The run's declared checkpoints, oldest first, a page at a time (`next`: the `after` of
    the following page, null on the last); `superseded`: a rewind or a rollback went below its
    step (it is on a branch the run left)."""
    listed = guarding.listed(store, caller.run(run_id), page.after, page.limit, MAX_PAGE_CHARS)
    return StrictJSONResponse(listed)
