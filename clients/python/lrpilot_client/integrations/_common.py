"""What every integration shares, with no framework imported: the lrs fetched ahead, the live
branch of a run's log, and the lineage of a run continued with more param groups."""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..client import Client
from ..errors import ResponseError
from ..models import LrsRange, Run

__all__ = [
    "DEFAULT_AHEAD",
    "PARENT_LABEL",
    "ROOT_LABEL",
    "LrsCursor",
    "Observed",
    "PerStep",
    "check_clock",
    "check_rank",
    "clock_of",
    "continue_with_groups",
    "count_of",
    "derived_run_id",
    "live_observations",
    "logger",
    "warn_disagreements",
]

logger = logging.getLogger("lrpilot_client.integrations")

DEFAULT_AHEAD = 1000  # steps one GET /lrs fetches: one request per this many training steps
PARENT_LABEL = "lrpilot.parent_run"  # on a run continued with more param groups: where from
ROOT_LABEL = "lrpilot.root_run"  # and the run the job was started with
MAX_RUN_ID = 128

# What one optimizer step consumes, in a run clocked in samples or tokens: a number, or a
# callable asked at each optimizer step (variable-length batches), e.g.
# `lambda: int(batch["attention_mask"].sum())`.
PerStep = int | Callable[[], Any]


def clock_of(samples_per_step: PerStep | None, tokens_per_step: PerStep | None) -> str:
    """The clock an integration's arguments ask for."""
    if samples_per_step is not None and tokens_per_step is not None:
        raise ValueError("give samples_per_step or tokens_per_step (as the run's clock counts)")
    if tokens_per_step is not None:
        return "tokens"
    return "samples" if samples_per_step is not None else "steps"


def check_rank(as_rank: tuple[int, int] | None) -> None:
    """An integration's `as_rank`: (rank, world_size), rank below world_size."""
    if as_rank is not None and not 0 <= as_rank[0] < as_rank[1]:
        raise ValueError(f"as_rank must be (rank, world_size), rank < world_size: {as_rank}")


def warn_disagreements(run_id: str, step: int, disagreements: Sequence[Any]) -> None:
    """An answer's disagreeing ranks (docs/agreement.md), if any, as a warning."""
    if disagreements:
        logger.warning(
            "run %r step %d: ranks apply other lrs than the run's: %s",
            run_id, step, list(disagreements),
        )  # fmt: skip


def count_of(n: Any, clock: str, given: str) -> int:
    """A count of samples or tokens: a positive integer (a numpy or 0-dim torch integer too),
    never a float, a bool or zero: a wrong count would bend the schedule without a word."""
    try:
        if isinstance(n, bool):
            raise TypeError
        k = operator.index(n)
    except TypeError:
        raise ValueError(
            f"{clock}_per_step{given} must be a positive integer count of {clock}, got {n!r}"
        ) from None
    if k <= 0:
        raise ValueError(
            f"{clock}_per_step{given} must be a positive integer count of {clock}, got {k}"
        )
    return k


def check_clock(run: Run, clock: str) -> None:
    """A run counting other than the integration: one clear error, naming what to give."""
    if run.clock == clock:
        return
    given = {"steps": "neither samples_per_step nor tokens_per_step"}.get(
        clock, f"{clock}_per_step"
    )
    wants = {"steps": "no samples_per_step or tokens_per_step"}.get(
        run.clock, f"{run.clock}_per_step"
    )
    raise ValueError(
        f"run {run.run_id!r} counts {run.clock}, and {given} was given: give {wants}, or use "
        "another run_id"
    )


