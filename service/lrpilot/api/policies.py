"""/v1/policies: every served policy version with its params schema and defaults."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from lrpilot.api.auth import Reader
from lrpilot.api.models import PolicyList
from lrpilot.api.responses import UNAVAILABLE, StrictJSONResponse
from lrpilot.policies import POLICIES

router = APIRouter(prefix="/v1/policies", tags=["policies"])


# 503: the caller's token is looked up (api/auth.py)
@router.get("", response_model=PolicyList, responses={**UNAVAILABLE})
def list_policies(_: Reader) -> Response:
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
    return StrictJSONResponse({"items": items})
