"""What the transformers and Lightning callbacks share: the run's spec they were given, and
the `LrpilotScheduler` they build on the trainer's optimizer (or find as the trainer's own)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..client import Client
from ..errors import RollbackRequested
from ..models import Decision
from ._common import DEFAULT_AHEAD
from .torch import LrpilotScheduler, OnMismatch, PerStep


class SchedulerCallback:
    """A callback's run (`client`, `run_id` and the spec, or none of them: then the trainer's
    own `LrpilotScheduler` is used) and the scheduler in charge (`scheduler`; `owned` when the
    callback built it). `samples_per_step` or `tokens_per_step` clock the run in samples or
    tokens, as for `LrpilotScheduler` (a callable is asked once for each training step the
    trainer advances, before the next step's batch). `as_rank=(rank, world_size)`: this
    process is that rank of a data-parallel job, and each evaluation's report acknowledges the
    lrs the optimizer trained with at the step last decided (docs/agreement.md)."""

    owner = "the trainer's scheduler"  # what "neither client nor run_id" means, for the error
    default_metric = "val_loss"  # the framework's name of the validation loss

    def __init__(
        self,
        client: Client | None = None,
        run_id: str | None = None,
        policy: str | None = "plateau",
        version: int = 1,
        params: Mapping[str, Any] | None = None,
        metric: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        ahead: int = DEFAULT_AHEAD,
        stop_training: bool = True,
        on_mismatch: OnMismatch = "raise",
        samples_per_step: PerStep | None = None,
        tokens_per_step: PerStep | None = None,
        guard: Mapping[str, Any] | None = None,
        as_rank: tuple[int, int] | None = None,
    ) -> None:
        if (client is None) != (run_id is None):
            raise ValueError(f"give both client and run_id, or neither ({self.owner})")
        self.client = client
        self.run_id = run_id
        self.policy = policy
        self.version = version
        self.params = params
        self.metric = metric or self.default_metric
        self.labels = labels
        self.ahead = ahead
        self.stop_training = stop_training
        self.on_mismatch = on_mismatch  # a restored checkpoint not bound to the log: raise, warn
        self.samples_per_step = samples_per_step
        self.tokens_per_step = tokens_per_step
        self.guard = guard  # a guarded run (docs/guard.md): declared saves, rollbacks
        self.as_rank = as_rank  # None: the framework's rank, if it runs more than one
        self.scheduler: LrpilotScheduler | None = None
        self.owned = False  # the callback built the scheduler (else it is the trainer's)

    @property
    def last_decision(self) -> Decision | None:
        """The decision of the last evaluation posted."""
        return None if self.scheduler is None else self.scheduler.last_decision

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> LrpilotScheduler:
        """The callback's own scheduler on `optimizer`, from the spec it was given."""
        assert self.client is not None and self.run_id is not None
        self.scheduler = LrpilotScheduler(
            optimizer, self.client, self.run_id, self.policy, self.version, self.params,
            self.metric, self.labels, ahead=self.ahead, on_mismatch=self.on_mismatch,
            samples_per_step=self.samples_per_step, tokens_per_step=self.tokens_per_step,
            guard=self.guard, as_rank=self.as_rank,
        )  # fmt: skip
        self.owned = True
        return self.scheduler

    def rank_of(self, rank: int, world_size: int) -> None:
        """The framework's `rank` of `world_size` processes, for a callback given no `as_rank`:
        with more than one, each rank posts its (synced) metric as that rank's report, which
        carries its acknowledgement (docs/agreement.md)."""
        if self.as_rank is None and world_size > 1:
            self.as_rank = (rank, world_size)

    def observe(self, value: float, restore: Callable[[str], bool]) -> Decision:
        """Post `value` to the scheduler. On a rollback the scheduler is at the checkpoint's
        step (the run is rewound there, its rates cut) and `restore(ref)` loads the checkpoint
        into the trainer; the cut rates then go over the ones the restored optimizer holds. A
        scheduler with a `restore` function of its own has restored already. A checkpoint
        `restore` cannot load in the running trainer (False), or a run clocked in samples or
        tokens (its rollback names a position, not the trainer's step): `RollbackRequested`
        goes up."""
        assert self.scheduler is not None
        try:
            return self.scheduler.observe(value)
        except RollbackRequested as asked:
            if self.scheduler.clock != "steps" or not restore(asked.ref):
                raise
            self.scheduler.step_to(self.scheduler.last_epoch)
            decision: Decision = asked.decision
            return decision

    def rolled_back_to(self, decision: Decision) -> int | None:
        """The step the trainer goes on from after `decision`: the checkpoint's, when it is a
        rollback of a run counting steps (None otherwise)."""
        if decision.action != "rollback" or decision.rollback is None:
            return None
        if self.scheduler is None or self.scheduler.clock != "steps":
            return None
        return int(decision.rollback["checkpoint"]["step"])
