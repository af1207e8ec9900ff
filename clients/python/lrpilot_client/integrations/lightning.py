"""`LrpilotCallback`: a Lightning `Callback` that takes the learning rates from an lrpilot run
and reports each validation's metric to it.

```python
from lrpilot_client import Client
from lrpilot_client.integrations.lightning import LrpilotCallback

trainer = lightning.Trainer(callbacks=[LrpilotCallback(Client(URL), "vit-a", policy="plateau",
                                                       params={"patience": 2}, metric="val_loss")])
trainer.fit(model)            # the module logs "val_loss" (self.log) in its validation_step
```

Or return the scheduler from `configure_optimizers`, which Lightning then steps and checkpoints:

```python
def configure_optimizers(self):
    opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
    sched = LrpilotScheduler(opt, client, "vit-a", policy="plateau", metric="val_loss")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
# and Trainer(callbacks=[LrpilotCallback()]) to post the validations
```

Needs lightning and torch (`pip install 'lrpilot-client[lightning]'`).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl

from ._callback import SchedulerCallback
from ._common import logger
from .torch import LrpilotScheduler

__all__ = ["LrpilotCallback"]


class LrpilotCallback(SchedulerCallback, pl.Callback):
    """Applies the run's lrs at every training step and posts `metric` (default `val_loss`,
    a key of `trainer.callback_metrics`) after each validation (not the sanity check).

    - **The callback alone** (give `client`, `run_id` and the run's spec): when training starts
      it builds an `LrpilotScheduler` on the Trainer's (first) optimizer and writes the run's lrs
      of `trainer.global_step` into it before each batch. Its state (run, step, head hash) is the
      callback's state in Lightning's checkpoints, so `fit(ckpt_path=...)` from an older
      checkpoint rewinds the run (see `LrpilotScheduler.load_state_dict`).
      `configure_optimizers` should then return no scheduler of its own.
    - **The module's scheduler**: `configure_optimizers` returns an `LrpilotScheduler` with
      `"interval": "step"`; Lightning steps and checkpoints it, and `LrpilotCallback()` (no
      arguments) only posts the validations to it.

    **Guarded runs** (`guard=`, docs/guard.md): each checkpoint a `ModelCheckpoint` of the
    Trainer saves is declared (its file path is the ref), before the next training step or
    validation. On a rollback the callback loads that checkpoint into the running Trainer (the
    module's weights and the optimizers' state, through the Trainer's strategy), sets the
    Trainer's global step back to the checkpoint's, and `fit` goes on from there with the cut
    rates.

    When a decision is `stop` and `stop_training` is true, the callback sets
    `trainer.should_stop`. Every rank posts the same (synced) metric: the service dedupes them.
    In a job of more than one process (or with `as_rank=(rank, world_size)`), each posts it as
    its rank (`trainer.global_rank` of `trainer.world_size`) with an acknowledgement of the lrs
    its optimizer trained with at the step last decided; a rank that trained with other lrs is
    flagged in the answers (a warning; its own at once) and in the run's summary
    (docs/agreement.md).
    """

    owner = "the module's scheduler"
    default_metric = "val_loss"
    # Lightning restores callbacks before the optimizers exist: kept until on_train_start
    _restored: dict[str, Any] | None = None
    _declared: frozenset[tuple[int, str]] = frozenset()  # the saves declared (step, path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, LrpilotScheduler):
                if config.interval != "step":
                    logger.warning(
                        "run %r: the LrpilotScheduler steps every %s: give it \"interval\": "
                        "\"step\" for the run's rates at every training step",
                        config.scheduler.run_id, config.interval,
                    )  # fmt: skip
                self.scheduler, self.owned = config.scheduler, False
                return
        if self.client is None or self.run_id is None:
            raise ValueError(
                "LrpilotCallback() without a run needs configure_optimizers to return an "
                "LrpilotScheduler"
            )
        if not trainer.optimizers:
            raise ValueError("the Trainer has no optimizer")
        self.rank_of(trainer.global_rank, trainer.world_size)
        scheduler = self.build_scheduler(trainer.optimizers[0])
        if self._restored:
            scheduler.load_state_dict(self._restored)
            self._restored = None
        elif trainer.global_step > 0:
            scheduler.resume(
                trainer.global_step, observed_step=scheduler.position_of(trainer.global_step)
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._declare_saves(trainer)
        if self.owned and self.scheduler is not None:
            self.scheduler.step_to(trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._declare_saves(trainer)

    def _declare_saves(self, trainer: pl.Trainer) -> None:
        """A guarded run: declare what the Trainer's ModelCheckpoints saved since the last
        call. Lightning tells a callback that a checkpoint is being made (on_save_checkpoint)
        but not where it goes; each ModelCheckpoint keeps the path and step of its last save."""
        if self.scheduler is None or not self.scheduler.run.guard:
            return
        for saver in trainer.checkpoint_callbacks:
            path = getattr(saver, "_last_checkpoint_saved", "")
            step = getattr(saver, "_last_global_step_saved", 0)
            if path and (step, path) not in self._declared:
                self._declared |= {(step, path)}
                self.scheduler.checkpoint(step, str(path))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.scheduler is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logger.warning(
                "run %r step %d: no %r among the logged metrics %s: nothing posted",
                self.scheduler.run_id, trainer.global_step, self.metric,
                sorted(trainer.callback_metrics),
            )  # fmt: skip
            return
        if self.owned:
            self.scheduler.step_to(trainer.global_step)
        self._declare_saves(trainer)  # a save at the end of the training epoch, before this
        decision = self.observe(float(value), lambda ref: _load_in_place(trainer, ref))
        step = self.rolled_back_to(decision)
        if step is not None:
            _set_global_step(trainer, step)
        if decision.stop and self.stop_training:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        if self.owned and self.scheduler is not None:
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before the optimizers exist: applied in on_train_start
        self._restored = dict(state_dict) or None


def _load_in_place(trainer: pl.Trainer, ref: str) -> bool:
    """Load the Lightning checkpoint file `ref` into the running Trainer: the module's weights
    and the optimizers' state, as `fit(ckpt_path=...)` restores them (the loops' progress is
    left to `_set_global_step`: the loops are running)."""
    if not os.path.isfile(ref):
        logger.warning("checkpoint %r: no such file to load into the running Trainer", ref)
        return False
    checkpoint = trainer.strategy.load_checkpoint(ref)
    trainer.strategy.load_model_state_dict(checkpoint)
    trainer.strategy.load_optimizer_state_dict(checkpoint)
    logger.info("checkpoint %r loaded into the running Trainer (a rollback)", ref)
    return True


def _set_global_step(trainer: pl.Trainer, step: int) -> None:
    """The Trainer's global step back to `step`: it is the count of optimizer steps of the fit
    loop's progress, which a checkpoint's loops would restore (`max_steps` counts it too)."""
    loop = trainer.fit_loop.epoch_loop
    if trainer.lightning_module.automatic_optimization:
        total = loop.automatic_optimization.optim_progress.optimizer.step.total
    else:
        total = loop.manual_optimization.optim_step_progress.total
    total.ready = total.completed = step
