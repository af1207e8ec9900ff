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
from typing import Any, Literal, SupportsFloat

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle

from ..client import Client
from ..errors import (
    CheckpointMismatch,
    ConflictError,
    NotFoundError,
    RollbackRequested,
    ServiceUnavailableError,
)
from ..models import Acknowledged, Applied, Decision, Run
from ._common import (
    DEFAULT_AHEAD,
    ROOT_LABEL,
    LrsCursor,
    PerStep,
    check_clock,
    check_rank,
    clock_of,
    continue_with_groups,
    count_of,
    derived_run_id,
    logger,
    warn_disagreements,
)

__all__ = ["LrpilotScheduler", "PerStep", "RollbackRequested", "apply_extras"]

STATE_VERSION = 1  # the layout of state_dict() (keys added since, "seq", are optional)
OnMismatch = Literal["raise", "warn"]


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


def _held(lr: float, like: Any) -> float:
    """The rate `lr` as a group holding `like` holds it (a float32 tensor rounds it)."""
    if isinstance(like, torch.Tensor):
        return float(torch.tensor(lr, dtype=like.dtype))
    return float(lr)


def _same_lrs(held: list[Any], lrs: tuple[float, ...] | list[float]) -> bool:
    """Whether the groups' `held` lrs are exactly `lrs`, each as its group holds a rate."""
    if len(held) != len(lrs):
        return False
    return all(_as_float(h) == _held(x, h) for h, x in zip(held, lrs, strict=True))


