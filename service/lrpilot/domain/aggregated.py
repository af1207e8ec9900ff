"""Aggregated steps: every rank of a job reports its local metric for a step; the step is
decided once, from the weighted mean of the reports, when every rank has reported (or at the
run's timeout, with the ranks present, or not at all: the run's ``on_timeout``).

Runs inside the store transaction that holds the run's lock: one writer a run at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lrpilot.canonical import parse_float, same_float
from lrpilot.domain.deciding import decide, now
from lrpilot.domain.errors import Conflict, Invalid
from lrpilot.domain.scaling import check_resize_step, resized, resized_on_retry
from lrpilot.entries import (
    NOBODY,
    Asker,
    Ranks,
    missing_ranges,
    ranges_text,
    rank_report,
    weighted_mean,
)
from lrpilot.store.records import Report, RunHead, RunKey, Tally
from lrpilot.store.runs import WriteTx


@dataclass(frozen=True, slots=True)
class Posted:
    """One observation as posted to a run."""

    run: RunKey  # the run's project and id: two projects' runs of one id never share a batch
    step: int
    value: float
    asker: Asker = NOBODY  # who posted it
    rank: int | None = None  # aggregated mode: which rank reports, of how many, how heavily
    world_size: int | None = None
    weight: float | None = None
    timed_out: bool = False  # aggregated mode: decide (or refuse) the step with the ranks present

    @property
    def run_id(self) -> str:
        return self.run.run_id


class Pending(Exception):
    """Aggregated mode: the report is stored, and the step waits for the other ranks until
    ``deadline`` (seconds since the epoch); not a refusal, the caller waits for the decision."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"waiting for the other ranks until {deadline}")
        self.deadline = deadline


def check_world(rank: int | None, world_size: int | None, most: int) -> None:
    """A rank or world_size above the service's bound (``LRPILOT_MAX_WORLD_SIZE``) refused
    before any work: what a step stores and waits for follows the world it declares."""
    if world_size is not None and world_size > most:
        raise Invalid(
            ["body", "world_size"],
            f"world_size {world_size} is above this service's largest world size {most} "
            "(the server's LRPILOT_MAX_WORLD_SIZE)",
            kind="world_size_bound",
        )
    if rank is not None and rank >= most:
        raise Invalid(
            ["body", "rank"],
            f"rank {rank} is not below this service's largest world size {most} "
            "(the server's LRPILOT_MAX_WORLD_SIZE)",
            kind="world_size_bound",
        )


def _deadline(tally: Tally, timeout_s: float) -> float:
    """When a step's wait ends: its first report's time plus the run's timeout (epoch s)."""
    first = datetime.fromisoformat(tally.first_at.replace("Z", "+00:00"))
    return first.timestamp() + timeout_s


def _listed(numbers: Sequence[int], most: int = 64) -> str:
    shown = ", ".join(str(n) for n in numbers[:most])
    return shown if len(numbers) <= most else f"{shown} and {len(numbers) - most} more"


