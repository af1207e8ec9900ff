"""`LrpilotCallback`: a transformers `TrainerCallback` that takes the Trainer's learning rates
from an lrpilot run and reports its evaluations to it.

```python
from lrpilot_client import Client
from lrpilot_client.integrations.transformers import LrpilotCallback

args = TrainingArguments(..., eval_strategy="steps", eval_steps=500, lr_scheduler_type="constant")
trainer = Trainer(model, args, ..., callbacks=[LrpilotCallback(Client(URL), "bert-a",
                  policy="plateau", params={"patience": 2}, metric="eval_loss")])
```

Or give the Trainer the scheduler itself, which it then steps, saves with each checkpoint and
logs (`learning_rate`):

```python
scheduler = LrpilotScheduler(optimizer, client, "bert-a", policy="plateau", metric="eval_loss")
trainer = Trainer(..., optimizers=(optimizer, scheduler), callbacks=[LrpilotCallback()])
```

Needs transformers and torch (`pip install 'lrpilot-client[transformers]'`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

from ._callback import SchedulerCallback
from ._common import logger
from .torch import LrpilotScheduler

__all__ = ["LrpilotCallback"]

# the callback's own scheduler's state, in each checkpoint directory (the Trainer saves its own
# scheduler, not the callback's)
STATE_FILE = "lrpilot_scheduler.json"


class LrpilotCallback(SchedulerCallback, TrainerCallback):
    """Sets the optimizer's lrs to the run's at every training step, and posts each
    evaluation's `metric` (default `eval_loss`, a key of the Trainer's eval metrics).

    Two ways to use it:

    - **The callback alone** (give `client`, `run_id` and the run's spec): at the start of
      training it builds an `LrpilotScheduler` on the Trainer's optimizer (base lrs: the
      optimizer's initial lrs, i.e. `learning_rate`) and, before each step, writes the run's lrs of
      `state.global_step` into the optimizer, over whatever the Trainer's own scheduler wrote
      (use `lr_scheduler_type="constant"` so that it is a no-op; the Trainer's logged
      `learning_rate` is that scheduler's). Its scheduler's state (run, step, the chain's head)
      is saved beside each checkpoint (`lrpilot_scheduler.json`): a run resumed from a
      checkpoint at global step g is checked against it (`CheckpointMismatch`, as
      `LrpilotScheduler.load_state_dict`) and rewound to g (the evaluation at g, which the
      Trainer makes before it saves, is kept).
    - **The scheduler as the Trainer's** (`Trainer(optimizers=(optimizer, LrpilotScheduler(...)))`,
      and `LrpilotCallback()` with no arguments): the Trainer steps it after every optimizer step,
      saves it in each checkpoint (resuming rewinds the run, see `LrpilotScheduler`) and logs its
      lrs; the callback only posts the evaluations.

    **Guarded runs** (`guard=`, docs/guard.md): each checkpoint the Trainer saves is declared
    (its directory is the ref). On a rollback the callback loads that checkpoint's model
    weights (and `optimizer.pt`, when saved) into the Trainer's model and optimizer in place,
    sets the Trainer's global step back to the checkpoint's, and training goes on in the same
    `train()` with the cut rates. A checkpoint it cannot load in place (sharded weights, an
    adapter, FSDP or DeepSpeed state) raises `RollbackRequested(step, ref)` out of
    `trainer.train()`: resume with `trainer.train(resume_from_checkpoint=ref)` (the run is
    rewound to that step already, its rates cut).

    After each evaluation the decision is `last_decision`; when it is `stop` and `stop_training`
    is true, the callback ends training (`control.should_training_stop`). Every process of a
    distributed job posts the same gathered metric: the service dedupes them. In a job of more
    than one process (or with `as_rank=(rank, world_size)`), each posts it as its rank
    (`args.process_index` of `args.world_size`) with an acknowledgement of the lrs it applied at
    the step last decided; a rank that trained with other lrs is flagged in the answers (a
    warning; its own at once) and in the run's summary (docs/agreement.md).
    """

    owner = "the Trainer's scheduler"
    default_metric = "eval_loss"

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        given = kwargs.get("lr_scheduler")
        given = getattr(given, "scheduler", given)  # accelerate's AcceleratedScheduler
        if isinstance(given, LrpilotScheduler):
            if self.run_id is not None and self.run_id != given.root_run_id:
                raise ValueError(
                    f"the Trainer's LrpilotScheduler is of run {given.root_run_id!r}, "
                    f"the callback's is {self.run_id!r}"
                )
            self.scheduler, self.owned = given, False
            return
        if self.client is None or self.run_id is None:
            raise ValueError(
                "LrpilotCallback() without a run needs the Trainer's lr_scheduler to be an "
                "LrpilotScheduler (Trainer(optimizers=(optimizer, LrpilotScheduler(...))))"
            )
        optimizer = kwargs.get("optimizer")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"the Trainer's optimizer is not a torch optimizer: {optimizer!r}")
        scheduler = self.scheduler
        if scheduler is None or scheduler.optimizer is not optimizer:
            self.rank_of(args.process_index, args.world_size)
            scheduler = self.build_scheduler(optimizer)
        self.owned = True
        if state.global_step > 0:
            saved = _saved_state(args, state)
            if saved is not None:  # checked against the run's log (CheckpointMismatch)
                scheduler.load_state_dict(saved)
            else:
                scheduler.resume(
                    state.global_step, observed_step=scheduler.position_of(state.global_step)
                )

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.owned and self.scheduler is not None:
            self.scheduler.step_to(state.global_step)

    # after a step too: the Trainer's own scheduler has just written its lr, and the run's go
    # back before a save, so that a checkpoint's optimizer holds its step's (checked on resume)
    on_step_end = on_step_begin

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.scheduler is None:
            return
        if not metrics or self.metric not in metrics:
            logger.warning(
                "run %r step %d: no %r among the evaluation's metrics %s: nothing posted",
                self.scheduler.run_id, state.global_step, self.metric, sorted(metrics or {}),
            )  # fmt: skip
            return
        if self.owned:
            self.scheduler.step_to(state.global_step)
        elif self.scheduler.last_epoch != state.global_step:
            logger.warning(
                "run %r: the scheduler is at step %d, the Trainer at %d: is it stepped "
                "once per optimizer step?",
                self.scheduler.run_id, self.scheduler.last_epoch, state.global_step,
            )  # fmt: skip
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        decision = self.observe(
            metrics[self.metric], lambda ref: _load_in_place(ref, model, optimizer)
        )
        step = self.rolled_back_to(decision)
        if step is not None:
            # the Trainer counts on from the checkpoint's step; the damaged weights of this
            # step are not saved (a save due now would overwrite the checkpoint's directory)
            state.global_step = step
            control.should_save = False
        if decision.stop and self.stop_training:
            control.should_training_stop = True

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """The checkpoint the Trainer just saved: the callback's scheduler's state goes beside it
        (`lrpilot_scheduler.json`: the run, the step, the seq and hash of the chain's head),
        which a resume from it checks against the run's log. A guarded run: the checkpoint is
        declared (its directory is the ref), which a rollback may go back to; every process
        declares it, the service counts it once. (A run without a guard: its log stays as
        it was.)"""
        if self.scheduler is None:
            return
        ref = os.path.join(str(args.output_dir), f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if self.owned and state.is_world_process_zero and os.path.isdir(ref):
            with open(os.path.join(ref, STATE_FILE), "w", encoding="utf-8") as out:
                json.dump(self.scheduler.state_dict(), out)
        if self.scheduler.run.guard:
            self.scheduler.checkpoint(state.global_step, ref)


def _saved_state(args: TrainingArguments, state: TrainerState) -> dict[str, Any] | None:
    """The callback's scheduler state saved with the checkpoint the Trainer resumed from: the
    Trainer does not tell a callback which one, so `args.resume_from_checkpoint` if set, else
    the Trainer's own name for the checkpoint of the step it resumed at. None: not found (a
    checkpoint saved before the callback saved its state, or one moved elsewhere)."""
    named = os.path.join(str(args.output_dir), f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
    for where in (getattr(args, "resume_from_checkpoint", None), named):
        if isinstance(where, str) and os.path.isfile(path := os.path.join(where, STATE_FILE)):
            with open(path, encoding="utf-8") as saved:
                loaded: dict[str, Any] = json.load(saved)
            if int(loaded.get("last_epoch", -1)) == state.global_step:
                return loaded
    return None


def _load_in_place(ref: str, model: Any, optimizer: Any) -> bool:
    """Load the checkpoint directory `ref`'s model weights (one file, as the Trainer saves an
    unsharded model) and its `optimizer.pt` into the running `model` and `optimizer`. False
    (with the reason logged) when the checkpoint is not one this can load in place."""
    weights = next(
        (path for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
         if os.path.isfile(path := os.path.join(ref, name))),
        None,
    )  # fmt: skip
    if weights is None or not isinstance(model, torch.nn.Module):
        logger.warning(
            "checkpoint %r: no %s or %s to load into the running model (sharded, an adapter, "
            "FSDP or DeepSpeed): resume with trainer.train(resume_from_checkpoint=%r)",
            ref, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, ref,
        )  # fmt: skip
        return False
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(weights, device="cpu")
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    # not strict: the Trainer saves tied weights once, as from_pretrained expects
    model.load_state_dict(state, strict=False)
    saved_optimizer = os.path.join(ref, "optimizer.pt")
    if optimizer is not None and os.path.isfile(saved_optimizer):
        saved = torch.load(saved_optimizer, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved)
    logger.info("checkpoint %r loaded into the running Trainer (a rollback)", ref)
    return True
