"""/v1/runs: create and read runs, post observations, read the decision log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from lrpilot.api.deps import RunId, StoreDep
from lrpilot.api.models import (
    MAX_STEP,
    DecisionOut,
    DecisionPage,
    LrOut,
    ObservationIn,
    RunIn,
    RunOut,
    RunPage,
)
from lrpilot.api.responses import StrictJSONResponse, page_json, raw_json
from lrpilot.policies import ACTIONS
from lrpilot.store.runs import RunSpec

router = APIRouter(prefix="/v1/runs", tags=["runs"])

Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]


@router.put(
    "/{run_id}",
    response_model=RunOut,
    responses={
        201: {"model": RunOut, "description": "created"},
        409: {"description": "another spec"},
    },
)
def put_run(run_id: RunId, body: RunIn, store: StoreDep) -> Response:
    spec = RunSpec(
        policy=body.policy.name,
        version=body.policy.version,
        params=body.policy.params,
        base_lrs=tuple(body.base_lrs),
        metric=body.metric,
        labels=body.labels,
    )
    run, created = store.put_run(run_id, spec)
    return StrictJSONResponse(run, status_code=201 if created else 200)


@router.get("", response_model=RunPage)
def list_runs(
    store: StoreDep,
    label: Annotated[
        list[str], Query(description="key:value, repeat to require several labels")
    ] = [],  # noqa: B006 - FastAPI reads the default, never mutates it
    after: Annotated[str | None, Query(description="the `next` of the previous page")] = None,
    limit: Limit = 100,
) -> Response:
    labels: dict[str, str] = {}
    for item in label:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise HTTPException(422, f"label filter {item!r} must be key:value")
        labels[key] = value
    page = store.list_runs(labels, after, limit)
    return page_json(page.items, page.next)


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunId, store: StoreDep) -> Response:
    return StrictJSONResponse(store.get_run(run_id))


@router.post(
    "/{run_id}/observations",
    response_model=DecisionOut,
    responses={404: {"description": "unknown run"}, 409: {"description": "step conflict"}},
)
def post_observation(run_id: RunId, body: ObservationIn, store: StoreDep) -> Response:
    return raw_json(store.observe(run_id, body.step, body.value))


@router.get("/{run_id}/lr", response_model=LrOut)
def get_lr(
    run_id: RunId,
    store: StoreDep,
    step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="training step; omit for the latest")
    ] = None,
) -> Response:
    return StrictJSONResponse(store.lr_at(run_id, step))


@router.get("/{run_id}/decisions", response_model=DecisionPage)
def list_decisions(
    run_id: RunId,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=MAX_STEP, description="seq to start after")] = 0,
    limit: Limit = 100,
    action: Annotated[str | None, Query(max_length=32, description="only this action")] = None,
) -> Response:
    if action is not None and action not in ACTIONS:
        raise HTTPException(
            422, f"unknown action {action!r}; actions: {', '.join(sorted(ACTIONS))}"
        )
    page = store.list_decisions(run_id, after, limit, action)
    return page_json(page.items, page.next)
