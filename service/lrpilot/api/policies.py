"""/v1/policies: every served policy version with its params schema and defaults."""

from __future__ import annotations

import functools

from fastapi import APIRouter
from fastapi.responses import Response

from lrpilot.api.auth import Reader
from lrpilot.api.models import PolicyList
from lrpilot.api.responses import UNAVAILABLE, StrictJSONResponse, raw_json
from lrpilot.policies import POLICIES

router = APIRouter(prefix="/v1/policies", tags=["policies"])


# 503: the caller's token is looked up (api/auth.py)
@router.get("", response_model=PolicyList, responses={**UNAVAILABLE})
def list_policies(_: Reader) -> Response:
    return raw_json(_listed())


@functools.cache
def _listed() -> bytes:
    """The served versions never change while the process runs: their schemas (pydantic's
    generation, every version's, a composite's nested ones) are made once, not per request."""
    items = [
        {
            "name": p.name,
            "version": p.version,
            "params_schema": p.params_schema(),
            "defaults": p.defaults(),
            "description": p.description,
            "actions": list(p.actions),
        }
        for _, p in sorted(POLICIES.items())
    ]
    return bytes(StrictJSONResponse({"items": items}).body)
