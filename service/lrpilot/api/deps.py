"""Shared request dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from lrpilot.api.models import RUN_ID_PATTERN
from lrpilot.store.runs import Store


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(get_store)]
RunId = Annotated[
    str, Path(pattern=RUN_ID_PATTERN, description="[A-Za-z0-9._-]{1,128}", examples=["resnet50-a"])
]
