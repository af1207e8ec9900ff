"""/v1/runs: create and read runs, post observations, read the decision log."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from lrpilot.api.auth import Reader, Writer
from lrpilot.api.deps import DEFAULT_LIMIT, DecisionsDep, Limit, RunId, SeqPage, StoreDep
from lrpilot.api.models import (
    MAX_LABEL_FILTERS,
    MAX_LRS_COUNT,
    MAX_PLOT_EVENTS,
    MAX_PLOT_POINTS,
    MAX_WAIT_S,
    POLICY_FILTER,
    AckIn,
    AckOut,
    ActionFilter,
    CooldownIn,
    CooldownOut,
    DecisionOut,
    DecisionPage,
    LabelFilter,
    LrOut,
    LrsOut,
    ObservationIn,
    PlotOut,
    ResizeIn,
    ResizeOut,
    RetimeIn,
    RetimeOut,
    RunIn,
    RunOut,
    RunPage,
)
from lrpilot.api.responses import (
    INVALID,
    MAX_PAGE_CHARS,
    UNAVAILABLE,
    StrictJSONResponse,
    conflict,
    decision_json,
    on_run,
    page_json,
)
from lrpilot.domain import operating
from lrpilot.domain.errors import Invalid
from lrpilot.entries import AskedCooldown, AskedRetime
from lrpilot.policies.base import MAX_STEP
from lrpilot.spec import RUN_ID_PATTERN
from lrpilot.store.runs import DecisionFilter

router = APIRouter(prefix="/v1/runs", tags=["runs"])

FromStep = Annotated[
    int | None, Query(ge=0, le=MAX_STEP, description="steps at or above this only (omitted: all)")
]
ToStep = Annotated[
    int | None, Query(ge=0, le=MAX_STEP, description="steps at or below this only (omitted: all)")
]


# First: the hot route, so that routing tries it first.
@router.post(
    "/{run_id}/observations",
    response_model=DecisionOut,
    responses=on_run(
        "the step was already decided with another value, or is below the last decided "
        "step; aggregated mode: a rank reported another value or world_size for the step, "
        'or (on_timeout "refuse") ranks did not report within the timeout: the detail '
        "names them and the step stays undecided until every rank has reported"
    ),
)
async def post_observation(
    run_id: RunId, body: ObservationIn, request: Request, caller: Writer
) -> Response:
    # async: the request waits on the group commit, not on a worker thread of its own
    posted = body.posted(caller.run(run_id), caller.asker(body.client))
    decision = await request.app.state.decisions.observe(posted, body.applied_values())
    return decision_json(decision, request.headers.get("accept-encoding"))


@router.put(
    "/{run_id}",
    response_model=RunOut,
    responses={
        201: {"model": RunOut, "description": "created"},
        **conflict("a run with that run_id exists with another spec"),
        **INVALID,
        **UNAVAILABLE,
    },
)
def put_run(run_id: RunId, body: RunIn, decisions: DecisionsDep, caller: Writer) -> Response:
    run, created = decisions.create_run(run_id, body, caller.project)
    return StrictJSONResponse(run, status_code=201 if created else 200)


@router.get("", response_model=RunPage, responses={**INVALID, **UNAVAILABLE})
def list_runs(
    store: StoreDep,
    caller: Reader,
    label: Annotated[
        list[LabelFilter],
        Query(
            max_length=MAX_LABEL_FILTERS,
            description=f"key:value, repeat to require several labels (at most "
            f"{MAX_LABEL_FILTERS})",
        ),
    ] = [],  # noqa: B006 - FastAPI reads the default, never mutates it
    after: Annotated[
        str | None, Query(pattern=RUN_ID_PATTERN, description="the `next` of the previous page")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    policy: Annotated[
        str | None,
        Query(
            pattern=POLICY_FILTER,
            description="only this policy family (`plateau`) or version (`plateau@2`)",
        ),
    ] = None,
    state: Annotated[
        Literal["active", "stopped"] | None,
        Query(description="stopped: the runs whose last entry is a `stop`; active: the others"),
    ] = None,
    sort: Annotated[
        Literal["run_id", "activity"],
        Query(description="run_id (the default), or activity: the last entry's time, newest first"),
    ] = "run_id",
) -> Response:
    """The token's project's runs (a token sees one project), a page at a time."""
    labels = {k: v for k, _, v in (item.partition(":") for item in label)}  # checked
    stopped = None if state is None else state == "stopped"
    page = store.list_runs(
        labels, after, limit, caller.project, policy, stopped, by_activity=sort == "activity"
    )
    return page_json(page.items, page.next, "run_id")


@router.get("/{run_id}", response_model=RunOut, responses=on_run())
def get_run(run_id: RunId, store: StoreDep, caller: Reader) -> Response:
    return StrictJSONResponse(store.get_run(caller.run(run_id)))


@router.get("/{run_id}/lr", response_model=LrOut, responses=on_run())
async def get_lr(
    run_id: RunId,
    decisions: DecisionsDep,
    caller: Reader,
    step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="training step; omit for the latest")
    ] = None,
    wait: Annotated[
        float,
        Query(
            ge=0.0,
            le=MAX_WAIT_S,
            description="leader mode: wait up to this many seconds until the run is decided "
            "through `step` (one rank posts, the others read); `certain` says whether it was",
        ),
    ] = 0.0,
) -> Response:
    # async: a waiting reader holds no worker thread (the reads themselves run on threads)
    run = caller.run(run_id)
    if step is None or wait == 0:
        return StrictJSONResponse(await asyncio.to_thread(decisions.lr_at, run, step))
    return StrictJSONResponse(await decisions.lr_when_decided(run, step, wait))


@router.get("/{run_id}/lrs", response_model=LrsOut, responses=on_run())
def get_lrs(
    run_id: RunId,
    decisions: DecisionsDep,
    caller: Reader,
    first: Annotated[
        int, Query(alias="from", ge=0, le=MAX_STEP, description="the first training step")
    ],
    count: Annotated[
        int, Query(ge=1, le=MAX_LRS_COUNT, description=f"steps, at most {MAX_LRS_COUNT}")
    ] = 1000,
    every: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_STEP,
            description="the stride between two of the steps answered (a run clocked in tokens "
            "or samples: the tokens or samples of one optimizer step, or a plot's resolution); "
            f"the answer holds `count` steps whatever the stride, at most {MAX_LRS_COUNT}",
        ),
    ] = 1,
) -> Response:
    if first + (count - 1) * every > MAX_STEP:
        count = (MAX_STEP - first) // every + 1
    return StrictJSONResponse(decisions.lrs_range(caller.run(run_id), first, count, every))


@router.get("/{run_id}/plot", response_model=PlotOut, responses=on_run())
def get_plot(
    run_id: RunId,
    store: StoreDep,
    caller: Reader,
    points: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_PLOT_POINTS,
            description="buckets of steps, at most (a screen's width in pixels, say)",
        ),
    ] = 1000,
    from_step: FromStep = None,
    to_step: ToStep = None,
) -> Response:
    """The run's lr (each param group) and metric at a screen's resolution: per bucket of
    steps their min and max, over the live branch and each superseded branch, and every entry
    that changed something whole (the markers). Its size depends on `points`, not on the
    run's length."""
    if from_step is not None and to_step is not None and to_step < from_step:
        raise Invalid(
            ["query", "to_step"], f"to_step {to_step} is below from_step {from_step}", "range"
        )
    plot = store.plot(caller.run(run_id), points, from_step, to_step, MAX_PLOT_EVENTS)
    return StrictJSONResponse(plot)


