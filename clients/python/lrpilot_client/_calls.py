"""The API's requests and the reading of its answers, with no I/O: one function an operation.

Each public function here describes one request (method, path, query, body) and how to read its
answer, as a `Call`; its signature and docstring are those of the client method of the same
name (see `_base.sending`). The sync and the async client only send a `Call` and hand the
response back to `Call.result`, so the two clients cannot drift apart in what they send, how
they read it, or what they document.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import (
    AuthenticationError,
    ConflictError,
    LrpilotError,
    NotFoundError,
    PermissionDeniedError,
    ResponseError,
    ValidationError,
    detail_of,
)
from .models import (
    Acknowledged,
    Applied,
    CheckpointDeclared,
    CheckpointInfo,
    Checkpoints,
    Cooled,
    Decision,
    Health,
    Imported,
    LrAt,
    LrsRange,
    NewToken,
    Page,
    PendingObservation,
    Plot,
    PolicyInfo,
    Resized,
    Retimed,
    Rewound,
    Run,
    RunPage,
    Simulated,
    Summary,
    TokenInfo,
    Verified,
    encode_float,
    encode_floats,
)

if TYPE_CHECKING:
    from ._outbox import Resilience

T = TypeVar("T")

NDJSON = "application/x-ndjson"
UPLOAD_CHUNK = 1 << 20  # a bundle is sent a MiB at a time: it may be far larger than memory
MAX_LRS_COUNT = 10_000  # steps one GET /lrs answers at the most

_ERRORS: dict[int, type[LrpilotError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reader of its successful answer.

    `read` reads the JSON of a 2xx answer; `read_answer`, when given, reads the answer itself
    instead (its status, or its body as a stream when `stream`). The sending client also looks
    at: `offline`, the stand-in answer while the service is away ("buffer" mode; None: the call
    raises); `pending`, an observation (sent with the client's identity, buffered while the
    service is away); `ordered`, (run_id, what) for a call that must come after the run's
    buffered observations; `identified`, the body carries the client's identity; `upload`, a
    file sent as the body.
    """

    method: str
    path: str
    read: Callable[[object], T]
    params: Mapping[str, str | int | float | bool | Sequence[str]] | None = None
    body: Mapping[str, Any] | None = None
    read_timeout: float | None = None  # longer than the client's: an answer that waits
    read_answer: Callable[[httpx.Response], T] | None = None
    stream: bool = False
    upload: Path | None = None
    offline: Callable[[Resilience], T] | None = None
    pending: PendingObservation | None = None
    ordered: tuple[str, str] | None = None
    identified: bool = False

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
            if self.read_answer is not None:
                return self.read_answer(response)
            return self.read(json_of(response, self.describe()))
        raise error_for(response)

    def headers(self) -> dict[str, str] | None:
        return {"content-type": NDJSON} if self.upload is not None else None


@dataclass(frozen=True)
class Pages(Generic[T]):
    """A list read page by page: `page(cursor)` is the call for the page after `cursor`
    (`start` first), `follow(page, cursor)` the next cursor, None after the last page."""

    start: Any
    page: Callable[[Any], Call[Any]]
    follow: Callable[[Any, Any], Any]


def next_cursor(page: Page[Any] | Checkpoints, after: int) -> int | None:
    """The `after` for the page following `page`, None when `page` was the last.

    A cursor that does not move forward would make the iteration loop forever, so it is
    treated as a broken answer rather than followed.
    """
    if page.next is None:
        return None
    if page.next <= after:
        raise ResponseError(f"pagination did not advance: after={after}, next={page.next}")
    return page.next


def next_run_cursor(page: RunPage, after: str | None) -> str | None:
    """`next_cursor` for runs, whose cursor is a run_id (pages come in run_id order)."""
    if page.next is None:
        return None
    if after is not None and page.next <= after:
        raise ResponseError(f"pagination did not advance: after={after!r}, next={page.next!r}")
    return page.next


def json_of(response: httpx.Response, what: str) -> object:
    """The JSON of a 2xx answer; `ResponseError` when it is not JSON."""
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseError(
            f"{what}: the answer is not JSON: {exc}", response.status_code
        ) from None


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


def file_chunks(path: Path) -> Callable[[], Any]:
    """A fresh reader of `path` for each attempt: an iterator of its chunks."""

    def chunks() -> Any:
        with path.open("rb") as f:
            while block := f.read(UPLOAD_CHUNK):
                yield block

    return chunks


