"""Strict JSON responses: every body is RFC 8259 JSON, non-finite floats written as strings."""

from __future__ import annotations

import functools
import gzip
import json
from typing import Any

from fastapi.responses import JSONResponse, Response

from lrpilot.api.models import Message, ValidationErrorOut
from lrpilot.canonical import to_strict


class StrictJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(
            to_strict(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")


def raw_json(body: str | bytes, status_code: int = 200) -> Response:
    """A body that is already canonical (strict) JSON, sent as stored: no re-encoding."""
    return Response(content=body, status_code=status_code, media_type="application/json")


# A decision this large (an aggregated step's ranks, many param groups) is sent gzipped to a
# client that accepts it: the ranks of a step share one answer, compressed once (4,096 ranks of
# a step: 800 MB of answers otherwise, 4 to 7 times less gzipped).
GZIP_FROM_BYTES = 16 << 10


@functools.lru_cache(maxsize=4)  # the steps being answered now; a body may be megabytes
def _gzipped(body: bytes) -> bytes:
    # the ranks of a step hand in the same bytes object: its hash is computed once, and the
    # cache's equality check is an identity check
    return gzip.compress(body, compresslevel=1, mtime=0)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header value accepts gzip (``gzip;q=0`` refuses it)."""
    for coding in (accept_encoding or "").lower().split(","):
        name, _, params = coding.partition(";")
        if name.strip() in ("gzip", "*"):
            q = (
                params.strip().removeprefix("q=").strip()
                if params.strip().startswith("q=")
                else "1"
            )
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def decision_json(body: bytes, accept_encoding: str | None) -> Response:
    """A decision's canonical JSON, gzipped when it is large and the client accepts gzip."""
    if len(body) < GZIP_FROM_BYTES or not accepts_gzip(accept_encoding):
        return raw_json(body)
    return Response(
        content=_gzipped(body),
        media_type="application/json",
        headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
    )


# One page of a list answers its items while they fit in this many characters (at least one):
# a page of 1,000 decisions of 1,024 param groups would be ~90 MB. `next` then continues after
# the last item answered, so a client that follows `next` reads every item, as always.
MAX_PAGE_CHARS = 4 << 20


def page_json(items: list[str], next_cursor: int | str | None, cursor: str) -> Response:
    """A list page of canonical JSON ``items``; ``cursor`` is the member of an item that the
    list's ``after`` takes (the next page starts after it)."""
    used = 0
    for i, item in enumerate(items):
        used += len(item) + 1
        if i and used > MAX_PAGE_CHARS:
            items = items[:i]
            next_cursor = json.loads(items[-1])[cursor]
            break
    return raw_json('{"items":[' + ",".join(items) + '],"next":' + json.dumps(next_cursor) + "}")


# -- what the routes declare in the OpenAPI document (413 and HEAD: api/limits.py) ----------

Documented = dict[int | str, dict[str, Any]]

INVALID: Documented = {
    422: {
        "model": ValidationErrorOut,
        "description": "a parameter or the body is refused; `detail` lists every reason",
    }
}
# Every 503 says when to come back (errors.store_error_response, health.readyz).
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
UNAVAILABLE: Documented = {
    503: {
        "model": Message,
        "description": "the database is unreachable, locked or slow; retrying later is safe",
        "headers": RETRY_AFTER,
    }
}
NOT_FOUND: Documented = {404: {"model": Message, "description": "no run with that run_id"}}


def conflict(description: str) -> Documented:
    return {409: {"model": Message, "description": description}}


def on_run(conflicts: str | None = None) -> Documented:
    """What a call on a run may answer besides its own: no such run, ``conflicts`` (a 409 that
    says when), a refused parameter or body, the database unavailable."""
    return {**NOT_FOUND, **(conflict(conflicts) if conflicts else {}), **INVALID, **UNAVAILABLE}