class DecisionQuery(SeqPage):
    """A page of the decision log, and its filters."""

    action: Annotated[ActionFilter | None, Query(description="only this action")] = None
    from_step: FromStep = None
    to_step: ToStep = None
    superseded: Annotated[
        bool | None,
        Query(
            description="false: the live branch only; true: only what rewinds superseded; "
            "omitted: both, in seq order"
        ),
    ] = None


@router.get(
    "/{run_id}/decisions",
    response_model=DecisionPage,
    responses=on_run(),
)
def list_decisions(
    run_id: RunId, store: StoreDep, caller: Reader, query: Annotated[DecisionQuery, Query()]
) -> Response:
    kept = DecisionFilter(query.action, query.from_step, query.to_step, query.superseded)
    page = store.list_decisions(caller.run(run_id), query.after, query.limit, kept, MAX_PAGE_CHARS)
    return page_json(page.items, page.next, "seq")


@router.post(
    "/{run_id}/resize",
    response_model=ResizeOut,
    responses=on_run(
        "the run has no scaling rule, or the step is below its last decided step or "
        "below its last resize"
    ),
)
def resize_run(run_id: RunId, body: ResizeIn, decisions: DecisionsDep, caller: Writer) -> Response:
    """An elastic job's new world_size or global batch size: the run's scaling rule rescales
    its lrs from `step` on, as a scale entry in the log."""
    by, size = body.measure()
    run = caller.run(run_id)
    return StrictJSONResponse(decisions.resize(run, body.step, by, size, caller.asker(body.client)))


