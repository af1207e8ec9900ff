"""Shared request dependencies.

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop on
every request for a one-line lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel

from lrpilot.domain.decisions import Decisions
from lrpilot.domain.logs import Audit
from lrpilot.policies.base import MAX_STEP
from lrpilot.settings import Settings
from lrpilot.spec import RUN_ID_PATTERN, RUN_ID_RULE
from lrpilot.store.runs import Store


def _held(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency: what the app holds as ``app.state.<name>`` (made where it is assembled,
    app.py)."""

    async def held(request: Request) -> Any:
        return getattr(request.app.state, name)

    held.__name__ = f"get_{name}"
    return held


StoreDep = Annotated[Store, Depends(_held("store"))]
DecisionsDep = Annotated[Decisions, Depends(_held("decisions"))]
AuditDep = Annotated[Audit, Depends(_held("audit"))]
SettingsDep = Annotated[Settings, Depends(_held("settings"))]
RunId = Annotated[
    str, Path(pattern=RUN_ID_PATTERN, description=RUN_ID_RULE, examples=["resnet50-a"])
]

# A list's page: at most `limit` items (a page also ends at MAX_PAGE_CHARS), 100 when the
# request does not say.
Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]
DEFAULT_LIMIT = 100


class SeqPage(BaseModel):
    """The query of a page of a run's list in seq order (GET /decisions, /checkpoints): the
    items after seq ``after`` (the previous page's ``next``), at most ``limit`` of them. One
    model, so that each such list takes, documents and refuses them alike."""

    after: Annotated[int, Query(ge=0, le=MAX_STEP, description="seq to start after")] = 0
    limit: Limit = DEFAULT_LIMIT


PageQuery = Annotated[SeqPage, Query()]