def apply_extras(optimizer: Optimizer, extras: Mapping[str, Any]) -> None:
    """Write what a run schedules beside the lrs into the optimizer's groups, as torch's
    OneCycleLR and CyclicLR do: the momentum into `betas[0]` when the optimizer has betas
    (Adam, AdamW, ...), else into `momentum` (SGD, RMSprop); the weight decay into
    `weight_decay`. An optimizer without the hyperparameter is a `ValueError`, as torch's
    `cycle_momentum` is."""
    defaults = optimizer.defaults
    momentum = extras.get("momentum")
    if momentum is not None:
        beta1 = "betas" in defaults
        if not beta1 and "momentum" not in defaults:
            raise ValueError(
                f"the run schedules the momentum, and {type(optimizer).__name__} has neither "
                "momentum nor betas (use an optimizer that has, or cycle_momentum: false)"
            )
        for group, m in zip(optimizer.param_groups, momentum, strict=True):
            if beta1:
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m
    weight_decay = extras.get("weight_decay")
    if weight_decay is not None:
        if "weight_decay" not in defaults:
            raise ValueError(
                f"the run schedules the weight decay, and {type(optimizer).__name__} has none"
            )
        for group, wd in zip(optimizer.param_groups, weight_decay, strict=True):
            group["weight_decay"] = wd


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
    seq and hash of the last entry of the log this job applied, the base lrs); `load_state_dict()`
    first checks that the checkpoint belongs here (the run, its entry in the run's live chain,
    the lrs the optimizer's state restored; a `CheckpointMismatch` says which, or a warning
    with `on_mismatch="warn"`; docs/client.md "Checkpoints bound to the log"), then restores it and
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

    **More than the lr.** A run whose policy schedules the momentum or the weight decay too
    (`one_cycle@2`, `cyclic@2`: torch's `cycle_momentum`, Megatron's weight decay ramp) has
    them written into the optimizer's groups at every step with the lrs, as torch's OneCycleLR
    and CyclicLR do: the momentum into `betas[0]` (Adam, AdamW) or `momentum` (SGD), the weight
    decay into `weight_decay` (see `apply_extras`). While the service is away the last ones
    applied stand.

    **Samples or tokens as the clock.** With `tokens_per_step` (or `samples_per_step`) the
    run is created with `clock="tokens"` (`"samples"`): its steps are the tokens consumed so
    far, and its policy's horizons are in tokens. Give the tokens of one optimizer step (the
    global batch: every rank reads the same position), a number or, for variable-length
    batches, a callable asked once at each `step()` for the step just made (e.g.
    `lambda: int(batch["attention_mask"].sum())`). `position` is the tokens consumed so far: it
    is what `observe` posts as the step and where the lrs are read, so a batch-size change does
    not bend the schedule. `last_epoch` still counts optimizer steps; `state_dict()` carries the
    position, so a resume continues it. A run whose clock is not the scheduler's is a
    `ValueError` (e.g. a run counting tokens opened without `tokens_per_step`), and so is a
    count that is not a positive integer.

    **Elastic jobs.** With `scaling={"rule": "linear", "by": "world_size", "base": 8}` (the
    optimizer's lrs are tuned for 8 ranks) and `world_size=dist.get_world_size()`, the run
    rescales its rates for the job's size at every start and resume (a restart by an elastic
    launcher on fewer or more ranks), from that step on, as a `scale` entry in its log.
    `resize()` does it mid-run.

    **Ranks.** With `as_rank=(rank, world_size)` this process is that rank of a data-parallel
    job: its `observe` is the rank's report (an aggregated run: each rank posts its local
    metric, one decision from their mean), and each report acknowledges the lrs the optimizer
    actually trained with at the step last decided (captured at that step's optimizer step)
    as a hash; the service flags a rank whose lrs differ in every rank's answer (logged here
    as a warning) and in the run's summary (docs/agreement.md). `acknowledge()` does it alone,
    for the ranks of a leader-mode job that only read.

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
        on_mismatch: OnMismatch = "raise",
        as_rank: tuple[int, int] | None = None,
        samples_per_step: PerStep | None = None,
        tokens_per_step: PerStep | None = None,
        guard: Mapping[str, Any] | None = None,
        restore: Callable[[str], None] | None = None,
    ) -> None:
        if on_mismatch not in ("raise", "warn"):
            raise ValueError(f'on_mismatch must be "raise" or "warn", got {on_mismatch!r}')
        check_rank(as_rank)
        self.clock = clock_of(samples_per_step, tokens_per_step)
        self._per_step = tokens_per_step if tokens_per_step is not None else samples_per_step
        if self._per_step is not None and not callable(self._per_step):
            self._per_step = count_of(self._per_step, self.clock, "")
        self._position = 0  # samples or tokens consumed (a clocked run)
        self._stride = self._per_step if isinstance(self._per_step, int) else 1
        self.client = client
        self.on_mismatch = on_mismatch
        self.as_rank = as_rank
        self._ack_due: tuple[int, int] | None = None  # (step, seq): its lrs to capture
        self._ack: Applied | None = None  # what the next observation acknowledges
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
        self._seq: int | None = None  # the seq of the entry `_head` is the hash of
        self._rewind_due: int | None = None  # a resume's rewind the service was away for
        self._fetches_before = 0
        base = [_as_float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.run = self._open(run_id, policy, version, params, metric, base)
        check_clock(self.run, self.clock)
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
        clock = None if self.clock == "steps" else self.clock  # (steps: the body as it was)
        try:
            return self.client.create_run(
                run_id, policy, version, params, base, metric, self._labels,
                scaling=self._scaling, clock=clock, guard=self._guard,
            )  # fmt: skip
        except ConflictError:
            # A restart whose optimizer already has the groups added mid-run: the derived run.
            existing = self.client.get_run(run_id)
            check_clock(existing, self.clock)
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
    def position(self) -> int:
        """The run's step now: the training step (`last_epoch`) in a run counting steps, the
        samples or tokens consumed so far in a run counting those."""
        return self.last_epoch if self._per_step is None else self._position

    def position_of(self, step: int) -> int:
        """The run's step at training `step`: `step` in a run counting steps, `step` times the
        count in a run clocked in samples or tokens with a constant count (a callable's steps
        are not known afterwards: a `ValueError`; the scheduler's `state_dict()` holds them)."""
        per = self._per_step
        if per is None:
            return step
        if callable(per):
            raise ValueError(
                f"run {self.run_id!r} counts {self.clock} with a callable {self.clock}_per_step: "
                f"the {self.clock} consumed by step {step} are not known; resume from the "
                "scheduler's state_dict() (or give resume position=)"
            )
        return step * per

    def _consumed(self) -> int:
        """What the optimizer step just made consumed (asks a callable)."""
        per = self._per_step
        if callable(per):
            n = count_of(per(), self.clock, " (the callable)")
            self._stride = n  # the next steps are read this far apart
            return n
        assert per is not None
        return per

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
        self._seq = run.last_seq if run.head_hash is not None else None

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
        return list(self._cursor.at(step, self._stride))

    def get_lr(self) -> list[float | torch.Tensor]:
        """The run's rates at the current step (`position`), one per param group. Writes
        what the run schedules beside them (momentum, weight decay) into the optimizer, as
        torch's CyclicLR.get_lr does: torch's step() writes only the lrs it returns."""
        lrs = self._lrs(self.position)
        self._apply_extras()
        return list(lrs)

    def _apply(self) -> None:
        lrs = self._lrs(self.position)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._apply_extras()
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
            for g in self.optimizer.param_groups
        ]

    def _saw(self, entry: Decision | None) -> None:
        """`entry` (an answer's entry of the chain) is now the last this job applied."""
        if entry is not None and not getattr(entry, "provisional", False):  # (no hash then)
            self._head, self._seq = entry.hash, entry.seq

    def _applied(self) -> list[float]:
        """The lrs the optimizer holds, as applied: a tensor lr holding the run's rate rounded
        to its dtype counts as that rate (docs/agreement.md); any other value as itself."""
        decided = self._cursor.at(self.position, self._stride)
        held = [g["lr"] for g in self.optimizer.param_groups]
        if len(held) != len(decided):
            return [_as_float(h) for h in held]
        return [
            x if _as_float(h) == _held(x, h) else _as_float(h)
            for h, x in zip(held, decided, strict=True)
        ]

    def _apply_extras(self) -> None:
        extras = self._cursor.extras_at(self.position)
        if extras:
            apply_extras(self.optimizer, extras)

    def _before_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._rewind_due is not None:
            self._rewind(self._rewind_due)
        if self._ack_due is not None:  # the lrs this step trains with: what was applied
            step, seq = self._ack_due
            if self.position == step:
                self._ack = Applied.of(step, seq, self._applied())
            self._ack_due = None
        if self._size_due:  # a restart without a checkpoint: from where the run stands
            try:
                run = self.client.get_run(self.run_id)
            except ServiceUnavailableError as exc:
                logger.warning("run %r: the job's size is not reported yet: %s", self.run_id, exc)
            else:
                since = max(self.position, run.last_step or 0, run.scale.get("step") or 0)
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
        if self._per_step is not None and self._step_count > 0:  # (not torch's initial step)
            self._position += self._consumed()
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
            if self._per_step is not None:  # each step advanced consumed its count
                self._position += sum(self._consumed() for _ in range(step - self.last_epoch))
            self._step_count += 1
            self.last_epoch = step
        self._apply()  # again at the same step too: a trainer's own scheduler may have written

    def observe(self, value: SupportsFloat, step: int | None = None) -> Decision:
        """Post the metric `value` (a float or a 0-dim tensor; NaN and inf are fine) at the
        current step (or `step`; in a run clocked in samples or tokens, the current `position`
        or a position), apply the rates it leads to, and return the decision."""
        at = self.position if step is None else step
        self._check_groups()
        if self._rewind_due is not None:  # before anything the rewind would supersede
            self._rewind(self._rewind_due)
        if self.as_rank is None:
            decision = self.client.observe(self.run_id, at, float(value))
        else:
            rank, world = self.as_rank
            decision = self.client.observe(
                self.run_id, at, float(value), rank, world, applied=self._ack
            )
            warn_disagreements(self.run_id, at, decision.disagreements)
        self.last_decision = decision
        self._observed_step = at
        self._saw(decision)
        self._cursor.observed()
        logger.info(
            "run %r step %d: %s %r -> %s %s: %s",
            self.run_id, at, self.run.metric or "metric", float(value), decision.action,
            list(decision.lrs), decision.reason,
        )  # fmt: skip
        if decision.action == "rollback" and decision.rollback is not None:
            return self._rolled_back(decision)
        self._apply()
        if self.as_rank is not None and not getattr(decision, "provisional", False):
            self._ack_due, self._ack = (at, decision.seq), None
        return decision

    def acknowledge(self) -> Acknowledged:
        """Acknowledge the lrs the optimizer holds for the current step (POST /applied; needs
        `as_rank`): for a rank that reads the run's lrs and posts nothing (leader mode). Call
        it after an optimizer step of a decided step; the answer says whether they agree and
        lists the run's disagreeing ranks (docs/agreement.md)."""
        if self.as_rank is None:
            raise ValueError("acknowledge() needs the scheduler's as_rank=(rank, world_size)")
        step = self.position
        seq = self.client.lr_at(self.run_id, step).seq or 0
        answer = self.client.acknowledge(
            self.run_id, *self.as_rank, Applied.of(step, seq, self._applied())
        )
        warn_disagreements(self.run_id, step, answer.disagreements)
        return answer

    def _rolled_back(self, decision: Decision) -> Decision:
        """The run rolled back to a checkpoint (and is rewound to its step): go on from that
        step with the run's rates, and restore the checkpoint (or ask the loop to)."""
        assert decision.rollback is not None
        target = decision.rollback["checkpoint"]
        step, ref = int(target["step"]), str(target["ref"])
        self._observed_step = step
        # the rewind after the rollback is the head: asked for when needed
        self._head, self._seq = None, None
        if self._per_step is None:
            self.last_epoch = step
        else:  # a position: the optimizer's step count stands until restore() loads its own
            self._position = step
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
        step, the last step observed, the seq and hash of the last entry of the run's chain
        this job applied (None before any: its `head_hash` is then the client's), the base
        lrs; the clock and the position (the samples or tokens consumed; the step in a run
        counting steps)."""
        return {
            "lrpilot": STATE_VERSION,
            "run_id": self.run_id,
            "root_run_id": self.root_run_id,
            "last_epoch": self.last_epoch,
            "observed_step": self._observed_step,
            "seq": self._seq,
            "head_hash": self._head if self._seq is not None else self.head_hash(),
            "base_lrs": [float(x) for x in self.run.base_lrs],
            "_step_count": self._step_count,
            "clock": self.clock,
            "position": self.position,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint: its run and step, the run rewound to it (see the class
        docstring), the step's rates applied to the optimizer. First the checkpoint's binding
        to the log is checked (`CheckpointMismatch`, or a warning with `on_mismatch="warn"`):
        its run is this scheduler's, the entry it was saved under is in the run's live chain,
        and lrs the optimizer's state restored are the ones the run decided for its step."""
        if state_dict.get("lrpilot") != STATE_VERSION:
            raise ValueError("not an LrpilotScheduler state_dict (no 'lrpilot' version 1)")
        step = int(state_dict["last_epoch"])
        seq, head = state_dict.get("seq"), state_dict.get("head_hash")
        clock = state_dict.get("clock", "steps")
        if clock != self.clock:
            raise ValueError(
                f"the checkpoint's scheduler counted {clock}, this one counts {self.clock}"
            )
        if state_dict["root_run_id"] != self.root_run_id:
            self._mismatch(
                "run",
                f"the checkpoint (step {step}) is of run {state_dict['root_run_id']!r}, this "
                f"scheduler's is {self.root_run_id!r}",
            )
            seq = head = None  # warned: resume this run at the checkpoint's step
        elif state_dict["run_id"] != self.run_id:
            self._switch(self.client.get_run(state_dict["run_id"]))
        if seq is not None and head is not None:
            self._check_head(int(seq), str(head), step)
        # what the optimizer holds now: restored from its own checkpoint, unless it is still
        # what this scheduler last wrote (the optimizer's state was not loaded: nothing to check)
        held = [g["lr"] for g in self.optimizer.param_groups]
        restored = [_as_float(x) for x in held]
        written = getattr(self, "_last_lr", None)
        untouched = written is not None and _same_lrs(held, [_as_float(x) for x in written])
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        position = state_dict.get("position")
        at, _ = self._resumed(
            step, state_dict.get("observed_step"), head,
            int(seq) if seq is not None and head is not None else None,
            None if position is None else int(position),
        )  # fmt: skip
        # the lrs of the checkpoint's time: before a resize to the job's size now
        checkable = self._rewind_due is None and not self._cursor.provisional
        if not untouched and checkable:
            decided = self._cursor.at(at, self._stride)
            if not _same_lrs(held, decided):
                self._mismatch(
                    "lrs",
                    f"the optimizer's restored lrs {restored} at step {step} are not the lrs "
                    f"{list(decided)} run {self.run_id!r} decided for that step (an edited "
                    "checkpoint, or the optimizer of another one); the run's lrs are applied",
                )
        if self._size is not None:  # a rewind restores the size of the checkpoint's time
            self._report_size(at)

    def _mismatch(self, what: str, detail: str) -> None:
        error = CheckpointMismatch(what, detail)
        if self.on_mismatch == "raise":
            raise error
        logger.warning("run %r: %s (on_mismatch='warn': training goes on)", self.run_id, error)

    def _check_head(self, seq: int, head: str, step: int) -> None:
        """The checkpoint's entry (seq, hash) is in this run's live chain: one request (GET
        /decisions from that seq, the live branch), two when it is not. The service away:
        a warning, and the load goes on (a training loop never dies because lrpilot is away)."""
        run_id = self.run_id
        try:
            live = self.client.decisions(run_id, after=seq - 1, limit=1, superseded=False).items
            if live and live[0].seq == seq and live[0].hash == head:
                return
            anywhere = self.client.decisions(run_id, after=seq - 1, limit=1).items
        except ServiceUnavailableError as exc:
            logger.warning(
                "run %r: the checkpoint's entry (seq %d) was not checked against the log: %s",
                run_id, seq, exc,
            )  # fmt: skip
            return
        entry = anywhere[0] if anywhere and anywhere[0].seq == seq else None
        if entry is not None and entry.hash == head:
            where = (
                f"is on a branch of run {run_id!r} since rewound (superseded): a later resume "
                "went back before it"
            )
        elif entry is not None:
            where = f"is not in run {run_id!r}'s chain (its entry {seq} has hash {entry.hash})"
        else:
            where = f"is not in run {run_id!r}'s chain (it has no entry {seq})"
        saved = f"the checkpoint (step {step}) was saved under entry {seq} {head}"
        self._mismatch("head", f"{saved}, which {where}")

    def resume(
        self,
        step: int,
        observed_step: int | None = None,
        *,
        head: str | None = None,
        seq: int | None = None,
        position: int | None = None,
    ) -> bool:
        """Continue at training `step` of a checkpoint: rewind the run so that its state is
        what it was when the checkpoint was saved, and apply the step's rates. The decisions
        at steps up to `step` are kept, the one at `step` itself only if the checkpoint had
        posted it (`observed_step == step`): an evaluation at `step` made after the checkpoint
        is superseded, so the resumed job can post it again. True if the run was rewound.

        In a run clocked in samples or tokens, `position` is what the checkpoint had consumed
        (its `state_dict()` says; with a constant count it may be left out: `step` times the
        count), and `observed_step` a position too."""
        at, rewound = self._resumed(step, observed_step, head, seq, position)
        if self._size is not None:  # a rewind restores the size of the checkpoint's time
            self._report_size(at)
        return rewound

    def _resumed(
        self,
        step: int,
        observed_step: int | None,
        head: str | None,
        seq: int | None,
        position: int | None = None,
    ) -> tuple[int, bool]:
        """`resume` but for the job's size, which the caller reports then: the run's step
        resumed at (the position, in a run clocked in samples or tokens), and whether the run
        was rewound."""
        last_epoch = step
        if self._per_step is not None:
            self._position = step = self.position_of(step) if position is None else position
        to_step = step if observed_step == step else step - 1
        self._head, self._seq = head, seq
        self.last_epoch = last_epoch
        rewound = self._rewind(to_step, apply=False) if to_step >= 0 else False
        self._observed_step = observed_step
        self._cursor.reset()
        self._apply()
        return step, rewound

    def _rewind(self, to_step: int, *, apply: bool = True) -> bool:
        """Rewind the run to `to_step` (and, `apply`, apply the rates it leaves); while the
        service is away, training goes on and the rewind is done before the next optimizer
        step or observation."""
        try:
            answer = self.client.rewind(self.run_id, to_step)
        except ServiceUnavailableError as exc:
            self._rewind_due = to_step
            logger.warning("run %r: not rewound to step %d yet: %s", self.run_id, to_step, exc)
            return False
        self._rewind_due = None
        if answer.rewound and answer.decision is not None:
            logger.info(
                "run %r: resumed at step %d: rewound to step %d (%s)",
                self.run_id, self.last_epoch, to_step, answer.decision.reason,
            )  # fmt: skip
            self._saw(answer.decision)
            if apply:
                self._cursor.reset()
                self._apply()
        return answer.rewound

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
            self._saw(answer.decision)
            logger.info("run %r step %d: %s", self.run_id, step, answer.decision.reason)
            self._cursor.reset()
            self._apply()

    def resize(self, world_size: int | None = None, batch_size: int | None = None) -> None:
        """The job's new size (exactly one of `world_size` and the global `batch_size`, as the
        run's scaling rule counts) from the current step on: the run rescales its rates (a
        `scale` entry in its log) and the optimizer gets them at once. The constructor's
        `world_size`/`batch_size` does this at every start and resume, which is what an elastic
        launcher's restart needs. (A run clocked in tokens: give the scheduler the new
        `tokens_per_step` too, `set_per_step`; the schedule in tokens does not bend.)"""
        self._size = _size(world_size, batch_size)
        self._report_size(self.position)

    def set_per_step(self, count: PerStep) -> None:
        """What each optimizer step consumes from now on, in a run clocked in samples or
        tokens (a batch-size change; a number or a callable, as given to the constructor)."""
        if self._per_step is None:
            raise ValueError(
                f"run {self.run_id!r} counts steps: samples or tokens per step do not apply"
            )
        self._per_step = count if callable(count) else count_of(count, self.clock, "")
        if isinstance(self._per_step, int):
            self._stride = self._per_step

    def close(self) -> None:
        """Detach from the optimizer (its step pre-hook)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __repr__(self) -> str:
        lrs = [_as_float(x) for x in self._last_lr] if hasattr(self, "_last_lr") else []
        shown = ", ".join(f"{x:.6g}" if math.isfinite(x) else str(x) for x in lrs)
        where = "" if self._per_step is None else f", {self.clock}={self._position}"
        return (
            f"LrpilotScheduler(run_id={self.run_id!r}, step={self.last_epoch}{where}, "
            f"lrs=[{shown}])"
        )