def _unset_none(**fields: Any) -> dict[str, Any]:
    """The fields given (not None): what is left out takes the service's default, so that a
    spec written with or without a default hashes the same."""
    return {k: v for k, v in fields.items() if v is not None}


def _logged(
    run_id: str, action: str, read: Callable[[object], T], body: Mapping[str, Any], what: str = ""
) -> Call[T]:
    """A POST to the run's `action` that adds an entry to its log as this client's: the body
    carries the client's identity, and the call may not overtake the run's buffered
    observations (`what` names it in that refusal; "": `action`)."""
    return Call(
        "POST",
        f"{run_path(run_id)}/{action}",
        read,
        body=body,
        ordered=(run_id, what or action),
        identified=True,
    )


# --- runs ----------------------------------------------------------------------------------------


def create_run(
    run_id: str,
    policy: str = "plateau",
    version: int = 1,
    params: Mapping[str, Any] | None = None,
    base_lrs: Sequence[float] | None = None,
    metric: str | None = None,
    labels: Mapping[str, str] | None = None,
    aggregate: Mapping[str, Any] | None = None,
    scaling: Mapping[str, Any] | None = None,
    clock: str | None = None,
    guard: Mapping[str, Any] | None = None,
) -> Call[Run]:
    """Create the run, or get it back if it already exists with the same spec.

    Calling this at every (re)start of a job is the intended use: the first call creates
    the run, later ones return it. A different spec for an existing run_id raises
    `ConflictError` rather than silently changing a schedule mid-run. Arguments left as None
    are not sent, so the service's defaults apply. `aggregate` (`{"timeout_s": 60,
    "on_timeout": "decide" | "refuse"}`) makes every rank post its own metric (`observe`
    with `rank`, `world_size` and optionally `weight`): one decision a step, from their
    weighted mean, the same for every rank. `scaling` (`{"rule": "linear" | "sqrt",
    "by": "world_size" | "batch_size", "base": N}`, base_lrs being tuned for size N)
    rescales the lrs whenever the job reports another size: the `world_size` of its
    observations, or `resize`. `clock` ("steps", the default, "samples" or "tokens") is what
    the run's steps count: in a tokens run, every `step` (observations, lr reads, rewinds,
    resizes) is the number of tokens consumed so far, and the policy's horizons are in tokens.
    `guard` (`{"on": ["nan", "spike"], "spike": {"rule": "ratio",
    "ratio": 2.0}, "lr_factor": 0.5, "max_rollbacks": 3}`) turns a non-finite metric or a
    spike into a `rollback` to the newest checkpoint declared before it (`declare_checkpoint`),
    with the lrs cut (the service's docs/guard.md).
    """
    body: dict[str, Any] = {
        "policy": {"name": policy, "version": version, "params": dict(params or {})},
    }
    body |= _unset_none(
        base_lrs=None if base_lrs is None else encode_floats(base_lrs),
        metric=metric,
        labels=None if labels is None else dict(labels),
        aggregate=None if aggregate is None else dict(aggregate),
        scaling=None if scaling is None else dict(scaling),
        clock=clock,
        guard=None if guard is None else dict(guard),
    )
    return Call("PUT", run_path(run_id), Run.from_json, body=body)


def get_run(run_id: str) -> Call[Run]:
    """The run's spec and where its schedule stands now."""
    return Call("GET", run_path(run_id), Run.from_json)


def list_runs(
    labels: Mapping[str, str] | None = None,
    after: str | None = None,
    limit: int = 100,
    *,
    policy: str | None = None,
    state: str | None = None,
    sort: str | None = None,
) -> Call[RunPage]:
    """One page of the runs (at most `limit`, up to 1000), starting after run_id `after` (the
    previous page's `next`); with `labels`, only the runs carrying every one of them (at most
    16); `policy` a family ("plateau") or a version ("plateau@2"); `state` "active" or
    "stopped" (the last entry is a stop); `sort` "run_id" (the default) or "activity" (the
    last entry's time, newest first)."""
    params: dict[str, Any] = {"limit": limit}
    if labels:
        params["label"] = [f"{k}:{v}" for k, v in labels.items()]
    if after is not None:
        params["after"] = after
    for name, value in (("policy", policy), ("state", state), ("sort", sort)):
        if value is not None:
            params[name] = value
    return Call("GET", "/v1/runs", RunPage.from_json, params=params)


