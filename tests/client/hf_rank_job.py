"""One rank of a transformers DDP job, as its own process
(tests/client/test_agreement_callbacks.py): ``python -m tests.client.hf_rank_job RANK WORLD
JOBS``, JOBS a JSON list of {"url", "run", "tamper": [STEP, WHO] or null}, with MASTER_ADDR
and MASTER_PORT in the environment.

The process is rank RANK of WORLD (RANK, LOCAL_RANK and WORLD_SIZE, as torchrun sets them), so
the Trainer runs a real gloo process group on 127.0.0.1 and the callback takes its rank from
the Trainer's arguments (no `as_rank` given). For each job's run (a run that exists, not
aggregated: leader mode, every rank posts the same gathered eval_loss) a small model trains 30
steps, evaluating every 10. From step STEP on, rank WHO doubles its lr before each step, after
the callback wrote the run's: the bug the acknowledgements exist to catch. Each answer is
printed as a JSON line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from lrpilot_client import Client
from lrpilot_client.integrations.transformers import LrpilotCallback


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)}


class Pairs(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def train(client: Client, job: dict[str, Any], rank: int, world: int, out: str) -> None:
    tamper = job["tamper"]
    mine = tamper[0] if tamper is not None and tamper[1] == rank else None
    callback = LrpilotCallback(client, job["run"], policy=None)
    answers: list[dict[str, Any]] = []

    class Tamper(TrainerCallback):  # type: ignore[misc]
        """After the lrpilot callback: the lr doubled behind its back; and each answer kept."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if mine is not None and state.global_step >= mine:
                for group in kw["optimizer"].param_groups:
                    group["lr"] *= 2

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            decision = callback.last_decision
            assert decision is not None
            flags = [dict(d) for d in decision.disagreements]
            answers.append({"url": job["url"], "run": job["run"], "rank": rank,
                            "step": decision.step, "as_rank": list(callback.as_rank or ()),
                            "disagreements": flags})  # fmt: skip

    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=1, per_device_eval_batch_size=4,
        max_steps=30, eval_strategy="steps", eval_steps=10, save_strategy="no",
        learning_rate=0.1, lr_scheduler_type="constant", report_to=[], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=0, ddp_backend="gloo",
    )  # fmt: skip
    trainer = Trainer(
        model=Tiny(), args=args, train_dataset=Pairs(30 * world), eval_dataset=Pairs(8),
        callbacks=[callback, Tamper()],
    )  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # (the Trainer prints its metrics)
        trainer.train()
    for line in answers:
        print(json.dumps(line), flush=True)


def main(argv: list[str]) -> None:
    rank, world, jobs = int(argv[0]), int(argv[1]), json.loads(argv[2])
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as out:
        for job in jobs:
            with Client(job["url"]) as client:
                train(client, job, rank, world, out)


if __name__ == "__main__":
    main(sys.argv[1:])
