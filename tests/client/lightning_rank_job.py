"""One rank of a Lightning DDP job, as its own process (tests/client/test_agreement_callbacks.py):
``python -m tests.client.lightning_rank_job RANK WORLD JOBS``, JOBS a JSON list of {"url",
"run", "tamper": [STEP, WHO] or null}, with MASTER_ADDR and MASTER_PORT in the environment.

Lightning is told it is local rank RANK of WORLD processes started outside it (LOCAL_RANK, as a
launcher would), so the ranks form a real gloo process group on 127.0.0.1 and the callback takes
its rank from the Trainer (no `as_rank` given). For each job's run (a run that exists, not
aggregated: leader mode, every rank posts the same synced metric) a small model trains 30 steps,
validating every 10. From step STEP on, rank WHO doubles its lr before each batch, after the
callback wrote the run's: the bug the acknowledgements exist to catch. Each answer is printed
as a JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

from lrpilot_client import Client
from lrpilot_client.integrations.lightning import LrpilotCallback


class Tiny(pl.LightningModule):
    def __init__(self, tamper: int | None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.tamper = tamper

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # (a module's hook runs after the callbacks': the run's lr is written already)
        if self.tamper is not None and self.trainer.global_step >= self.tamper:
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] *= 2

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", 1.0, sync_dist=True)  # a plateau from the start: the run reduces

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def train(client: Client, job: dict[str, Any], rank: int, world: int) -> None:
    tamper = job["tamper"]
    mine = tamper[0] if tamper is not None and tamper[1] == rank else None
    torch.manual_seed(rank)
    data = torch.utils.data.TensorDataset(torch.randn(30 * world, 4), torch.randn(30 * world, 1))
    callback = LrpilotCallback(client, job["run"], policy=None)
    answers: list[dict[str, Any]] = []

    class Record(pl.Callback):  # after the lrpilot callback: its decision of this validation
        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            decision = callback.last_decision
            if decision is not None and not trainer.sanity_checking:
                flags = [dict(d) for d in decision.disagreements]
                answers.append({"url": job["url"], "run": job["run"], "rank": rank,
                                "step": decision.step, "as_rank": list(callback.as_rank or ()),
                                "disagreements": flags})  # fmt: skip

    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy="ddp", max_steps=30, val_check_interval=10,
        limit_val_batches=1, num_sanity_val_steps=0, callbacks=[callback, Record()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    trainer.fit(Tiny(mine), loader, torch.utils.data.DataLoader(data, batch_size=1))
    for line in answers:
        print(json.dumps(line), flush=True)


def main(argv: list[str]) -> None:
    rank, world, jobs = int(argv[0]), int(argv[1]), json.loads(argv[2])
    os.environ.update({"LOCAL_RANK": str(rank), "NODE_RANK": "0", "WORLD_SIZE": str(world)})
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    for job in jobs:
        with Client(job["url"]) as client:
            train(client, job, rank, world)


if __name__ == "__main__":
    main(sys.argv[1:])