def iter_runs(
    labels: Mapping[str, str] | None = None,
    *,
    limit: int = 100,
    policy: str | None = None,
    state: str | None = None,
) -> Pages[Run]:
    """Every run (with `labels`: those carrying all of them; `policy`, `state` as
    `list_runs`), in run_id order, fetching `limit` per request as needed."""
    return Pages(
        None,
        lambda after: list_runs(labels, after, limit, policy=policy, state=state),
        next_run_cursor,
    )


def plot(
    run_id: str,
    points: int = 1000,
    from_step: int | None = None,
    to_step: int | None = None,
) -> Call[Plot]:
    """The run at a screen's resolution: per bucket of steps (at most `points`, up to 10,000)
    the min and max of each group's lr and of the metric, live and superseded branches apart,
    and every entry that changed something (`from_step`..`to_step`; omitted: the whole log)."""
    params: dict[str, Any] = {"points": points}
    if from_step is not None:
        params["from_step"] = from_step
    if to_step is not None:
        params["to_step"] = to_step
    return Call("GET", f"{run_path(run_id)}/plot", Plot.from_json, params=params)


def summary(run_id: str) -> Call[Summary]:
    """The run's reductions and progress: live decisions, first and last step, best metric,
    every change of the lrs, how many decisions rewinds superseded, its head hash."""
    return Call("GET", f"{run_path(run_id)}/summary", Summary.from_json)


# --- observations and what they decide -----------------------------------------------------------


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


def observation(obs: PendingObservation) -> Call[Decision]:
    """POST one observation, exactly as it was made. A non-finite value goes as a string so
    the body is strict JSON."""
    body: dict[str, Any] = {"step": obs.step, "value": encode_float(obs.value)}
    body |= _unset_none(rank=obs.rank, world_size=obs.world_size, weight=obs.weight)
    if obs.client:
        body["client"] = dict(obs.client)
    if obs.applied is not None:
        body["applied"] = dict(obs.applied)
    return Call("POST", f"{run_path(obs.run_id)}/observations", Decision.from_json, body=body)


def observe(
    run_id: str,
    step: int,
    value: float,
    rank: int | None = None,
    world_size: int | None = None,
    weight: float | None = None,
    applied: Applied | None = None,
) -> Call[Decision]:
    """Report the metric `value` seen at training `step`; return the decision it led to.

    `value` may be NaN or ±inf. Sending the same (step, value) again returns the decision
    already made (this is what makes the retries safe); the same step with another value is
    a `ConflictError`. An aggregated run's ranks each give their `rank`, `world_size` and
    optionally `weight`. With `rank` and `world_size`, `applied` (`Applied.of(step, seq,
    lrs)`) acknowledges the lrs this rank applied at an earlier step (docs/agreement.md); the
    answer's `disagreements` then lists the run's ranks whose lrs differ.

    In "buffer" mode, when the service cannot be reached the observation is buffered and the
    answer is provisional (`decision.provisional`: action "hold", the last decided rates), so
    `zip(param_groups, decision.lrs)` goes on working; it raises `ServiceUnavailableError`
    only if the client knows no rates of the run at all (it never got an answer about it).
    A buffered observation that the service refuses is raised here (its `observation` says
    which). Whenever this raises, the observation was not taken: call again.
    """
    # the client sends it with its identity, through its outbox (`Call.pending`)
    done = None if applied is None else applied.to_json()
    obs = PendingObservation(run_id, step, value, rank, world_size, {}, weight, done)
    return Call("POST", f"{run_path(run_id)}/observations", Decision.from_json, pending=obs)


def acknowledge(run_id: str, rank: int, world_size: int, applied: Applied) -> Call[Acknowledged]:
    """Acknowledge the lrs this rank applied at a step (POST /applied; leader mode: the ranks
    that read the lrs and post nothing else): the service checks the hash against the run's
    lrs at that step and answers whether they agree, and the run's disagreeing ranks
    (docs/agreement.md). The step must be decided (else a `ConflictError`)."""
    body = {"rank": rank, "world_size": world_size, **applied.to_json()}
    return Call("POST", f"{run_path(run_id)}/applied", Acknowledged.from_json, body=body)


