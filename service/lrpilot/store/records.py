"""The plain data the store reads and writes: what the domain layer gets and gives back.

JSON-valued fields are canonical JSON text, exactly as stored, so that nothing is re-encoded
between the database and the decision it produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunHead:
    """A run's spec and its latest state: everything needed to decide its next step (O(1))."""

    run_id: str
    policy: str  # "plateau@1"
    params: str  # canonical JSON, every default filled
    base_lrs: str  # canonical JSON list
    metric: str | None
    config_hash: str
    state: str  # canonical JSON of the policy state after last_seq
    lrs: str  # canonical JSON list, in force after last_seq
    last_seq: int
    last_step: int | None
    head_hash: str  # hash of decision last_seq (the chain's tip)
    aggregate: str | None = None  # canonical JSON {"timeout_s", "on_timeout"}; None: leader mode
    scaling: str | None = None  # canonical JSON {"rule", "by", "base"}; None: no scaling rule
    scale: str | None = None  # canonical JSON {"size", "factor", "step"} in force; None: base

    def after(self, decision: NewDecision) -> RunHead:
        """The head once ``decision`` is appended."""
        # spelled out rather than dataclasses.replace: this runs once a decision
        return RunHead(
            self.run_id,
            self.policy,
            self.params,
            self.base_lrs,
            self.metric,
            self.config_hash,
            state=decision.state,
            lrs=decision.lrs,
            last_seq=decision.seq,
            last_step=decision.last_step,
            head_hash=decision.hash,
            aggregate=self.aggregate,
            scaling=self.scaling,
            scale=decision.scale,
        )


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create: its resolved spec and its initial state."""

    run_id: str
    policy: str
    params: str
    base_lrs: str
    metric: str | None
    labels: dict[str, str]
    config_hash: str
    state: str
    lrs: str
    head_hash: str
    created_at: str
    aggregate: str | None = None  # canonical JSON {"timeout_s", "on_timeout"}; None: leader mode
    scaling: str | None = None  # canonical JSON {"rule", "by", "base"}; None: no scaling rule
    scale: str | None = None  # import: the scale in force at the end of the log


@dataclass(frozen=True, slots=True)
class NewDecision:
    """A sealed decision to append to its run's log; ``body`` is what was hashed and is served."""

    run_id: str
    seq: int
    step: int
    action: str
    hash: str
    body: str
    state: str  # canonical JSON of the policy state after this decision
    lrs: str  # canonical JSON list
    last_step: int | None  # the run's last decided step after this entry (a scale decides none)
    reductions: int  # how many reductions this decision counts (0 or 1), as its policy says
    scale: str | None = None  # the run's scale in force after this entry (RunHead.scale)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: canonical JSON documents and the cursor of the next page."""

    items: list[str]
    next: int | str | None


@dataclass(frozen=True, slots=True)
class Report:
    """One rank's report of a step of an aggregated run."""

    rank: int
    world_size: int
    value: float
    weight: float
    created_at: str
    client: dict[str, Any] | None = None  # who posted it, as it declared itself
