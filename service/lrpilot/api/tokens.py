"""/v1/tokens: an admin manages its project's tokens (create, list, revoke) over HTTP, as
`lrpilot token` does on the database's host."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from lrpilot.api.auth import Admin
from lrpilot.api.responses import INVALID, NOT_FOUND, UNAVAILABLE, StrictJSONResponse, conflict
from lrpilot.domain.deciding import now
from lrpilot.domain.errors import Conflict, RunNotFound
from lrpilot.store.records import Token, new_secret, secret_hash, token_name
from lrpilot.store.tokens import NameTaken, Tokens

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["reader", "writer", "admin"]
    name: Annotated[str | None, Field(pattern=NAME_PATTERN)] = None
    expires_days: Annotated[int | None, Field(ge=1, le=36500, strict=True)] = None


@dataclass(frozen=True)
class NewTokenOut(Token):
    """A token just made: as listed (the store's ``Token``), and its secret, shown once."""

    token: str = field(metadata={"description": "the secret: shown once, only its hash is kept"})


class TokenList(BaseModel):
    items: list[Token]  # the store's record: what is kept of a token, never its secret
    next: None = None


def _tokens(request: Request) -> Tokens:
    return Tokens(request.app.state.store)


@router.post(
    "",
    status_code=201,
    response_model=NewTokenOut,
    responses={**conflict("a token of that name exists"), **INVALID, **UNAVAILABLE},
)
async def create_token(body: TokenIn, caller: Admin, request: Request) -> Response:
    """A new token of the caller's project; the answer holds its secret, shown once."""
    secret = new_secret()
    expires = None
    if body.expires_days is not None:
        at = datetime.now(UTC) + timedelta(days=body.expires_days)
        expires = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    name = body.name or token_name(caller.project, body.role)
    try:
        made = await run_in_threadpool(
            _tokens(request).create,
            name,
            caller.project,
            body.role,
            secret_hash(secret),
            now(),
            expires,
        )
    except NameTaken as exc:
        raise Conflict(str(exc)) from None
    return StrictJSONResponse({**made.doc(), "token": secret}, status_code=201)


@router.get("", response_model=TokenList, responses={**UNAVAILABLE})
def list_tokens(caller: Admin, request: Request) -> Response:
    """The caller's project's tokens, never their secrets (not stored)."""
    items: list[dict[str, Any]] = [t.doc() for t in _tokens(request).all(caller.project)]
    return StrictJSONResponse({"items": items, "next": None})


@router.post(
    "/{name}/revoke",
    response_model=Token,
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def revoke_token(
    name: Annotated[str, Path(pattern=NAME_PATTERN, description="the token's name or id")],
    caller: Admin,
    request: Request,
) -> Response:
    """Revoke a token of the caller's project: refused on every replica within a second."""
    revoked = _tokens(request).revoke(name, now(), caller.project)
    if revoked is None:
        raise RunNotFound(f"no token {name!r} in project {caller.project!r}")
    return StrictJSONResponse(revoked.doc())