def rewind(run_id: str, to_step: int) -> Call[Rewound]:
    """For a job resumed from an older checkpoint: make the run's state what it was right
    after `to_step`. The later decisions are kept in the log, marked superseded; the rewind
    is itself an entry of the hash chain (with this client's identity). Rewinding to or past
    the last step changes nothing (`rewound` False), so it is safe at every resume.

    The run's buffered observations are sent first (a rewind must come after them); while
    any is left, this raises `ServiceUnavailableError`."""
    return _logged(run_id, "rewind", Rewound.from_json, {"to_step": to_step})


def resize(
    run_id: str, step: int, world_size: int | None = None, batch_size: int | None = None
) -> Call[Resized]:
    """An elastic job's new size (exactly one of `world_size` and the global `batch_size`,
    as the run's scaling rule counts) from training `step` on: the service rescales the
    lrs by the rule and logs it as a scale entry (`resized` False when that size is
    already in force, so it is safe at every restart). Call it when the job restarts with
    another world size, before its first step; `step` may not be below the last decided
    step. The run's buffered observations are sent first; while any is left, this raises
    `ServiceUnavailableError`."""
    body = {"step": step} | _unset_none(world_size=world_size, batch_size=batch_size)
    return _logged(run_id, "resize", Resized.from_json, body)


def declare_checkpoint(run_id: str, step: int, ref: str) -> Call[CheckpointDeclared]:
    """The job saved a checkpoint at training `step`; `ref` is its own name or path for it
    (what a rollback hands back). The run logs it as a checkpoint entry; a guarded run rolls
    back to the newest one before a step in trouble. The same step and ref again is a retry
    (`declared` False). The run's buffered observations are sent first; while any is left,
    this raises `ServiceUnavailableError`."""
    body = {"step": step, "ref": ref}
    return _logged(run_id, "checkpoints", CheckpointDeclared.from_json, body, "checkpoint")


def cooldown(
    run_id: str,
    at_step: int,
    steps: int,
    shape: str | None = None,
    reason: str | None = None,
) -> Call[Cooled]:
    """Start the run's decay at training step `at_step` (not yet decided), `steps` long, of
    `shape` (None: the policy's own; wsd@1: "linear", "cosine", "1-sqrt", "exponential",
    "step"): a cooldown on demand, logged as a cooldown entry with this client's token and
    `reason`. A `ConflictError` says why when the run cannot (its policy has no cooldown, the
    step is decided, no stable phase is left). The run's buffered observations are sent
    first; while any is left, this raises `ServiceUnavailableError`."""
    body = {"at_step": at_step, "steps": steps} | _unset_none(shape=shape, reason=reason)
    return _logged(run_id, "cooldown", Cooled.from_json, body)


def checkpoints(run_id: str, after: int = 0, limit: int = 100) -> Call[Checkpoints]:
    """One page of the run's declared checkpoints (at most `limit`, up to 1000), oldest first,
    starting after seq `after` (`superseded`: on a branch the run left)."""
    params = {"after": after, "limit": limit}
    return Call("GET", f"{run_path(run_id)}/checkpoints", Checkpoints.from_json, params=params)


def iter_checkpoints(run_id: str, *, limit: int = 100) -> Pages[CheckpointInfo]:
    """Every declared checkpoint of the run, oldest first, fetching `limit` per request."""
    return Pages(0, lambda after: checkpoints(run_id, after, limit), next_cursor)


def retime(run_id: str, at_step: int, horizon: int, mode: str = "keep_lr") -> Call[Retimed]:
    """Give the run's schedule a new horizon without a jump in lr: from training step
    `at_step` (not yet decided) on, it ends at `horizon` (cosine's T_max, one_cycle's
    total_steps, wsd's decay end, ...). `mode` "keep_lr" keeps the lr at `at_step` and fits
    the schedule's decay from there; "keep_fraction" keeps the fraction of the schedule done
    there and stretches the rest. Logged as a retime entry with this client's token. A
    `ConflictError` says why when the run cannot (no horizon, the step is decided, the
    schedule has ended). `simulate(run_id=..., retime=...)` shows what it would do first."""
    body = {"at_step": at_step, "horizon": horizon, "mode": mode}
    return _logged(run_id, "retime", Retimed.from_json, body)


# --- the rates: at one step, over a range --------------------------------------------------------