@router.post(
    "/{run_id}/applied",
    response_model=AckOut,
    responses=on_run("the step is not decided yet: its lrs may still change"),
)
def acknowledge(run_id: RunId, body: AckIn, decisions: DecisionsDep, caller: Writer) -> Response:
    """A rank's acknowledgement of the lrs it applied at `step` (leader mode: the ranks that
    read the lrs; in aggregated mode a rank sends it with its next observation, `applied`):
    checked against the run's lrs at that step, kept, and the run's disagreeing ranks
    answered (docs/agreement.md)."""
    run = caller.run(run_id)
    ack, flagged = decisions.acknowledge(
        run, body.rank, body.world_size, body.step, body.seq, body.lrs_hash
    )
    return StrictJSONResponse(
        {
            "run_id": run_id,
            "rank": ack.rank,
            "step": ack.step,
            "agreed": ack.agrees,
            "expected": ack.expected,
            "disagreements": flagged,
        }
    )


@router.post(
    "/{run_id}/cooldown",
    response_model=CooldownOut,
    responses=on_run(
        "the run's policy has no cooldown (the detail names it), at_step is already "
        "decided or in the warmup, or the run has no stable phase left there"
    ),
)
def cooldown_run(run_id: RunId, body: CooldownIn, store: StoreDep, caller: Writer) -> Response:
    """A cooldown on demand: the run's decay starts at `at_step`, `steps` long, as a cooldown
    entry in the log with who asked (the token's name) and why (`reason`)."""
    run, asker = caller.run(run_id), caller.asker(body.client)
    # (a worker thread; the decay starts at a step not yet decided: no waiter is owed it)
    asked = AskedCooldown(body.at_step, body.steps, body.shape, body.reason)
    done = operating.cooldown(store, run, asked, asker)
    return StrictJSONResponse(done)


@router.post(
    "/{run_id}/retime",
    response_model=RetimeOut,
    responses=on_run(
        "the run's policy has no horizon (the detail names it), at_step is already "
        "decided, the schedule has ended there, or keep_lr comes before its peak"
    ),
)
def retime_run(run_id: RunId, body: RetimeIn, store: StoreDep, caller: Writer) -> Response:
    """A new horizon for a running schedule, without a jump in lr: from `at_step` on the
    schedule ends at `horizon`, as a retime entry in the log with who asked."""
    run, asker = caller.run(run_id), caller.asker(body.client)
    done = operating.retime(store, run, AskedRetime(body.at_step, body.horizon, body.mode), asker)
    return StrictJSONResponse(done)
