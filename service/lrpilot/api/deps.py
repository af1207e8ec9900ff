"""Shared request dependencies.

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop on
every request for a one-line lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from lrpilot.domain.decisions import Decisions
from lrpilot.domain.logs import Audit
from lrpilot.settings import Settings
from lrpilot.spec import RUN_ID_PATTERN, RUN_ID_RULE
from lrpilot.store.runs import Store


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_decisions(request: Request) -> Decisions:
    decisions: Decisions = request.app.state.decisions
    return decisions


async def get_audit(request: Request) -> Audit:
    audit: Audit = request.app.state.audit
    return audit


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(get_store)]
DecisionsDep = Annotated[Decisions, Depends(get_decisions)]
AuditDep = Annotated[Audit, Depends(get_audit)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RunId = Annotated[
    str, Path(pattern=RUN_ID_PATTERN, description=RUN_ID_RULE, examples=["resnet50-a"])
]
