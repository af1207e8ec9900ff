"""The guard's rollback, on a real torch model: ``python docs/images/make_rollback_plot.py [PNG]``
(PNG: where to write the plot, by default rollback.png next to this file).

Starts the real service (``lrpilot serve`` on a temporary SQLite file, open mode, loopback),
trains a small torch MLP with ``LrpilotScheduler`` on a guarded run (docs/guard.md), saving and
declaring a checkpoint every 20 steps. At step 55 a fault hits the weights (noise, as a bad
batch or a flipped bit would): the validation loss of step 60 spikes, the run decides a
rollback to the checkpoint of step 40 with the lr cut, the scheduler restores it and training
goes on from step 40. The plot shows the lr and the loss against the step, the branch the
rollback left faded. ``train`` is what tests/client/test_guard_torch.py runs and checks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GUARD = {
    "on": ["nan", "spike"],
    "spike": {"rule": "ratio", "ratio": 3.0},
    "lr_factor": 0.5,
    "max_rollbacks": 3,
}
STEPS, EVERY, SAVE_EVERY, FAULT_AT, BASE_LR = 120, 10, 20, 55, 0.05


@dataclass
class Trace:
    """What the training did, step by step: the lr each optimizer step used, the training
    loss, the validation losses posted, on which branch (0, then 1 after the rollback)."""

    lr: list[tuple[int, int, float]] = field(default_factory=list)  # (branch, step, lr)
    loss: list[tuple[int, int, float]] = field(default_factory=list)  # (branch, step, loss)
    val: list[tuple[int, int, float]] = field(default_factory=list)  # (branch, step, val loss)
    decisions: list[Any] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # the refs restored
    weights_at: dict[str, list[float]] = field(default_factory=dict)  # saved, by ref


def train(client: Any, run_id: str, workdir: Path) -> Trace:
    """Train with the guard; a fault at step FAULT_AT. Everything real: torch, the service."""
    import torch

    from lrpilot_client.integrations.torch import LrpilotScheduler

    torch.manual_seed(0)
    x = torch.randn(640, 8)
    y = torch.tanh(x @ torch.randn(8, 1)) + 0.1 * torch.randn(640, 1)
    x_train, y_train, x_val, y_val = x[:512], y[:512], x[512:], y[512:]
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9)
    trace = Trace()

    def flat() -> list[float]:
        return [float(v) for p in model.parameters() for v in p.detach().flatten()]

    def restore(ref: str) -> None:
        saved = torch.load(workdir / ref, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        trace.restored.append(ref)

    scheduler = LrpilotScheduler(
        optimizer,
        client,
        run_id,
        policy="plateau",
        params={"patience": 100},
        metric="val_loss",
        guard=GUARD,
        restore=restore,
    )
    branch, faulted = 0, False
    while scheduler.last_epoch < STEPS:
        step = scheduler.last_epoch + 1
        batch = slice((step * 32) % 512, (step * 32) % 512 + 32)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x_train[batch]), y_train[batch])
        loss.backward()
        trace.lr.append((branch, step, float(optimizer.param_groups[0]["lr"])))
        trace.loss.append((branch, step, loss.item()))
        optimizer.step()
        scheduler.step()  # last_epoch is now `step`
        if step == FAULT_AT and not faulted:
            faulted = True
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 2.0)
        if step % EVERY:
            continue
        with torch.no_grad():
            val_loss = torch.nn.functional.mse_loss(model(x_val), y_val).item()
        trace.val.append((branch, step, val_loss))
        decision = scheduler.observe(val_loss)
        trace.decisions.append(decision)
        if decision.action == "rollback":
            branch += 1  # restored: the scheduler is at the checkpoint's step
            continue
        if step % SAVE_EVERY == 0:
            ref = f"step-{step}.pt"
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save(state, workdir / ref)
            trace.weights_at[ref] = flat()
            scheduler.checkpoint(step, ref)
    scheduler.close()
    return trace


def plot(trace: Trace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5.5))
    # a point is superseded when a later rollback went to a step below it
    gone_above = [int(d.rollback["checkpoint"]["step"]) for d in trace.decisions
                  if d.action == "rollback"]  # fmt: skip

    def split(points: list[tuple[int, int, float]]) -> list[tuple[bool, list[tuple[int, float]]]]:
        """The points in runs of the same kind (live or superseded), in order."""
        runs: list[tuple[bool, list[tuple[int, float]]]] = []
        for branch, step, value in points:
            live = branch == len(gone_above) or step <= gone_above[branch]
            if not runs or runs[-1][0] != live or (live and runs[-1][1][-1][0] > step):
                runs.append((live, [runs[-1][1][-1]] if runs and live == runs[-1][0] else []))
            runs[-1][1].append((step, value))
        return runs

    labelled: set[tuple[str, bool]] = set()

    def label(what: str, live: bool) -> str | None:
        if (what, live) in labelled:
            return None
        labelled.add((what, live))
        return f"{what} ({'live branch' if live else 'superseded by the rollback'})"

    for live, run in split(trace.lr):
        top.step([s for s, _ in run], [v for _, v in run], where="post", color="tab:blue",
                 alpha=1.0 if live else 0.3, label=label("lr", live))  # fmt: skip
    for live, run in split(trace.loss):
        bottom.plot([s for s, _ in run], [v for _, v in run], color="tab:gray", linewidth=0.8,
                    alpha=0.6 if live else 0.2)  # fmt: skip
    for live, run in split(trace.val):
        bottom.plot([s for s, _ in run], [v for _, v in run], "o-", color="tab:red",
                    alpha=1.0 if live else 0.3, label=label("val_loss", live))  # fmt: skip
    rollback = next(d for d in trace.decisions if d.action == "rollback")
    target = rollback.rollback["checkpoint"]
    for axis in (top, bottom):
        axis.axvline(target["step"], color="tab:green", linestyle="--", linewidth=1)
        axis.axvline(rollback.step, color="tab:red", linestyle=":", linewidth=1)
    bottom.annotate(
        f"spike at step {rollback.step}: rollback to {target['ref']}",
        (rollback.step, float(rollback.value)),
        textcoords="offset points",
        xytext=(8, -4),
        fontsize=8,
    )
    top.set_ylabel("lr")
    top.set_title("guarded run: a fault at step 55, rolled back to the checkpoint of step 40")
    top.legend(fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("loss (train: grey)")
    bottom.set_xlabel("training step")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str]) -> int:
    from lrpilot_client import Client

    out = Path(argv[0]) if argv else HERE / "rollback.png"
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = {**os.environ, "LRPILOT_DATABASE_URL": f"sqlite:///{tmp}/lrpilot.db"}
        server = subprocess.Popen(
            [sys.executable, "-m", "lrpilot.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            with Client(url) as client:
                for _ in range(300):
                    try:
                        client.health()
                        break
                    except Exception:
                        time.sleep(0.1)
                trace = train(client, "guarded-mlp", Path(tmp))
            plot(trace, out)
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