class LrsCursor:
    """The lrs of each training step of one run, fetched `ahead` steps at a time.

    A block of rates (GET /lrs) serves every step it covers until an evaluation is posted:
    rates up to the block's `certain_through` cannot change, the later ones are what the run
    holds now and stay right until the next evaluation. So `at(step)` asks the service again
    only past the block, or past `certain_through` once `observed()` said that an evaluation
    was posted. A pure schedule (cosine, step, ...) is all certain: one request per `ahead`
    steps, whatever is posted. `fetches` counts the blocks asked for.

    A run clocked in samples or tokens is read at each optimizer step's position: `at(step,
    every)` fetches the block's steps `every` apart (the count of the step just made), so a
    constant count is one request per `ahead` optimizer steps. Counts that vary (a callable's)
    miss the block: the next block is then as long as twice the steps the last one served (at
    least 2), so variable batches cost one small request a step, never `ahead` rates a step.
    """

    def __init__(self, client: Client, run_id: str, ahead: int = DEFAULT_AHEAD) -> None:
        if not 1 <= ahead <= 10_000:
            raise ValueError(f"ahead must be within 1..10000, got {ahead}")
        self.client = client
        self.run_id = run_id
        self.ahead = ahead
        self.fetches = 0
        self._block: LrsRange | None = None
        self._served = 0  # how far into the block a step was read (a strided block's next length)
        self._observed = False
        self._last: tuple[float, ...] | None = None  # the last rates `at` gave: all finite
        self._warned: LrsRange | None = None  # the block a non-finite rate was logged for

    def at(self, step: int, every: int = 1) -> tuple[float, ...]:
        """The rates in force at training `step` (one per param group); a block fetched here
        holds the steps `every` apart from `step` on.

        A rate that is not a finite number (NaN, ±inf: a bug of the service, or of what stands
        between it and the job) is never applied: the last rates stand, with a warning (once a
        block); before any rate was given, it is a `ResponseError`."""
        block = self._block
        if block is None or not self._serves(block, step):
            count = self.ahead
            if every > 1 and block is not None and self._served < len(block.lrs):
                count = min(self.ahead, max(2, 2 * self._served))
            block = self._block = self.client.lrs_range(self.run_id, step, count, every)
            self._observed = False
            self._served = 0
            self.fetches += 1
        lrs = block.at(step)
        self._served = max(self._served, (step - block.first) // block.every + 1)
        if all(math.isfinite(lr) for lr in lrs):
            self._last = lrs
            return lrs
        if self._last is None:
            raise ResponseError(
                f"run {self.run_id!r}: the service answered the lrs {list(lrs)} for step {step}, "
                "not finite numbers, and there are no earlier lrs to keep"
            )
        if self._warned is not block:
            self._warned = block
            logger.warning(
                "run %r: the service answered the lrs %s for step %d, not finite numbers; "
                "keeping the last lrs %s", self.run_id, list(lrs), step, list(self._last),
            )  # fmt: skip
        return self._last

    def extras_at(self, step: int) -> dict[str, tuple[float, ...]]:
        """What the run schedules beside the lrs at `step` (momentum, weight decay), from the
        block `at(step)` used: only what it schedules, and only finite values (none while the
        service is away: the optimizer keeps the last ones applied)."""
        block = self._block
        if block is None or getattr(block, "provisional", False):
            return {}
        try:
            extras = block.extras_at(step)
        except IndexError:
            return {}
        return {k: v for k, v in extras.items() if all(math.isfinite(x) for x in v)}

    def _serves(self, block: LrsRange, step: int) -> bool:
        if getattr(block, "provisional", False):
            # the client's stand-in while the service is away (the last known rates): good for
            # this step only, so the rates are right again as soon as it is back (a client that
            # knows the service is down makes no request until its next try is due)
            return step == block.first and not self._observed
        if not block.holds(step):
            return False
        if not self._observed:
            return True
        return block.certain_through is not None and step <= block.certain_through

    @property
    def provisional(self) -> bool:
        """The rates last fetched are the client's stand-in (the service was away)."""
        return self._block is not None and bool(getattr(self._block, "provisional", False))

    def observed(self) -> None:
        """An evaluation was posted: the rates past `certain_through` may have changed."""
        self._observed = True

    def reset(self) -> None:
        """Forget the block (after a rewind): the next `at` fetches."""
        self._block = None


@dataclass(frozen=True)
class Observed:
    """One observation of a run's live branch: the step, the value, the decision's lrs; or
    (an elastic run) a resize: `resize` is (what it counts, the new size) and `value` NaN."""

    step: int
    value: float
    lrs: tuple[float, ...]
    resize: tuple[str, int] | None = None

    def same(self, other: Observed) -> bool:
        """The same step and bit for bit the same value (NaN equals NaN here), or the same
        resize."""
        return (
            self.step == other.step
            and _bits(self.value) == _bits(other.value)
            and self.resize == other.resize
        )


def _bits(x: float) -> bytes:
    return struct.pack("<d", math.nan if math.isnan(x) else x)


def live_observations(client: Client, run_id: str) -> list[Observed]:
    """The observations (and resizes) of the run's live branch, in step order: what the
    service serves as not superseded, read page by page (its rewind entries say only where the
    branch turned)."""
    live: list[Observed] = []
    for d in client.iter_decisions(run_id, superseded=False):
        if d.action == "scale" and d.resize:
            size = (str(d.resize["by"]), int(d.resize["to"]))
            live.append(Observed(d.step, math.nan, d.lrs, size))
        elif d.action != "rewind" and d.value is not None:
            live.append(Observed(d.step, d.value, d.lrs))
    return live


def derived_run_id(root: str, groups: int) -> str:
    """The run that continues `root` with `groups` param groups: `{root}.g{groups}`, the root
    shortened (and a hash of it added) when that would exceed the service's 128 characters."""
    suffix = f".g{groups}"
    if len(root) + len(suffix) <= MAX_RUN_ID:
        return root + suffix
    digest = hashlib.sha256(root.encode()).hexdigest()[:8]
    return f"{root[: MAX_RUN_ID - len(suffix) - 9]}.{digest}{suffix}"


def continue_with_groups(
    client: Client,
    parent: Run,
    root: str,
    policy: str,
    version: int,
    params: Mapping[str, Any] | None,
    base_lrs: Sequence[float],
    labels: Mapping[str, str] | None,
) -> tuple[Run, int]:
    """The run that continues `parent` with more param groups (`base_lrs`: the parent's, then
    the new groups'), with the parent's live observations replayed into it; and how many were
    posted now.

    Created (or found, for a job that restarted) as `derived_run_id(root, len(base_lrs))`, the
    same policy and metric, labelled with its parent and root. Its own live branch must be a
    prefix of the parent's: whatever follows the common part (a branch of an earlier attempt)
    is rewound first, so that a job resumed from an older checkpoint can fork again.
    """
    child_id = derived_run_id(root, len(base_lrs))
    lineage = {**(labels or {}), PARENT_LABEL: parent.run_id, ROOT_LABEL: root}
    client.create_run(
        child_id, policy, version, params, list(base_lrs), parent.metric, lineage,
        scaling=parent.scaling or None, clock=None if parent.clock == "steps" else parent.clock,
    )  # fmt: skip
    theirs = live_observations(client, parent.run_id)
    ours = live_observations(client, child_id)
    common = 0
    while common < min(len(theirs), len(ours)) and theirs[common].same(ours[common]):
        common += 1
    if common < len(ours):
        to_step = ours[common - 1].step if common else ours[0].step - 1
        if to_step < 0:
            raise RuntimeError(
                f"run {child_id!r} (run {parent.run_id!r} continued with {len(base_lrs)} "
                f"param groups) holds an observation at step 0 that run {parent.run_id!r} does "
                "not: it cannot be rewound before step 0; start the job with another run_id"
            )
        client.rewind(child_id, to_step)
    n = len(parent.base_lrs)
    for o in theirs[common:]:
        if o.resize is not None:  # the same resizes, at the same steps
            lrs = client.resize(child_id, o.step, **{o.resize[0]: o.resize[1]}).lrs
        else:
            lrs = client.observe(child_id, o.step, o.value).lrs
        if tuple(lrs[:n]) != o.lrs[:n]:
            logger.warning(
                "run %r: the decision replayed at step %d gives the first %d param groups "
                "%s, run %r gave %s (the policy's params treat the groups together)",
                child_id, o.step, n, list(lrs[:n]), parent.run_id, list(o.lrs[:n]),
            )  # fmt: skip
    return client.get_run(child_id), len(theirs) - common
