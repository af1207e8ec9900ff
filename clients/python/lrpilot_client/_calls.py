"""The API's requests and the reading of its answers, with no I/O.

Each function here describes one request (method, path, query, body) and how to read its
answer, as a `Call`. The sync and the async client only send a `Call` and hand the response back
to `Call.result`, so the two clients cannot drift apart in what they send or how they read it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import (
    ConflictError,
    LrpilotError,
    NotFoundError,
    ResponseError,
    ValidationError,
    detail_of,
)
from .models import (
    Decision,
    LrsAhead,
    LrsInForce,
    Page,
    Resized,
    Rewound,
    Run,
    Verified,
    encode_float,
    encode_floats,
)

T = TypeVar("T")

_ERRORS: dict[int, type[LrpilotError]] = {
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reader of its successful answer."""

    method: str
    path: str
    read: Callable[[object], T]
    params: Mapping[str, str | int] | None = None
    body: Mapping[str, Any] | None = None
    read_timeout: float | None = None  # longer than the client's: an answer that waits

    def timeout(self, default: httpx.Timeout) -> httpx.Timeout:
        """The client's timeouts, with this call's longer read timeout if it has one."""
        if self.read_timeout is None:
            return default
        read = max(default.read or 0.0, self.read_timeout)
        return httpx.Timeout(
            connect=default.connect, read=read, write=default.write, pool=default.pool
        )

    def describe(self) -> str:
        """`METHOD /path`, for error messages."""
        return f"{self.method} {self.path}"

    def result(self, response: httpx.Response) -> T:
        """Read a final (non-retried) answer: the typed result for 2xx, else the error."""
        if 200 <= response.status_code < 300:
            try:
                raw = response.json()
            except ValueError as exc:
                raise ResponseError(
                    f"{self.describe()}: the answer is not JSON: {exc}", response.status_code
                ) from None
            return self.read(raw)
        raise error_for(response)


def error_for(response: httpx.Response) -> LrpilotError:
    """The exception for a 4xx (or an unexpected) answer, carrying the service's detail."""
    cls = _ERRORS.get(response.status_code, LrpilotError)
    return cls(detail_of(response), response.status_code)


def run_path(run_id: str) -> str:
    """`/v1/runs/{run_id}` with run_id as one path segment.

    run_id is percent-encoded so that a "/" or "?" in it cannot reach another route; the
    segments "." and ".." (valid run_ids) are encoded as %2E so URL normalisation does not
    resolve them as "this directory" or "parent directory".
    """
    segment = quote(run_id, safe="")
    if segment.strip(".") == "":
        segment = "%2E" * len(segment)
    return f"/v1/runs/{segment}"


def create_run(
    run_id: str,
    policy: str,
    version: int,
    params: Mapping[str, Any] | None,
    base_lrs: Sequence[float] | None,
    metric: str | None,
    labels: Mapping[str, str] | None,
    aggregate: Mapping[str, Any] | None = None,
    scaling: Mapping[str, Any] | None = None,
) -> Call[Run]:
    """PUT the run's spec. Fields left as None are not sent, so the service's defaults apply
    and a spec written with or without them hashes the same."""
    body: dict[str, Any] = {
        "policy": {"name": policy, "version": version, "params": dict(params or {})},
    }
    if base_lrs is not None:
        body["base_lrs"] = encode_floats(base_lrs)
    if metric is not None:
        body["metric"] = metric
    if labels is not None:
        body["labels"] = dict(labels)
    if aggregate is not None:
        body["aggregate"] = dict(aggregate)
    if scaling is not None:
        body["scaling"] = dict(scaling)
    return Call("PUT", run_path(run_id), Run.from_json, body=body)


def get_run(run_id: str) -> Call[Run]:
    return Call("GET", run_path(run_id), Run.from_json)


def default_identity() -> dict[str, Any]:
    """Who this process is, as the service stores it with each decision it causes: the host,
    the process id, and the rank when a launcher set RANK (torchrun, Accelerate, Lightning)."""
    identity: dict[str, Any] = {
        "host": socket.gethostname()[:255] or "unknown",
        "process": os.getpid(),
    }
    rank = os.environ.get("RANK", "")
    if rank.isdigit():
        identity["rank"] = int(rank)
    return identity


def observe(
    run_id: str,
    step: int,
    value: float,
    rank: int | None,
    world_size: int | None,
    identity: Mapping[str, Any] | None = None,
    weight: float | None = None,
) -> Call[Decision]:
    """POST one observation. A non-finite value goes as a string so the body is strict JSON."""
    body: dict[str, Any] = {"step": step, "value": encode_float(value)}
    if rank is not None:
        body["rank"] = rank
    if world_size is not None:
        body["world_size"] = world_size
    if weight is not None:
        body["weight"] = weight
    if identity:
        body["client"] = dict(identity)
    return Call("POST", f"{run_path(run_id)}/observations", Decision.from_json, body=body)


def rewind(run_id: str, to_step: int, identity: Mapping[str, Any] | None) -> Call[Rewound]:
    body: dict[str, Any] = {"to_step": to_step}
    if identity:
        body["client"] = dict(identity)
    return Call("POST", f"{run_path(run_id)}/rewind", Rewound.from_json, body=body)


def resize(
    run_id: str,
    step: int,
    world_size: int | None,
    batch_size: int | None,
    identity: Mapping[str, Any] | None,
) -> Call[Resized]:
    body: dict[str, Any] = {"step": step}
    if world_size is not None:
        body["world_size"] = world_size
    if batch_size is not None:
        body["batch_size"] = batch_size
    if identity:
        body["client"] = dict(identity)
    return Call("POST", f"{run_path(run_id)}/resize", Resized.from_json, body=body)


def verify(run_id: str, head: str | None) -> Call[Verified]:
    body = {"head": head} if head is not None else {}
    return Call("POST", f"{run_path(run_id)}/verify", Verified.from_json, body=body)


def lrs_in_force(run_id: str, step: int | None) -> Call[LrsInForce]:
    params = None if step is None else {"step": step}
    return Call("GET", f"{run_path(run_id)}/lr", LrsInForce.from_json, params=params)


def lrs_ahead(run_id: str, first: int, count: int) -> Call[LrsAhead]:
    params = {"from": first, "count": count}
    return Call("GET", f"{run_path(run_id)}/lrs", LrsAhead.from_json, params=params)


def decisions(run_id: str, after: int, limit: int, action: str | None) -> Call[Page[Decision]]:
    params: dict[str, str | int] = {"after": after, "limit": limit}
    if action is not None:
        params["action"] = action
    return Call(
        "GET",
        f"{run_path(run_id)}/decisions",
        Page[Decision].parser(Decision.from_json),
        params=params,
    )


def first_lr(lrs: Sequence[float]) -> float:
    """The first param group's rate; a run always has at least one group."""
    if not lrs:
        raise ResponseError("the service answered an empty list of lrs")
    return lrs[0]
