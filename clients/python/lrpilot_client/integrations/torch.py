"""`LrpilotScheduler`: a torch `LRScheduler` whose rates come from an lrpilot run.

```python
from lrpilot_client import Client
from lrpilot_client.integrations.torch import LrpilotScheduler

scheduler = LrpilotScheduler(optimizer, Client(URL), "resnet-c", policy="cosine",
                             params={"T_max": 10_000}, metric="val_loss")
for step, batch in enumerate(loader):
    loss(batch).backward(); optimizer.step(); optimizer.zero_grad()
    scheduler.step()                       # the next step's lrs, from a block fetched ahead
    if step % 1000 == 999:
        scheduler.observe(evaluate())      # plateau control: post the metric, apply the answer
```

Needs torch (`pip install 'lrpilot-client[torch]'`); nothing else of the service's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, SupportsFloat

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle

from ..client import Client
from ..errors import ConflictError, NotFoundError, RollbackRequested, ServiceUnavailableError
from ..models import Decision, Run
from ._common import (
    DEFAULT_AHEAD,
    ROOT_LABEL,
    LrsCursor,
    continue_with_groups,
    derived_run_id,
    logger,
)

__all__ = ["LrpilotScheduler", "RollbackRequested"]

STATE_VERSION = 1  # the layout of state_dict()


def _size(world_size: int | None, batch_size: int | None) -> tuple[str, int] | None:
    if world_size is not None and batch_size is not None:
        raise ValueError("give world_size or batch_size (as the run's scaling rule counts)")
    if world_size is not None:
        return "world_size", world_size
    if batch_size is not None:
        return "batch_size", batch_size
    return None


def _as_float(lr: Any) -> float:
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


class LrpilotScheduler(LRScheduler):
    """A torch `LRScheduler` that applies the rates of an lrpilot run at every training step.

    Works with any torch optimizer, any number of param groups, float or tensor lrs (a tensor
    lr is written in place with `fill_`, as torch's schedulers do, so the optimizer keeps the
    same tensor objects; it holds the service's rate in its own dtype). Because it is an
    `LRScheduler`, torch code, Lightning (`configure_optimizers` with `"interval": "step"`) and
    transformers (`Trainer(optimizers=(optimizer, scheduler))`) accept it.

    **The run.** Created at construction with `create_run(run_id, policy, version, params,
    base_lrs=the optimizer's initial lrs, metric, labels)`, or returned when it exists with the
    same spec, so the same line serves the first start and every restart. `policy=None` uses the
    existing run as it is (its number of param groups must be the optimizer's).

    **Steps.** `last_epoch` is the training step: after `k` calls of `step()` the optimizer holds
    the run's rates at step `k` (GET /v1/runs/{run_id}/lr?step=k), i.e. torch's convention, so
    call `step()` after every `optimizer.step()`. The rates come from blocks of `ahead` steps
    (GET /lrs), not one request a step: a pure schedule needs one request per `ahead` steps; with
    plateau control the block is fetched again after each evaluation, for the steps it could
    change. `fetches` counts those requests.

    **Evaluations.** `observe(value)` posts the metric at the current step and applies what the
    run decided at once; it returns the `Decision` (also `last_decision`; `should_stop` is its
    `stop`). `step(metrics)` is for `ReduceLROnPlateau`-style code that calls it once an epoch:
    one step, then `observe(metrics)` at it (the step counter then counts epochs). Every rank of a
    distributed job should post the same (reduced) metric: the service dedupes them, and each
    rank's scheduler knows to fetch again.

    **Checkpoints.** `state_dict()` is plain data (run ids, the step, the last step observed, the
    head hash of the log as this job saw it, the base lrs); `load_state_dict()` restores it and
    rewinds the run to the checkpoint: the decisions made after it are superseded (kept in the
    log, GET /decisions?superseded=true) and the run's state is what it was when the checkpoint
    was saved. Rewinding to a step the run is not past changes nothing, so it is safe at every
    resume. Load the optimizer's state first, then the scheduler's (as Lightning and transformers
    do), since the scheduler's load writes the step's rates into the optimizer.

    **Param groups added mid-run** (`optimizer.add_param_group`, e.g. gradual unfreezing). A run's
    base lrs, hence its number of groups, are fixed when it is created, and the service never
    changes a spec. The scheduler therefore continues on a *derived run*, `{run_id}.g{n}` for n
    groups, created with the same policy, params and metric, base lrs = the run's base lrs plus
    each new group's lr (its `initial_lr`, else its `lr` when added), labelled
    `lrpilot.parent_run` (the run it continues) and `lrpilot.root_run` (the run the job started
    with); the parent's live observations are posted to it again, at their steps, before it takes
    over. The new run so holds the whole metric history, the service's log records the change
    (a new run, linked by its labels, whose first decisions repeat the parent's), and the
    existing groups keep their rates exactly (a schedule is a function of the step, plateau
    control replays the same metrics; a warning is logged should a policy's params tie the
    groups together so that they do not). The new group gets the rate it would have had in the
    run from the start: for a schedule, its lr times the schedule's factor at this step; for
    plateau control, its lr reduced as often as the others were, so give it the lr you want it to
    *start* the run with. The switch is logged (logger `lrpilot_client.integrations`, INFO),
    `run_id` names the derived run from then on, and a restart finds it again: a scheduler built
    on an optimizer that already has the added groups uses the derived run. Groups cannot be
    removed (a `RuntimeError` says so). The alternatives were worse: posting the new group's
    rates to the same run is impossible (the spec is fixed), failing would make gradual
    unfreezing unusable, and a fresh run without the replay would restart plateau control from
    the base lrs.

    **Elastic jobs.** With `scaling={"rule": "linear", "by": "world_size", "base": 8}` (the
    optimizer's lrs are tuned for 8 ranks) and `world_size=dist.get_world_size()`, the run
    rescales its rates for the job's size at every start and resume (a restart by an elastic
    launcher on fewer or more ranks), from that step on, as a `scale` entry in its log.
    `resize()` does it mid-run.

    **Guarded runs** (docs/guard.md). With `guard={"on": ["nan", "spike"], ...}` the run
    answers a NaN or a spike with a `rollback` to the newest checkpoint declared before it.
    Declare each checkpoint you save with `checkpoint(step, ref)` (`ref`: your name or path for
    it). On a rollback, `observe` moves the scheduler to the checkpoint's step (the run is
    rewound there already, its rates cut) and then calls `restore(ref)` if you gave one (load
    the model's and the optimizer's state from it; the scheduler's own state may be loaded too:
    it is then a no-op), else raises `RollbackRequested(step, ref)` for the loop to do it.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        client: Client,
        run_id: str,
        policy: str | None = "plateau",
        version: int = 1,
        params: Mapping[str, Any] | None = None,
        metric: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        ahead: int = DEFAULT_AHEAD,
        scaling: Mapping[str, Any] | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
        guard: Mapping[str, Any] | None = None,
        restore: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self._guard = dict(guard) if guard is not None else None
        self._restore = restore
        self._scaling = dict(scaling) if scaling is not None else None
        self._size = _size(world_size, batch_size)
        self.root_run_id = run_id
        self.ahead = ahead
        self.last_decision: Decision | None = None
        self._labels = dict(labels) if labels is not None else None
        self._observed_step: int | None = None
        self._head: str | None = None
        self._fetches_before = 0
        base = [_as_float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.run = self._open(run_id, policy, version, params, metric, base)
        self._policy = (self.run.policy.name, self.run.policy.version)
        self._params = dict(params) if params is not None else dict(self.run.policy.params)
        self.run_id = self.run.run_id
        self._cursor = LrsCursor(client, self.run_id, ahead)
        self._hook: RemovableHandle | None = None
        super().__init__(optimizer)  # torch's first step(): the rates of step 0
        # A group added between two steps gets its rates before the optimizer first uses it.
        self._hook = optimizer.register_step_pre_hook(self._before_optimizer_step)
        # A new run takes the job's size from step 0, before it trains; a run with history
        # learns it where the job resumes (load_state_dict), or, restarted without a checkpoint,
        # before the first optimizer step (the step pre-hook).
        self._size_due = self._size is not None
        if self._size_due and self.run.last_seq == 0:
            self._report_size(0)

    # -- the run ------------------------------------------------------------------------------

    def _open(
        self,
        run_id: str,
        policy: str | None,
        version: int,
        params: Mapping[str, Any] | None,
        metric: str | None,
        base: list[float],
    ) -> Run:
        if policy is None:
            run = self.client.get_run(run_id)
            if len(run.base_lrs) != len(base):
                run = self._derived(run_id, base, run)
            return run
        try:
            return self.client.create_run(
                run_id,
                policy,
                version,
                params,
                base,
                metric,
                self._labels,
                scaling=self._scaling,
                guard=self._guard,
            )
        except ConflictError:
            # A restart whose optimizer already has the groups added mid-run: the derived run.
            existing = self.client.get_run(run_id)
            if len(existing.base_lrs) >= len(base):
                raise
            return self._derived(run_id, base, existing)

    def _derived(self, root: str, base: list[float], existing: Run) -> Run:
        derived = derived_run_id(root, len(base))
        try:
            run = self.client.get_run(derived)
        except NotFoundError:
            run = None
        if run is None or run.labels.get(ROOT_LABEL) != root or list(run.base_lrs) != base:
            found = "does not exist" if run is None else f"has base lrs {list(run.base_lrs)}"
            raise ValueError(
                f"the optimizer has {len(base)} param groups (initial lrs {base}), run {root!r} "
                f"has {len(existing.base_lrs)}, and run {derived!r} (its continuation with "
                f"{len(base)} groups, made when groups are added mid-run) {found}"
            )
        logger.info("run %r: the optimizer has %d param groups: using %r", root, len(base), derived)
        return run

    @property
    def fetches(self) -> int:
        """How many GET /lrs requests this scheduler made (for all its runs)."""
        return self._fetches_before + self._cursor.fetches

    def _switch(self, run: Run) -> None:
        self._fetches_before += self._cursor.fetches
        self.run = run
        self.run_id = run.run_id
        self._cursor = LrsCursor(self.client, run.run_id, self.ahead)
        self._head = run.head_hash

    def _check_groups(self) -> None:
        groups = self.optimizer.param_groups
        have = len(self.run.base_lrs)
        if len(groups) == have:
            return
        if len(groups) < have:
            raise RuntimeError(
                f"the optimizer has {len(groups)} param groups, run {self.run_id!r} has {have}: "
                "param groups cannot be removed from a run"
            )
        added = groups[have:]
        for group in added:
            group.setdefault(
                "initial_lr",
                group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"],
            )
        new_lrs = [_as_float(g["initial_lr"]) for g in added]
        base = [*self.run.base_lrs, *new_lrs]
        parent = self.run
        run, replayed = continue_with_groups(
            self.client,
            parent,
            self.root_run_id,
            self._policy[0],
            self._policy[1],
            self._params,
            base,
            self._labels,
        )
        self._switch(run)
        self.base_lrs = [*self.base_lrs, *(g["initial_lr"] for g in added)]
        logger.info(
            "step %d: %d param group(s) added (lr %s): run %r continues as run %r with %d "
            "param groups (labelled %s=%r; %d observation(s) of %r replayed into it)",
            self.last_epoch, len(added), new_lrs, parent.run_id, run.run_id, len(base),
            "lrpilot.parent_run", parent.run_id, replayed, parent.run_id,
        )  # fmt: skip

    # -- rates --------------------------------------------------------------------------------

    def _lrs(self, step: int) -> list[float]:
        self._check_groups()
        return list(self._cursor.at(step))

    def get_lr(self) -> list[float | torch.Tensor]:
        """The run's rates at the current step (`last_epoch`), one per param group."""
        return list(self._lrs(self.last_epoch))

    def _apply(self) -> None:
        lrs = self._lrs(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
            for g in self.optimizer.param_groups
        ]

    def _before_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._size_due:  # a restart without a checkpoint: from where the run stands
            try:
                run = self.client.get_run(self.run_id)
            except ServiceUnavailableError as exc:
                logger.warning("run %r: the job's size is not reported yet: %s", self.run_id, exc)
            else:
                since = max(self.last_epoch, run.last_step or 0, run.scale.get("step") or 0)
                self._report_size(since)
        if len(optimizer.param_groups) != len(self.run.base_lrs):
            self._apply()

    def step(  # type: ignore[override]
        self, metrics: SupportsFloat | None = None, epoch: int | None = None
    ) -> None:
        """One training step: the optimizer gets the run's rates of the next step. With
        `metrics` (ReduceLROnPlateau-style code, once an epoch), then posts it at that step."""
        if epoch is not None:
            raise TypeError(
                "LrpilotScheduler counts steps itself: call step() (or step_to(k) to jump)"
            )
        super().step()
        if metrics is not None:
            self.observe(metrics)

    def step_to(self, step: int) -> None:
        """Apply the rates of training `step` (at or after the current one): for frameworks
        that count steps themselves (a trainer's global step). No request unless `step` is
        past the block fetched ahead."""
        if step < self.last_epoch:
            raise ValueError(
                f"step {step} is before the current step {self.last_epoch}: "
                "load_state_dict (or resume) rewinds, step_to only goes forward"
            )
        if step != self.last_epoch:
            self._step_count += 1
            self.last_epoch = step
        self._apply()  # again at the same step too: a trainer's own scheduler may have written

    def observe(self, value: SupportsFloat, step: int | None = None) -> Decision:
        """Post the metric `value` (a float or a 0-dim tensor; NaN and inf are fine) at the
        current step (or `step`), apply the rates it leads to, and return the decision."""
        at = self.last_epoch if step is None else step
        self._check_groups()
        decision = self.client.observe(self.run_id, at, float(value))
        self.last_decision = decision
        self._observed_step = at
        if not getattr(decision, "provisional", False):  # (a client's stand-in has no hash)
            self._head = decision.hash
        self._cursor.observed()
        logger.info(
            "run %r step %d: %s %r -> %s %s: %s",
            self.run_id, at, self.run.metric or "metric", float(value), decision.action,
            list(decision.lrs), decision.reason,
        )  # fmt: skip
        if decision.action == "rollback" and decision.rollback is not None:
            return self._rolled_back(decision)
        self._apply()
        return decision

    def _rolled_back(self, decision: Decision) -> Decision:
        """The run rolled back to a checkpoint (and is rewound to its step): go on from that
        step with the run's rates, and restore the checkpoint (or ask the loop to)."""
        assert decision.rollback is not None
        target = decision.rollback["checkpoint"]
        step, ref = int(target["step"]), str(target["ref"])
        self._observed_step = step
        self._head = None  # the rewind after the rollback is the head: asked for when needed
        self.last_epoch = step
        self._cursor.reset()
        if self._restore is None:
            self._apply()
            raise RollbackRequested(step, ref, decision)
        self._restore(ref)
        self._apply()  # after: the optimizer's state, restored, holds the rates it had then
        return decision

    def checkpoint(self, step: int, ref: str) -> bool:
        """Declare a checkpoint you saved at training `step` (`last_epoch` when you save it):
        a guarded run rolls back to the newest one before a step in trouble, and hands `ref`
        back then. False when the service could not be reached (training goes on; a rollback
        would then go to an older checkpoint)."""
        try:
            self.client.declare_checkpoint(self.run_id, step, ref)
        except ServiceUnavailableError as exc:
            logger.warning("run %r: checkpoint %r of step %d not declared: %s", self.run_id,
                           ref, step, exc)  # fmt: skip
            return False
        return True

    @property
    def should_stop(self) -> bool:
        """The last decision was `stop` (the policy says training is over)."""
        return self.last_decision is not None and self.last_decision.stop

    # -- checkpoints --------------------------------------------------------------------------

    def head_hash(self) -> str | None:
        """The hash of the last decision this scheduler saw of its run (posted, or restored
        from a checkpoint): `client.verify(run_id, head=...)` proves the log ends there."""
        return self.client.head_hash(self.run_id) or self._head

    def state_dict(self) -> dict[str, Any]:
        """Plain data (torch.load(weights_only=True) reads it): the run, the root run, the
        step, the last step observed, the head hash, the base lrs."""
        return {
            "lrpilot": STATE_VERSION,
            "run_id": self.run_id,
            "root_run_id": self.root_run_id,
            "last_epoch": self.last_epoch,
            "observed_step": self._observed_step,
            "head_hash": self.head_hash(),
            "base_lrs": [float(x) for x in self.run.base_lrs],
            "_step_count": self._step_count,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint: its run and step, the run rewound to it (see the class
        docstring), the step's rates applied to the optimizer."""
        if state_dict.get("lrpilot") != STATE_VERSION:
            raise ValueError("not an LrpilotScheduler state_dict (no 'lrpilot' version 1)")
        if state_dict["root_run_id"] != self.root_run_id:
            raise ValueError(
                f"the checkpoint is of run {state_dict['root_run_id']!r}, this scheduler's "
                f"is {self.root_run_id!r}"
            )
        if state_dict["run_id"] != self.run_id:
            self._switch(self.client.get_run(state_dict["run_id"]))
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        self.resume(
            int(state_dict["last_epoch"]),
            state_dict.get("observed_step"),
            head=state_dict.get("head_hash"),
        )

    def resume(
        self, step: int, observed_step: int | None = None, *, head: str | None = None
    ) -> bool:
        """Continue at training `step` of a checkpoint: rewind the run so that its state is
        what it was when the checkpoint was saved, and apply the step's rates. The decisions
        at steps up to `step` are kept, the one at `step` itself only if the checkpoint had
        posted it (`observed_step == step`): an evaluation at `step` made after the checkpoint
        is superseded, so the resumed job can post it again. True if the run was rewound."""
        to_step = step if observed_step == step else step - 1
        rewound = False
        if to_step >= 0:
            answer = self.client.rewind(self.run_id, to_step)
            rewound = answer.rewound
            if rewound and answer.decision is not None:
                logger.info(
                    "run %r: resumed at step %d: rewound to step %d (%s)",
                    self.run_id, step, to_step, answer.decision.reason,
                )  # fmt: skip
        self._observed_step = observed_step
        self._head = head
        self.last_epoch = step
        self._cursor.reset()
        self._apply()
        if self._size is not None:  # a rewind restores the size of the checkpoint's time
            self._report_size(step)
        return rewound

    # -- elastic jobs -------------------------------------------------------------------------

    def _report_size(self, step: int) -> None:
        """Tell the run the job's size from `step` on and apply the rates it gives; while the
        service is away, training goes on and the size is told before a later optimizer
        step (a training loop never dies because lrpilot is away)."""
        assert self._size is not None
        by, size = self._size
        try:
            answer = self.client.resize(self.run_id, step, **{by: size})
        except ServiceUnavailableError as exc:
            self._size_due = True
            logger.warning("run %r: %s %d not reported yet: %s", self.run_id, by, size, exc)
            return
        self._size_due = False
        if answer.resized and answer.decision is not None:
            logger.info("run %r step %d: %s", self.run_id, step, answer.decision.reason)
            self._cursor.reset()
            self._apply()

    def resize(self, world_size: int | None = None, batch_size: int | None = None) -> None:
        """The job's new size (exactly one of `world_size` and the global `batch_size`, as the
        run's scaling rule counts) from the current step on: the run rescales its rates (a
        `scale` entry in its log) and the optimizer gets them at once. The constructor's
        `world_size`/`batch_size` does this at every start and resume, which is what an elastic
        launcher's restart needs."""
        self._size = _size(world_size, batch_size)
        self._report_size(self.last_epoch)

    def close(self) -> None:
        """Detach from the optimizer (its step pre-hook)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __repr__(self) -> str:
        lrs = [_as_float(x) for x in self._last_lr] if hasattr(self, "_last_lr") else []
        shown = ", ".join(f"{x:.6g}" if math.isfinite(x) else str(x) for x in lrs)
        return f"LrpilotScheduler(run_id={self.run_id!r}, step={self.last_epoch}, lrs=[{shown}])"
