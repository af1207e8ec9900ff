"""Audit and replay routes: export, import, verify, rewind, summary."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from lrpilot.api.auth import Admin, Reader
from lrpilot.api.deps import AuditDep, RunId
from lrpilot.api.models import (
    RewindIn,
    RewindOut,
    RunOut,
    SummaryOut,
    VerifyIn,
    VerifyOut,
)
from lrpilot.api.responses import (
    INVALID,
    UNAVAILABLE,
    StrictJSONResponse,
    conflict,
    on_run,
)
from lrpilot.audit.bundle import Mismatch
from lrpilot.domain.logs import BundleRefused

router = APIRouter(prefix="/v1/runs", tags=["audit"])

NDJSON = "application/x-ndjson"


@router.get(
    "/{run_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {NDJSON: {"schema": {"type": "string"}}},
            "description": "the run as NDJSON: a header line, one line a decision (both "
            "branches of a rewound run, in seq order), a trailer with the count, the head "
            "hash and, when the service has a signing key, the head's signature",
        },
        **on_run(),
    },
)
def export_run(run_id: RunId, audit: AuditDep, caller: Reader) -> StreamingResponse:
    lines = audit.export(caller.run(run_id))  # a 404 now, before the first byte is sent
    return StreamingResponse(
        (line + "\n" for line in lines),
        media_type=NDJSON,
        headers={"Content-Disposition": f'attachment; filename="{run_id}.ndjson"'},
    )


@router.post(
    "/import",
    response_model=RunOut,
    responses={
        201: {"model": RunOut, "description": "imported: every decision checked and replayed"},
        **conflict("a run with that run_id exists with another log"),
        **INVALID,
        **UNAVAILABLE,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {NDJSON: {"schema": {"type": "string"}}},
            "description": "a bundle, as GET /v1/runs/{run_id}/export writes it",
        }
    },
)
async def import_run(request: Request, audit: AuditDep, caller: Admin) -> Response:
    with audit.spool() as path:
        with path.open("wb") as out:  # spooled to disk: a bundle may be far larger than memory
            async for chunk in request.stream():
                out.write(chunk)
        try:
            run, created = await run_in_threadpool(audit.import_bundle, path, caller.project)
        except BundleRefused as exc:
            return _refused(exc.mismatch.line, str(exc))
        except Mismatch as exc:
            return _refused(exc.line, f"the bundle was refused, nothing of it was stored: {exc}")
    return StrictJSONResponse(run, status_code=201 if created else 200)


def _refused(line: int | None, message: str) -> Response:
    loc: list[str | int] = ["body"] + ([line] if line else [])
    item: dict[str, Any] = {"loc": loc, "msg": message, "type": "bundle_refused"}
    return StrictJSONResponse({"detail": [item]}, status_code=422)


@router.post(
    "/{run_id}/verify",
    response_model=VerifyOut,
    responses=on_run(),
)
def verify_run(
    run_id: RunId,
    audit: AuditDep,
    caller: Reader,
    body: Annotated[VerifyIn | None, Body()] = None,
) -> Response:
    report = audit.verify(caller.run(run_id), body.head if body else None)
    signer = audit.signer
    return StrictJSONResponse({**report.as_dict(), "signed": signer is not None, "key_id": signer})


@router.post(
    "/{run_id}/rewind",
    response_model=RewindOut,
    responses=on_run(),
)
def rewind_run(run_id: RunId, body: RewindIn, audit: AuditDep, caller: Admin) -> Response:
    run = caller.run(run_id)
    return StrictJSONResponse(audit.rewind(run, body.to_step, caller.asker(body.client)))


@router.get(
    "/{run_id}/summary",
    response_model=SummaryOut,
    responses=on_run(),
)
def run_summary(run_id: RunId, audit: AuditDep, caller: Reader) -> Response:
    return StrictJSONResponse(audit.summary(caller.run(run_id)))
