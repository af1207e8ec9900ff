"""`LrpilotCallback`: a Keras callback that sets the optimizer's learning rate from an lrpilot
run at every training step and posts `val_loss` at the end of each epoch.

```python
from lrpilot_client import Client
from lrpilot_client.integrations.keras import LrpilotCallback

model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
model.fit(x, y, validation_data=(xv, yv), epochs=50,
          callbacks=[LrpilotCallback(Client(URL), "mlp-a", params={"patience": 3})])
```

Needs keras 3 with any backend (`pip install 'lrpilot-client[keras]'`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from ..client import Client
from ..errors import NotFoundError, RollbackRequested, ServiceUnavailableError
from ..models import Applied, Decision, Run
from ._common import (
    DEFAULT_AHEAD,
    LrsCursor,
    PerStep,
    check_clock,
    check_rank,
    clock_of,
    count_of,
    logger,
    warn_disagreements,
)

__all__ = ["LrpilotCallback"]


class LrpilotCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Before every batch, assigns the run's lr of the optimizer's step (`optimizer.iterations`)
    to `model.optimizer.learning_rate` (a variable: keras holds it in its dtype, float32 by
    default, so the step uses the service's rate rounded to float32); at the end of every epoch,
    posts `logs[metric]` (default `val_loss`, so fit needs validation data) at that step and
    applies the decision at once. The rates come in blocks of `ahead` steps, as for
    `LrpilotScheduler`: one request per `ahead` steps, plus two per evaluation.

    The run is created when training begins, with the optimizer's learning rate as its one base
    lr (`policy=None`: use the existing run as it is; it must have one param group). A fit that
    starts with `optimizer.iterations` > 0 (a model restored from a checkpoint, whose optimizer
    holds the last rate applied) continues the existing run and rewinds it to that step, so
    decisions made after the checkpoint are superseded; the evaluation at that very step is
    kept. The optimizer's learning rate must be a plain value, not a
    `LearningRateSchedule` (the run is the schedule). A run that schedules the momentum or the
    weight decay too (`one_cycle@2`, `cyclic@2`) has them written into the optimizer's
    `beta_1` or `momentum` and `weight_decay` when the train step runs eagerly (see
    `_apply_extras`). When a decision is `stop` and
    `stop_training` is true, the callback sets `model.stop_training`.

    A fit after the first in the same process (a loop of `fit(epochs=1)`, a second training
    stage) goes on with the run as the previous fit began and the last known rates while the
    service is away, as the epochs do: its rewind to where this callback already is would change
    nothing. A first fit needs the service (the run is created or found), and so does a fit that
    begins before the last step this callback posted (a restored checkpoint: the run must be
    rewound first).

    With `tokens_per_step` (or `samples_per_step`; a number, or a callable asked once for each
    optimizer step made, before the next batch) the run counts tokens (samples): `position`
    is the tokens consumed, what is posted and where the rate is read, as for
    `LrpilotScheduler`. A fit that starts at iteration k > 0 in a new process takes k times a
    constant count (a callable's tokens are not known then: a `ValueError`).

    **Guarded runs** (`guard=`, docs/guard.md). After every `save_every`-th evaluation the
    callback keeps a copy of the model's weights and the optimizer's variables in memory (the
    `keep` newest) and declares it as a checkpoint (ref `keras-memory:step-N`). On a rollback it
    restores the copy the run names (weights, optimizer state, `optimizer.iterations`: the step)
    and applies the cut rate; the epochs go on counting, the steps go on from the checkpoint's.
    A rollback to a checkpoint this callback does not hold (declared by another process, or
    dropped) raises `RollbackRequested(step, ref)`.

    **Ranks** (`as_rank=(rank, world_size)`: this process is that rank of a data-parallel job,
    e.g. `(strategy.cluster_resolver.task_id, num_workers)`): each epoch's report is the rank's,
    and acknowledges as a hash the lr the optimizer trained the first batch of the step last
    decided with (whatever wrote it: read when the batch ends); the service flags a rank whose
    lr differs in the answers (logged as a warning; its own at once) and in the run's summary
    (docs/agreement.md).
    """

    def __init__(
        self,
        client: Client,
        run_id: str,
        policy: str | None = "plateau",
        version: int = 1,
        params: Mapping[str, Any] | None = None,
        metric: str = "val_loss",
        labels: Mapping[str, str] | None = None,
        *,
        ahead: int = DEFAULT_AHEAD,
        stop_training: bool = True,
        samples_per_step: PerStep | None = None,
        tokens_per_step: PerStep | None = None,
        guard: Mapping[str, Any] | None = None,
        save_every: int = 1,
        keep: int = 2,
        as_rank: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if save_every < 1 or keep < 1:
            raise ValueError("save_every and keep must be at least 1")
        check_rank(as_rank)
        self.as_rank = as_rank
        self._ack_due: tuple[int, int] | None = None  # (step, seq): its lr to capture
        self._ack: Applied | None = None  # what the next report acknowledges
        self._batch_step = 0  # the run's step of the batch in progress
        self.clock = clock_of(samples_per_step, tokens_per_step)
        per = tokens_per_step if tokens_per_step is not None else samples_per_step
        self._per_step = per if per is None or callable(per) else count_of(per, self.clock, "")
        self._stride = self._per_step if isinstance(self._per_step, int) else 1
        self.position = 0  # the run's step: the iteration, or the samples or tokens consumed
        self._iteration: int | None = None  # the optimizer iteration `position` is of
        self.guard = dict(guard) if guard is not None else None
        self.save_every, self.keep = save_every, keep
        # a guarded run's checkpoints, in memory: ref -> (step, weights, optimizer variables)
        self._saved: dict[str, tuple[int, list[Any], list[Any]]] = {}
        self._evaluations = 0
        self.client = client
        self.run_id = run_id
        self.policy = policy
        self.version = version
        self.run_params = params  # (keras' Callback has its own `params`: fit's)
        self.metric = metric
        self.labels = labels
        self.stop_training = stop_training
        self.cursor = LrsCursor(client, run_id, ahead)
        self.last_decision: Decision | None = None
        self._assigned: float | None = None
        self._begun: Run | None = None  # the run as the last fit began, in this process
        self._warned_extras = False  # the run schedules extras a compiled step cannot take

    @property
    def fetches(self) -> int:
        """How many GET /lrs requests were made."""
        return self.cursor.fetches

    def _optimizer(self) -> Any:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("LrpilotCallback needs a compiled model (model.optimizer)")
        if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError(
                "the optimizer's learning rate is a LearningRateSchedule: give it a number, "
                "the lrpilot run is the schedule"
            )
        return optimizer

    def _step(self) -> int:
        """The run's step at the optimizer's iteration (the samples or tokens consumed, in a
        run counting those)."""
        iteration = int(keras.ops.convert_to_numpy(self._optimizer().iterations))
        per = self._per_step
        if per is None:
            self.position = iteration
        elif self._iteration is not None and iteration >= self._iteration:
            for _ in range(iteration - self._iteration):  # each optimizer step made
                if callable(per):
                    self._stride = count_of(per(), self.clock, " (the callable)")
                    self.position += self._stride
                else:
                    self.position += per
        elif callable(per) and iteration > 0:
            raise ValueError(
                f"run {self.run_id!r} counts {self.clock} with a callable {self.clock}_per_step: "
                f"the {self.clock} consumed by iteration {iteration} are not known in this "
                "process; give a constant count to resume"
            )
        else:
            self.position = iteration * per if isinstance(per, int) else 0
        self._iteration = iteration
        return self.position

    def _apply(self, step: int) -> None:
        lrs = self.cursor.at(step, self._stride)
        if len(lrs) != 1:
            raise ValueError(
                f"run {self.run_id!r} has {len(lrs)} param groups; a keras optimizer has one lr"
            )
        if lrs[0] != self._assigned:
            self._optimizer().learning_rate = lrs[0]
            self._assigned = lrs[0]
        extras = self.cursor.extras_at(step)
        if extras:
            self._apply_extras(extras)

    def _apply_extras(self, extras: Mapping[str, tuple[float, ...]]) -> None:
        """What the run schedules beside the lr: the momentum into `beta_1` (Adam, AdamW, ...)
        or `momentum` (SGD, RMSprop), the weight decay into `weight_decay`. Keras keeps those
        as plain numbers that a compiled train step reads once, when it is traced: they are
        written only when the step runs eagerly (`run_eagerly`, or the torch backend without
        `jit_compile`), else a warning says once that they are not applied."""
        model = self.model
        eager = bool(getattr(model, "run_eagerly", False)) or (
            keras.backend.backend() == "torch" and not getattr(model, "jit_compile", False)
        )
        if not eager:
            if not self._warned_extras:
                self._warned_extras = True
                logger.warning(
                    "run %r schedules %s, which a compiled keras train step cannot change: "
                    "not applied (compile with run_eagerly=True, or use the torch backend)",
                    self.run_id, " and ".join(sorted(extras)),
                )  # fmt: skip
            return
        optimizer = self._optimizer()
        momentum = extras.get("momentum")
        if momentum is not None:
            if hasattr(optimizer, "beta_1"):
                optimizer.beta_1 = momentum[0]
            elif getattr(optimizer, "momentum", 0.0):  # SGD builds its slots only if > 0
                optimizer.momentum = momentum[0]
            else:
                raise ValueError(
                    f"run {self.run_id!r} schedules the momentum, and the optimizer has no "
                    "beta_1 nor a momentum > 0 (give keras.optimizers.SGD momentum=0.9, say)"
                )
        weight_decay = extras.get("weight_decay")
        if weight_decay is not None:
            optimizer.weight_decay = weight_decay[0]

    def _run(self, step: int) -> Run:
        if self.policy is None:
            return self.client.get_run(self.run_id)
        if step > 0:  # resumed: the optimizer holds the last rate applied, not the base one
            try:
                return self.client.get_run(self.run_id)
            except NotFoundError:
                pass
        base = float(keras.ops.convert_to_numpy(self._optimizer().learning_rate))
        return self.client.create_run(
            self.run_id, self.policy, self.version, self.run_params, [base], self.metric,
            self.labels, clock=None if self.clock == "steps" else self.clock, guard=self.guard,
        )  # fmt: skip

    def _run_or_last(self, step: int) -> Run:
        """The run; while the service is away, the run as an earlier fit began, if any."""
        try:
            run = self._run(step)
        except ServiceUnavailableError as exc:
            if self._begun is None:
                raise
            logger.warning(
                "run %r: fit begins at step %d while lrpilot is unreachable: going on with the "
                "last known rates: %s", self.run_id, step, exc,
            )  # fmt: skip
            return self._begun
        self._begun = run
        return run

    def _rewind(self, step: int) -> None:
        try:
            rewound = self.client.rewind(self.run_id, step)
        except ServiceUnavailableError:
            last = self.last_decision
            if last is None or last.step > step:
                raise  # the job went back in time: the run must be rewound before it trains
            return  # this callback posted nothing past `step`: the rewind would change nothing
        if rewound.rewound and rewound.decision is not None:
            logger.info(
                "run %r: training resumed at step %d: %s",
                self.run_id, step, rewound.decision.reason,
            )  # fmt: skip

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        step = self._step()
        run = self._run_or_last(step)
        check_clock(run, self.clock)
        if len(run.base_lrs) != 1:
            raise ValueError(
                f"run {self.run_id!r} has {len(run.base_lrs)} param groups; "
                "a keras optimizer has one lr"
            )
        self._assigned = None
        self.cursor.reset()
        if step > 0:
            self._rewind(step)
        self._apply(step)

    def _save(self, step: int) -> None:
        """Keep the model's weights and the optimizer's state of `step`, and declare them."""
        ref = f"keras-memory:step-{step}"
        optimizer = self._optimizer()
        values = [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables]
        self._saved[ref] = (step, self.model.get_weights(), values)
        while len(self._saved) > self.keep:
            del self._saved[next(iter(self._saved))]  # the oldest
        try:
            self.client.declare_checkpoint(self.run_id, step, ref)
        except ServiceUnavailableError as exc:
            logger.warning("run %r: checkpoint %r not declared: %s", self.run_id, ref, exc)

    def _restore(self, decision: Decision) -> int:
        """Restore the checkpoint a rollback names: the weights, the optimizer's state and its
        step; the step it is back at."""
        assert decision.rollback is not None
        target = decision.rollback["checkpoint"]
        step, ref = int(target["step"]), str(target["ref"])
        saved = self._saved.get(ref)
        if saved is None:
            raise RollbackRequested(step, ref, decision)
        _, weights, values = saved
        self.model.set_weights(weights)
        for variable, value in zip(self._optimizer().variables, values, strict=True):
            variable.assign(value)
        # what the run left behind (a later checkpoint) is of a branch it no longer has
        self._saved = {r: s for r, s in self._saved.items() if s[0] <= step}
        self._assigned = None
        self.cursor.reset()
        logger.info("run %r: %s: restored %r", self.run_id, decision.reason, ref)
        return step

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._batch_step = self._step()
        self._apply(self._batch_step)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._ack_due is not None:  # the lr the batch trained with, whatever wrote it
            due, seq = self._ack_due
            if self._batch_step == due:
                self._ack = Applied.of(due, seq, [self._applied(due)])
            self._ack_due = None

    def _applied(self, step: int) -> float:
        """The optimizer's lr as applied: a variable holding the run's rate rounded to its
        dtype counts as that rate (docs/agreement.md); any other value as itself."""
        held = self._optimizer().learning_rate
        value = float(keras.ops.convert_to_numpy(held))
        [decided] = self.cursor.at(step, self._stride)
        as_held = float(keras.ops.convert_to_numpy(keras.ops.cast(decided, held.dtype)))
        return decided if value == as_held else value

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = logs or {}
        step = self._step()
        if self.metric not in logs:
            logger.warning(
                "run %r step %d: no %r in the epoch's logs %s (validation data?): nothing posted",
                self.run_id, step, self.metric, sorted(logs),
            )  # fmt: skip
            return
        value = float(logs[self.metric])
        if self.as_rank is None:
            decision = self.client.observe(self.run_id, step, value)
        else:
            rank, world = self.as_rank
            decision = self.client.observe(self.run_id, step, value, rank, world, applied=self._ack)
            self._ack = None
            warn_disagreements(self.run_id, step, decision.disagreements)
        self.last_decision = decision
        self.cursor.observed()
        if decision.action == "rollback" and decision.rollback is not None:
            step = self._restore(decision)
        elif self.guard is not None:
            self._evaluations += 1
            if self._evaluations % self.save_every == 0:
                self._save(step)
        self._apply(step)
        provisional = getattr(decision, "provisional", False)  # (no seq then)
        if self.as_rank is not None and decision.action != "rollback" and not provisional:
            self._ack_due = (step, decision.seq)
        logger.info(
            "run %r step %d (epoch %d): %s %r -> %s %s: %s",
            self.run_id, step, epoch, self.metric, value, decision.action, list(decision.lrs),
            decision.reason,
        )  # fmt: skip
        if decision.stop and self.stop_training:
            self.model.stop_training = True
