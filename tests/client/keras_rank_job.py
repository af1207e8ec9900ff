"""One rank of a data-parallel Keras job, as its own process
(tests/client/test_agreement_callbacks.py): ``python -m tests.client.keras_rank_job RANK WORLD
JOBS``, JOBS a JSON list of {"url", "run", "tamper": [STEP, WHO] or null}, with MASTER_PORT
in the environment.

For each job's run (a run that exists, not aggregated: every rank posts the same metric, as
synced) a small model trains 3 epochs of 10 steps with `LrpilotCallback(as_rank=(RANK,
WORLD))`, the ranks meeting at a gloo barrier on 127.0.0.1 after each batch, as the gradients'
all-reduce of a data-parallel job makes them. From step STEP on, rank WHO doubles its lr before
each batch, after the callback wrote the run's: the bug the acknowledgements exist to catch.
Each answer is printed as a JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import torch.distributed as dist

from lrpilot_client import Client
from lrpilot_client.integrations.keras import LrpilotCallback


def train(client: Client, job: dict[str, Any], rank: int, world: int) -> None:
    tamper = job["tamper"]
    mine = tamper[0] if tamper is not None and tamper[1] == rank else None
    keras.utils.set_random_seed(rank)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    x, y = keras.random.normal((40, 4)), keras.random.normal((40, 1))
    callback = LrpilotCallback(client, job["run"], policy=None, as_rank=(rank, world))
    answers: list[dict[str, Any]] = []

    class Synced(keras.callbacks.Callback):  # type: ignore[misc]
        """Before the lrpilot callback: the metric every rank posts alike."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            logs["val_loss"] = 1.0  # a plateau from the start: the run reduces

    class Barrier(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            dist.barrier()

    class Tamper(keras.callbacks.Callback):  # type: ignore[misc]
        """After the lrpilot callback: the lr doubled behind its back."""

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            opt = self.model.optimizer
            if mine is not None and int(keras.ops.convert_to_numpy(opt.iterations)) >= mine:
                opt.learning_rate = 2 * float(keras.ops.convert_to_numpy(opt.learning_rate))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            decision = callback.last_decision
            assert decision is not None
            flags = [dict(d) for d in decision.disagreements]
            answers.append({"url": job["url"], "run": job["run"], "rank": rank,
                            "step": decision.step, "disagreements": flags})  # fmt: skip

    hooks = [Synced(), callback, Tamper(), Barrier()]
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=hooks)
    for line in answers:
        print(json.dumps(line), flush=True)


def main(argv: list[str]) -> None:
    rank, world, jobs = int(argv[0]), int(argv[1]), json.loads(argv[2])
    address = f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    for job in jobs:
        with Client(job["url"]) as client:
            train(client, job, rank, world)


if __name__ == "__main__":
    main(sys.argv[1:])