def lr_at(run_id: str, step: int | None = None, wait: float = 0.0) -> Call[LrAt]:
    """The rates in force at `step` (GET /lr; the current ones if None), and the decision that
    set them. With `wait` (leader mode: one rank posts, the others read), the service answers
    once the run is decided through `step`, or after `wait` seconds (at most 60; `certain`
    says which). In "buffer" mode, while the service cannot be reached: the last known ones,
    with `provisional` True."""
    params: dict[str, Any] = {} if step is None else {"step": step}
    if wait:
        params["wait"] = wait
    return Call(
        "GET",
        f"{run_path(run_id)}/lr",
        LrAt.from_json,
        params=params or None,
        read_timeout=wait + 10.0 if wait else None,
        offline=lambda res: res.lrs_in_force(run_id, step),
    )


def lrs_range(run_id: str, first: int, count: int = 1000, every: int = 1) -> Call[LrsRange]:
    """The rates of `count` steps from `first`, `every` steps apart (GET /lrs; at most 10,000
    steps; `every` > 1: a run clocked in tokens, read at each optimizer step's position): a
    rank that needs an lr every training step fetches once per `count` steps. In "buffer"
    mode, while the service cannot be reached: the last known ones, with `provisional` True
    and nothing certain."""
    params: dict[str, int] = {"from": first, "count": count}
    if every != 1:  # (not sent when 1: a service older than strides answers the same)
        params["every"] = every
    return Call(
        "GET",
        f"{run_path(run_id)}/lrs",
        LrsRange.from_json,
        params=params,
        offline=lambda res: res.lrs_ahead(run_id, first, count, every),
    )


# --- the log -------------------------------------------------------------------------------------


def decisions(
    run_id: str,
    after: int = 0,
    limit: int = 100,
    action: str | None = None,
    *,
    from_step: int | None = None,
    to_step: int | None = None,
    superseded: bool | None = None,
) -> Call[Page[Decision]]:
    """One page of the decision log (at most `limit`, up to 1000), oldest first, starting
    after seq `after`. Filters: `action` (e.g. "reduce", "rewind"), the steps from `from_step`
    to `to_step` (both included), and `superseded`: False for the live branch only (what a
    resumed job trained on), True for only what rewinds superseded, None for both."""
    params: dict[str, Any] = {"after": after, "limit": limit}
    params |= _unset_none(action=action, from_step=from_step, to_step=to_step)
    if superseded is not None:
        params["superseded"] = "true" if superseded else "false"
    return Call(
        "GET",
        f"{run_path(run_id)}/decisions",
        Page[Decision].parser(Decision.from_json),
        params=params,
    )


def iter_decisions(
    run_id: str,
    action: str | None = None,
    *,
    limit: int = 100,
    from_step: int | None = None,
    to_step: int | None = None,
    superseded: bool | None = None,
) -> Pages[Decision]:
    """Every decision of the run (with the filters of `decisions`), oldest first, fetching
    `limit` per request as needed; `superseded=False` is the live branch."""

    def page(after: int) -> Call[Page[Decision]]:
        return decisions(
            run_id, after, limit, action, from_step=from_step, to_step=to_step,
            superseded=superseded,
        )  # fmt: skip

    return Pages(0, page, next_cursor)


def verify(run_id: str, head: str | None = None) -> Call[Verified]:
    """Ask the service to replay the run's log through its policy version and check every
    link; with `head` (from `head_hash`), the log must also end exactly there."""
    body = {"head": head} if head is not None else {}
    return Call("POST", f"{run_path(run_id)}/verify", Verified.from_json, body=body)


def export(run_id: str) -> Call[httpx.Response]:
    """GET the run as a bundle (NDJSON): the answer is handed over open, to be streamed."""
    return Call("GET", f"{run_path(run_id)}/export", _unread, read_answer=_open_answer, stream=True)


def import_bundle(bundle: str | os.PathLike[str]) -> Call[Imported]:
    """Upload a bundle file (as `export` writes it) to the service, streamed: it is checked
    whole (every link, every decision replayed through its policy version) before anything is
    stored, and refused (`ValidationError`, naming the line) otherwise. `created` is False
    when the service held that very log already; a run of that run_id with another log is a
    `ConflictError`. Requires no more memory than a chunk of the file."""
    path = Path(bundle)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")

    def imported(response: httpx.Response) -> Imported:
        run = Run.from_json(json_of(response, "POST /v1/runs/import"))
        return Imported(run, created=response.status_code == 201)

    return Call("POST", "/v1/runs/import", _unread, read_answer=imported, upload=path)