def aggregate_in(
    tx: WriteTx, head: RunHead, item: Posted, heads: dict[RunKey, RunHead]
) -> str | Exception:
    """An aggregated run's report (or its timeout): the step's decision, ``Pending`` while
    ranks are missing, or the refusal. The run is locked: one writer at a time."""
    spec = head.spec.aggregate
    assert spec is not None
    timeout_s = spec.timeout_s
    run, run_id, step = item.run, item.run_id, item.step
    if head.last_step is not None and step <= head.last_step:
        stored = tx.decision_at_step(run, step)
        if stored is None:
            return Conflict(
                f"step {step} is below the last decided step {head.last_step} of run "
                f"{run_id!r} and was never decided: steps must not go backwards"
            )
        if item.timed_out or item.rank is None:
            return stored.text
        weight = 1.0 if item.weight is None else item.weight
        for entry in stored.value.get("ranks", ()):
            if entry["rank"] == item.rank:
                was, was_weight = parse_float(entry["value"]), parse_float(entry["weight"])
                if not same_float(was, item.value) or not same_float(was_weight, weight):
                    return Conflict(
                        f"rank {item.rank} reported value {was!r} (weight {was_weight!r}) for "
                        f"step {step} of run {run_id!r} (decided, seq "
                        f"{stored.value['seq']}); this request says {item.value!r} "
                        f"(weight {weight!r}): a rank's report of a step cannot change"
                    )
        resized_on_retry(tx, head, step, item.world_size, heads, item.asker)
        return stored.text  # a retry, or a rank that reported too late to count: the same one
    check_resize_step(head, step, "step")  # a resize since the first report: never decided
    if item.timed_out:
        tally = tx.tally(run, step)
        if tally is None:
            return Conflict(f"step {step} of run {run_id!r} has no report to decide from")
        deadline = _deadline(tally, timeout_s)
        if time.time() < deadline:
            return Pending(deadline)
        reports = tx.reports_at(run, step)
        world = tally.world_size
        if spec.on_timeout == "refuse":
            # ranges, and the counted ranks cut: an answer's size must not follow the world size
            counted = [r.rank for r in reports]
            missing = ranges_text(missing_ranges(counted, world))
            return Conflict(
                f"step {step} of run {run_id!r} is not decided: ranks {missing} of "
                f"{world} did not report within {timeout_s:g} s (ranks {_listed(counted)} did), "
                'and the run refuses to decide without them (aggregate.on_timeout "refuse"); '
                "the step is decided once every rank has reported"
            )
        return _decide_reports(tx, head, step, reports, world, timeout_s, heads)
    if item.rank is None or item.world_size is None:
        return Invalid(
            ["body", "rank" if item.rank is None else "world_size"],
            f"run {run_id!r} is aggregated: every observation must say its rank and world_size",
        )
    # a report reads and writes O(1) rows, whatever the world size: the step's tally and its
    # own report; every report is read once, when the last one decides the step
    tally = tx.tally(run, step)
    if tally is not None and tally.world_size != item.world_size:
        return Conflict(
            f"world_size {item.world_size} differs from the world_size {tally.world_size} "
            f"the other ranks reported for step {step} of run {run_id!r}"
        )
    weight = 1.0 if item.weight is None else item.weight
    mine = tx.report_of(run, step, item.rank)
    if mine is not None:
        if not same_float(mine.value, item.value) or not same_float(mine.weight, weight):
            return Conflict(
                f"rank {item.rank} reported value {mine.value!r} (weight {mine.weight!r}) for "
                f"step {step} of run {run_id!r}; this request says {item.value!r} (weight "
                f"{weight!r}): a rank's report of a step cannot change"
            )
    else:
        mine = Report(
            item.rank,
            item.world_size,
            item.value,
            weight,
            now(),
            item.asker.client,
            item.asker.by,
        )
        tally = tx.add_report(run, step, mine)
    assert tally is not None  # a rank's report exists only with its step's tally
    if tally.reported == item.world_size:
        reports = tx.reports_at(run, step)
        return _decide_reports(tx, head, step, reports, None, timeout_s, heads)
    return Pending(_deadline(tally, timeout_s))


def _decide_reports(
    tx: WriteTx,
    head: RunHead,
    step: int,
    reports: Sequence[Report],
    world: int | None,
    timeout_s: float,
    heads: dict[RunKey, RunHead],
) -> str:
    """The step's decision from the weighted mean of ``reports`` (in rank order), every rank
    counted (``world`` None) or those present at the timeout of a ``world`` of ranks; when the
    ranks report a new world_size and the run scales by it, a scale entry first."""
    head, _ = resized(tx, head, step, "world_size", reports[0].world_size, heads)
    counted = [rank_report(r.rank, r.value, r.weight, Asker(r.client, r.by)) for r in reports]
    if world is None or len(reports) == world:
        ranks = Ranks(counted, [])
    else:
        ranks = Ranks.at_timeout(counted, world, timeout_s)
    mean = weighted_mean((r.value, r.weight) for r in reports)
    decision = decide(head, step, mean, ranks=ranks)
    tx.append_decision(decision)
    tx.drop_reports(head.key, step)
    heads[head.key] = head.after(decision)
    return decision.body
