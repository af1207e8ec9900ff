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

    When a decision is `stop` and `stop_training` is true, the callback sets
    `trainer.should_stop`. Every rank posts the same (synced) metric: the service dedupes them.
    """

    owner = "the module's scheduler"
    default_metric = "val_loss"
    # Lightning restores callbacks before the optimizers exist: kept until on_train_start
    _restored: dict[str, Any] | None = None

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
        if self.owned and self.scheduler is not None:
            self.scheduler.step_to(trainer.global_step)

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
        decision = self.scheduler.observe(float(value))
        if decision.stop and self.stop_training:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        if self.owned and self.scheduler is not None:
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before the optimizers exist: applied in on_train_start
        self._restored = dict(state_dict) or None