def _unread(raw: object) -> Any:
    raise AssertionError("read_answer reads this answer")  # pragma: no cover


def _open_answer(response: httpx.Response) -> httpx.Response:
    return response


# --- what-if, policies, probes -------------------------------------------------------------------


def simulate(
    policy: str | None = None,
    version: int = 1,
    params: Mapping[str, Any] | None = None,
    base_lrs: Sequence[float] | None = None,
    values: Sequence[float] | None = None,
    *,
    steps: Sequence[int] | None = None,
    metric: str | None = None,
    run_id: str | None = None,
    retime: Mapping[str, Any] | None = None,
) -> Call[Simulated]:
    """What a policy would decide (what-if), stored nowhere: for a metric stream (`values`,
    at `steps` or steps 1, 2, 3, ...; with `policy`, `version`, `params` and `base_lrs`), or
    for the live branch of run `run_id` (its own policy and base_lrs unless given; `params`
    are laid over the run's own, as `lrpilot simulate --set` does; `differing` counts the
    decisions unlike the run's own). Values may be NaN or ±inf. `retime` (`{"at_step",
    "horizon", "mode"}`) shows what that retime would do, before it is asked."""
    body: dict[str, Any] = _unset_none(
        base_lrs=None if base_lrs is None else encode_floats(base_lrs),
        values=None if values is None else [encode_float(v) for v in values],
        steps=None if steps is None else list(steps),
        metric=metric,
        run_id=run_id,
        retime=None if retime is None else dict(retime),
    )
    if policy is not None:
        body["policy"] = {"name": policy, "version": version, "params": dict(params or {})}
    return Call("POST", "/v1/simulate", Simulated.from_json, body=body)


def policies() -> Call[tuple[PolicyInfo, ...]]:
    """Every policy version the service serves: name, version, params schema, defaults."""

    def read(raw: object) -> tuple[PolicyInfo, ...]:
        return Page[PolicyInfo].parser(PolicyInfo.from_json)(raw).items

    return Call("GET", "/v1/policies", read)


def create_token(
    role: str, name: str | None = None, expires_days: int | None = None
) -> Call[NewToken]:
    """A new API token of this client's token's project (an admin's): `role` "reader",
    "writer" or "admin", `name` unique (default PROJECT-ROLE-random), valid `expires_days`
    (default: until revoked). Its `token` is shown this once."""
    body = {"role": role} | _unset_none(name=name, expires_days=expires_days)
    return Call("POST", "/v1/tokens", NewToken.from_json, body=body)


def list_tokens() -> Call[tuple[TokenInfo, ...]]:
    """The tokens of this client's token's project (an admin's), never their secrets."""

    def read(raw: object) -> tuple[TokenInfo, ...]:
        return Page[TokenInfo].parser(TokenInfo.from_json)(raw).items

    return Call("GET", "/v1/tokens", read)


def revoke_token(name: str) -> Call[TokenInfo]:
    """Revoke a token of this client's token's project by name (or id): every replica
    refuses it within a second. Revoking a revoked token changes nothing."""
    return Call("POST", f"/v1/tokens/{quote(name, safe='')}/revoke", TokenInfo.from_json)


def health() -> Call[Health]:
    """Liveness (GET /healthz): status "ok" while the service runs."""
    return Call("GET", "/healthz", Health.from_json)


def ready() -> Call[Health]:
    """Readiness (GET /readyz): status "ready" when the database answers; while it does not,
    the service answers 503, retried, then raised as `ServiceUnavailableError`."""
    return Call("GET", "/readyz", Health.from_json)


def metrics() -> Call[str]:
    """The service's metrics (GET /metrics), in Prometheus' text format: served to the
    service's own machine, or to reader tokens when it says LRPILOT_METRICS_ACCESS=reader."""
    return Call("GET", "/metrics", _unread, read_answer=_text)


def _text(response: httpx.Response) -> str:
    return response.text


def first_lr(lrs: Sequence[float]) -> float:
    """The first param group's rate; a run always has at least one group."""
    if not lrs:
        raise ResponseError("the service answered an empty list of lrs")
    return lrs[0]
