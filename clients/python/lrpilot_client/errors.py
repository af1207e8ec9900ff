"""Exceptions raised by the lrpilot clients.

One class per answer a caller may want to handle differently: a run that does not exist, a spec
or an observation that contradicts what the service already holds, a request the service
rejected, and a service that could not be reached at all. Every error keeps the service's own
`detail`, because the service's message is the precise one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .models import PendingObservation

__all__ = [
    "AuthenticationError",
    "CheckpointMismatch",
    "ConflictError",
    "LrpilotError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResponseError",
    "RollbackRequested",
    "ServiceUnavailableError",
    "ValidationError",
]


def describe_detail(detail: Any) -> str:
    """Render a `detail` as one line.

    FastAPI's validation errors are a list of `{"loc", "msg", ...}` objects; showing each as
    `body.step: msg` keeps the message short and still says which field was wrong.
    """
    if detail is None:
        return ""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts: list[str] = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class LrpilotError(Exception):
    """Base of every error the client raises, so a training loop can catch them all at once.

    `detail` is the service's `detail` (a string, or a list for validation errors) or, when the
    service gave none, the client's own description. `status_code` is the HTTP status, or None
    when no answer was received. `observation` is set when the error is the service's answer
    to an observation the client had buffered during an outage and sent later (the job's own
    call then was another one): which run, step and value it was.
    """

    observation: PendingObservation | None = None

    def __init__(
        self, detail: Any, status_code: int | None = None, *, message: str | None = None
    ) -> None:
        self.detail: Any = detail
        self.status_code: int | None = status_code
        if message is None:
            text = describe_detail(detail)
            message = f"{status_code}: {text}" if status_code is not None else text
        super().__init__(message)


class NotFoundError(LrpilotError):
    """404: the run (or the route) does not exist."""


class AuthenticationError(LrpilotError):
    """401: no token, or one the service does not accept (unknown, expired, revoked). Give
    the client `token=` or set LRPILOT_TOKEN; never retried (another try cannot help)."""


class PermissionDeniedError(LrpilotError):
    """403: the token is valid but its role does not allow this (the detail names the role
    needed); never retried."""


class ConflictError(LrpilotError):
    """409: the request contradicts what the service holds.

    A run created again with a different spec, or an observation for an already decided step
    with a different value. Retrying cannot help, so this is never retried.
    """


class ValidationError(LrpilotError):
    """422: the service rejected the request's content (bad params, bad run_id, ...)."""


class ServiceUnavailableError(LrpilotError):
    """The service could not be reached, or kept answering 5xx, for all the retries.

    `attempts` is how many requests were made (0 when the client did not try because the
    service is known down and its next try is not due); `detail` describes the last failure;
    `retry_after` is the seconds the service asked to wait (its `Retry-After`), if it said;
    `unanswered_for` is how long its last attempt waited for an answer that never came (a read
    timeout, a reset after a while; 0 when it got an answer or failed at once).
    """

    def __init__(
        self,
        detail: Any,
        status_code: int | None = None,
        *,
        attempts: int = 0,
        message: str | None = None,
        retry_after: float | None = None,
        unanswered_for: float = 0.0,
    ) -> None:
        super().__init__(detail, status_code, message=message)
        self.attempts = attempts
        self.retry_after = retry_after
        self.unanswered_for = unanswered_for


class ResponseError(LrpilotError):
    """The service answered with a success status but a body the client cannot read.

    This means the client and the service disagree on the contract (wrong version, or a proxy
    in between answering for the service); it is raised rather than guessed around. A client in
    "buffer" mode does not raise it from `observe` or the reads that have a stand-in: there it
    counts as the service being away (the last known rates are kept, the observation buffered).
    """


class CheckpointMismatch(LrpilotError, ValueError):
    """A checkpoint that does not belong where it is being loaded (raised by the torch
    integration's `load_state_dict`, before anything trains on it; docs/client.md).

    `what` says which binding failed: "run" (the checkpoint is of another run), "head" (the
    decision it was saved under is not in this run's chain, or only on a branch since rewound),
    or "lrs" (the lrs restored into the optimizer are not the ones the run decided for the
    checkpoint's step). A `ValueError` too, as a foreign checkpoint always was.
    """

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(detail, message=f"checkpoint mismatch ({what}): {detail}")
        self.what = what


def is_lrpilots(response: httpx.Response) -> bool:
    """Whether an error answer is the service's own: it always writes `{"detail": ...}` JSON,
    which a proxy's or a load balancer's error page is not."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "detail" in body


def detail_of(response: httpx.Response) -> Any:
    """The service's `detail`, or the body's text when the answer is not the usual JSON error
    (a proxy's HTML page, an empty 502, ...)."""
    try:
        body = response.json()
    except ValueError:
        return response.text or None
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return response.text or None


class RollbackRequested(Exception):
    """A guarded run decided `rollback`: restore the checkpoint `ref` (saved at training
    `step`) and train on from there, with the cut rates the run now serves. The run is rewound
    to `step` already; `decision` is the rollback, its reason naming the trigger and values.
    Raised by `LrpilotScheduler.observe` when it was given no `restore` function."""

    def __init__(self, step: int, ref: str, decision: Any) -> None:
        super().__init__(
            f"roll back to checkpoint {ref!r} (step {step}): {getattr(decision, 'reason', '')}"
        )
        self.step, self.ref, self.decision = step, ref, decision
