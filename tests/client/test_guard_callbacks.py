"""The transformers and Lightning callbacks on a guarded run (issue 18, docs/guard.md): each
trains a tiny model with the real library against the real service (one uvicorn for the
module), declares the checkpoints its trainer saves, and has noise put into the weights so that
the next evaluation spikes. The callback then loads the checkpoint the rollback names into the
running trainer, in the same `train()` / `fit()`: the weights right after the rollback are the
checkpoint's, the trainer's step is the checkpoint's, the steps after it train with the cut lr,
and the export verifies offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lrpilot_client import Client
from tests.client.test_integrations_frameworks import (
    Tokens,
    hf_args,
    hf_recorder,
    lightning_data,
    lightning_module,
    lightning_trainer,
    quiet_lightning,  # noqa: F401 (a fixture)
    tiny_bert,
)
from tests.harness import LiveServer
from tests.helpers import lrpilot_cli

pytestmark = pytest.mark.filterwarnings("ignore:.*weights_only.*:FutureWarning")

# a spike: a validation loss above 3 times the best so far
GUARD = {"on": ["nan", "spike"], "spike": {"rule": "ratio", "ratio": 3.0}, "max_rollbacks": 2}


@pytest.fixture
def client(module_server: LiveServer) -> Iterator[Client]:
    with Client(module_server.url) as c:
        yield c


def noisy(module: torch.nn.Module, scale: float) -> None:
    """Noise in every weight, as a bad batch would leave them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def verified_offline(client: Client, run_id: str, tmp_path: Path) -> None:
    bundle = tmp_path / f"{run_id}.ndjson"
    client.export(run_id, bundle)
    result = lrpilot_cli("verify", str(bundle))
    assert result.exit_code == 0, result.output
    assert client.verify(run_id).ok


def test_the_transformers_callback_restores_the_checkpoint_in_the_same_train(
    client: Client, tmp_path: Path
) -> None:
    from transformers import Trainer, TrainerCallback

    from lrpilot_client.integrations.transformers import LrpilotCallback

    saved: dict[int, dict[str, torch.Tensor]] = {}
    after_rollback: list[tuple[int, dict[str, torch.Tensor]]] = []

    class Probe(TrainerCallback):  # type: ignore[misc]
        """Keeps the weights of each save, puts noise in once after step 13, and takes the
        weights right after the rollback (it runs after the lrpilot callback)."""

        faulted = False

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            saved[state.global_step] = weights(kw["model"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 13 and not self.faulted:
                self.faulted = True
                noisy(kw["model"], 2.0)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if callback.last_decision is not None and callback.last_decision.action == "rollback":
                after_rollback.append((state.global_step, weights(kw["model"])))

    callback = LrpilotCallback(client, "hf-rollback", metric="eval_loss", guard=GUARD)
    recorder, used = hf_recorder()
    # two epochs of 10 steps; an evaluation and a save every 5
    args = hf_args(tmp_path, max_steps=-1, num_train_epochs=2, eval_steps=5,
                   save_strategy="steps", save_steps=5, lr_scheduler_type="constant")  # fmt: skip
    trainer = Trainer(
        model=tiny_bert(), args=args, train_dataset=Tokens(40, 1), eval_dataset=Tokens(16, 2),
        callbacks=[callback, Probe(), recorder],
    )  # fmt: skip
    trainer.train()

    rollback = next(d for d in client.iter_decisions("hf-rollback", superseded=True)
                    if d.action == "rollback")  # fmt: skip
    assert rollback.step == 15 and rollback.rollback is not None
    assert rollback.rollback["trigger"] == "spike"
    assert rollback.rollback["checkpoint"]["ref"] == str(tmp_path / "checkpoint-10")
    # restored in place: the weights right after the rollback are those saved at step 10
    assert [step for step, _ in after_rollback] == [10]
    assert same(after_rollback[0][1], saved[10])
    # the steps went on from the checkpoint's, with the cut lr (the Trainer's epochs are
    # fixed when train() starts: the 5 steps rolled back are not made up at the end)
    assert [s for s, _ in used] == [*range(15), *range(10, 15)]
    assert {tuple(lrs) for _, lrs in used[:15]} == {(0.01, 0.01)}  # two groups: decay or not
    assert {tuple(lrs) for _, lrs in used[15:]} == {(0.01 * 0.5, 0.01 * 0.5)}
    assert trainer.state.global_step == 15
    for step, lrs in used[15::2]:
        assert client.lrs("hf-rollback", step) == lrs
    run = client.get_run("hf-rollback")
    assert run.last_step == 15 and run.lrs == (0.01 * 0.5, 0.01 * 0.5)
    live = [(c.step, c.superseded) for c in client.checkpoints("hf-rollback").items]
    assert live[:2] == [(5, False), (10, False)] and (15, False) in live
    verified_offline(client, "hf-rollback", tmp_path)


def test_the_lightning_callback_declares_its_saves_and_restores_in_the_same_fit(
    client: Client,
    tmp_path: Path,
    quiet_lightning: None,  # noqa: F811 (the fixture)
) -> None:
    import lightning.pytorch as pl

    from lrpilot_client.integrations.lightning import LrpilotCallback

    after_rollback: list[tuple[int, dict[str, torch.Tensor]]] = []

    class Probe(pl.Callback):  # type: ignore[misc]
        """Noise in the weights when the third epoch starts (step 16, just after the save of
        step 16); the weights right after the rollback (it runs after the lrpilot callback)."""

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch == 2:
                noisy(pl_module, 0.5)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if callback.last_decision is not None and callback.last_decision.action == "rollback":
                after_rollback.append((trainer.global_step, weights(pl_module)))

    callback = LrpilotCallback(client, "pl-rollback", guard=GUARD)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    trainer = lightning_trainer(tmp_path, [callback, Probe(), saver], epochs=4)  # 8 steps each
    trainer.fit(lightning_module(), lightning_data(64, 1), lightning_data(32, 2))

    declared = [(c.step, Path(c.ref).name) for c in client.checkpoints("pl-rollback").items]
    assert declared[:2] == [(8, "epoch=0-step=8.ckpt"), (16, "epoch=1-step=16.ckpt")]
    rollback = next(d for d in client.iter_decisions("pl-rollback", superseded=True)
                    if d.action == "rollback")  # fmt: skip
    assert rollback.step == 24 and rollback.rollback is not None
    assert rollback.rollback["trigger"] == "spike"
    assert rollback.rollback["checkpoint"]["ref"] == str(tmp_path / "epoch=1-step=16.ckpt")
    # restored in place: the weights right after the rollback are the checkpoint's
    saved = torch.load(tmp_path / "epoch=1-step=16.ckpt", weights_only=False)["state_dict"]
    assert [step for step, _ in after_rollback] == [16]
    assert same(after_rollback[0][1], saved)
    # the fourth epoch trained steps 16..23 again, with the cut lrs
    used = trainer.recorded
    assert [s for s, _ in used] == [*range(24), *range(16, 24)]
    assert {tuple(lrs) for _, lrs in used[:24]} == {(0.05, 0.1)}
    assert {tuple(lrs) for _, lrs in used[24:]} == {(0.05 * 0.5, 0.1 * 0.5)}
    assert trainer.global_step == 24
    run = client.get_run("pl-rollback")
    assert run.last_step == 24 and run.lrs == (0.05 * 0.5, 0.1 * 0.5)
    verified_offline(client, "pl-rollback", tmp_path)
