"""Two-process DistributedDataParallel training whose learning rate lrpilot decides for all ranks.

Start the service (`lrpilot serve`), then: `python examples/ddp_digits.py [--epochs N] [--out DIR]`
(it needs torch and scikit-learn). An MLP learns scikit-learn's bundled digits (no download) on
2 CPU processes (gloo). The run is in aggregated mode: each rank posts the validation loss of its
own shard, weighted by the shard's size; lrpilot decides once, from the weighted mean (the loss
over the whole validation split), and every rank gets that same decision. So no rank's lr can
drift from the others', as it does when each rank steps its own ReduceLROnPlateau on its local
loss. LRPILOT_URL picks another service, LRPILOT_RUN_ID another run (default "ddp-digits");
with --out, each rank writes the lr of every training step and its evaluations to
DIR/rank<r>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lrpilot_client import Client

WORLD_SIZE = 2
BASE_LR = 0.2  # with momentum 0.9: the loss stalls within 10 epochs, and the lr is cut
# plateau@1 (torch's ReduceLROnPlateau): halve the lr after 2 evaluations without improvement
PLATEAU = {"patience": 1, "factor": 0.5}
# every rank posts; a rank missing for 30 s does not block the others: decide without it
AGGREGATE = {"timeout_s": 30, "on_timeout": "decide"}
URL = os.environ.get("LRPILOT_URL", "http://127.0.0.1:8000")
RUN_ID = os.environ.get("LRPILOT_RUN_ID", "ddp-digits")


def data() -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()  # 1,797 8x8 images, pixel values 0..16
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    # the same split on every rank: a fixed seed, not the ranks' own randomness
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return TensorDataset(x_train, y_train), TensorDataset(x_val, y_val)


def train(rank: int, port: int, epochs: int, out: Path | None) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    record = fit(rank, epochs)
    if out is not None:
        (out / f"rank{rank}.json").write_text(json.dumps(record))
    # fit's DDP model held the process group; it is gone now, so the group really closes here,
    # on both ranks together, and not in the interpreter's shutdown (where gloo's threads can
    # abort the process)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def fit(rank: int, epochs: int) -> dict[str, Any]:
    """Train for `epochs` epochs; return the lr of every training step and each evaluation."""
    torch.set_num_threads(1)  # one core a rank: two ranks on two cores, no oversubscription
    torch.manual_seed(0)
    train_set, val_set = data()
    # DistributedSampler gives each rank its own part of every epoch's shuffle (seeded)
    sampler = DistributedSampler(train_set, WORLD_SIZE, rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=32, sampler=sampler)
    x_val, y_val = val_set[rank::WORLD_SIZE]  # this rank's shard of the validation split
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9)
    # what the test checks: the lr of every training step, and each evaluation
    record: dict[str, Any] = {
        "rank": rank,
        "val_size": len(y_val),
        "step_lrs": [],
        "evaluations": [],
    }

    # A rank's answer waits until every rank has reported (or until timeout_s, then lrpilot
    # decides from the ranks present): the client reads that long, as create_run told it.
    with Client(URL) as lrpilot:
        # every rank creates the run: the first creates it, the others get the same spec back
        lrpilot.create_run(
            RUN_ID, params=PLATEAU, base_lrs=[BASE_LR], metric="val_loss", aggregate=AGGREGATE
        )
        step = 0
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            model.train()
            for x, y in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()  # DDP all-reduces the gradients
                record["step_lrs"].append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                step += 1
            model.eval()
            with torch.no_grad():
                local_loss = F.cross_entropy(model(x_val), y_val).item()
            # weight = shard size, so the weighted mean is the loss over the whole split
            decision = lrpilot.observe(
                RUN_ID, step, local_loss, rank=rank, world_size=WORLD_SIZE, weight=len(y_val)
            )
            # A rank that could not reach lrpilot gets a provisional answer (its last lrs; its
            # report is buffered and sent with its next call) while the others may get a
            # decision taken without it. Then all keep their lrs: DDP syncs gradients, not lrs.
            provisional = torch.tensor([float(decision.provisional)])
            dist.all_reduce(provisional)
            if provisional.item() == 0:  # the usual case: every rank has the same decision
                for group, lr in zip(optimizer.param_groups, decision.lrs, strict=True):
                    group["lr"] = lr
            record["evaluations"].append(
                {"step": step, "val_loss": decision.value, "local_val_loss": local_loss}
            )
            if rank == 0:
                print(
                    f"epoch {epoch:2d} step {step:4d} val_loss {decision.value:.4f} "
                    f"(rank 0: {local_loss:.4f}) {decision.action:6s} lr {decision.lr:g}",
                    flush=True,
                )
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write rank<r>.json files here")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:  # a free port for the ranks to meet on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(train, args=(port, args.epochs, args.out), nprocs=WORLD_SIZE)
