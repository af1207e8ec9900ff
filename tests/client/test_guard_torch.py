"""The guard on a real torch model (issue 18): a small MLP trained with `LrpilotScheduler` on a
guarded run against the real service (uvicorn), a fault injected into its weights so that the
validation loss spikes; the run rolls back to the declared checkpoint with the lr cut, the
scheduler restores it, training recovers, and the export verifies offline (`lrpilot verify`).
The training is docs/images/make_rollback_plot.py's, the one its plot shows. Also: the
scheduler without a restore function, the transformers callback declaring its saves, and the
Keras callback restoring the weights it kept on a rollback.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported (as the frameworks')

import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from lrpilot_client import Client, RollbackRequested
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.harness import REPO_DIR, LiveServer
from tests.helpers import lrpilot_cli, one_line

pytestmark = pytest.mark.filterwarnings("ignore:.*weights_only.*:FutureWarning")


def plot_script() -> ModuleType:
    path = REPO_DIR / "docs" / "images" / "make_rollback_plot.py"
    spec = importlib.util.spec_from_file_location("make_rollback_plot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(module_server: LiveServer) -> Iterator[Client]:
    with Client(module_server.url) as c:
        yield c


def test_a_spike_rolls_a_real_model_back_to_its_checkpoint_with_the_cut_lr(
    client: Client, tmp_path: Path
) -> None:
    script = plot_script()
    trace = script.train(client, "torch-guard", tmp_path)

    rollbacks = [d for d in trace.decisions if d.action == "rollback"]
    assert len(rollbacks) == 1
    rollback = rollbacks[0]
    assert rollback.step == 60 and rollback.rollback["trigger"] == "spike"
    assert rollback.rollback["checkpoint"]["ref"] == "step-40.pt"
    assert rollback.lrs == (script.BASE_LR * 0.5,)
    assert trace.restored == ["step-40.pt"]

    # the steps after the rollback ran from the checkpoint's step, with the cut lr, and the
    # lr each optimizer step used is the one the service serves for that step
    after = [(step, lr) for branch, step, lr in trace.lr if branch == 1]
    assert after[0][0] == 41 and after[-1][0] == script.STEPS
    assert {lr for _, lr in after} == {script.BASE_LR * 0.5}
    before = [lr for branch, step, lr in trace.lr if branch == 0]
    assert set(before) == {script.BASE_LR}
    for step, lr in after[::17]:
        assert client.lrs("torch-guard", step) == [lr]

    # recovered: the val loss is back below its best before the fault, the spike far above
    spike = rollback.value
    best_before = min(v for branch, step, v in trace.val if branch == 0 and step < 60)
    final = [v for branch, _, v in trace.val if branch == 1]
    assert spike > 3 * best_before
    assert final[-1] < best_before and all(math.isfinite(v) for v in final)

    # the log: the faulted steps are a superseded branch, the run is live from step 40 on
    run = client.get_run("torch-guard")
    assert run.last_step == script.STEPS and run.lrs == (script.BASE_LR * 0.5,)
    gone = [d.step for d in client.iter_decisions("torch-guard", superseded=True)]
    assert gone == [50, 60]
    live = client.checkpoints("torch-guard").items
    assert [(c.ref, c.superseded) for c in live][:2] == [
        ("step-20.pt", False),
        ("step-40.pt", False),
    ]

    # the export verifies offline, as the service itself does
    bundle = tmp_path / "torch-guard.ndjson"
    client.export("torch-guard", bundle)
    result = lrpilot_cli("verify", str(bundle))
    assert result.exit_code == 0, result.output
    assert "OK" in one_line(result.output) or "ok" in one_line(result.output).lower()
    assert client.verify("torch-guard").ok


def test_without_a_restore_function_the_scheduler_raises_rollback_requested(
    client: Client,
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = {"on": ["nan"], "lr_factor": 0.1, "max_rollbacks": 1}
    scheduler = LrpilotScheduler(optimizer, client, "torch-raise", metric="loss", guard=guard)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    scheduler.observe(0.5)
    scheduler.checkpoint(3, "ckpt-3")
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    with pytest.raises(RollbackRequested) as raised:
        scheduler.observe(math.nan)
    assert (raised.value.step, raised.value.ref) == (3, "ckpt-3")
    assert "roll back to checkpoint 'ckpt-3' (step 3)" in str(raised.value)
    # the scheduler is at the checkpoint's step, the optimizer holds the cut rate
    assert scheduler.last_epoch == 3
    assert optimizer.param_groups[0]["lr"] == 0.1 * 0.1  # the service's product, exactly
    # a second NaN after max_rollbacks: stop
    optimizer.step()
    scheduler.step()
    assert scheduler.observe(math.nan).action == "stop" and scheduler.should_stop
    scheduler.close()


def test_the_transformers_callback_declares_each_checkpoint_the_trainer_saves(
    client: Client, tmp_path: Path
) -> None:
    from transformers import Trainer

    from lrpilot_client.integrations.transformers import LrpilotCallback
    from tests.client.test_integrations_frameworks import Tokens, hf_args, tiny_bert

    guard = {"on": ["nan"], "max_rollbacks": 1}
    callback = LrpilotCallback(client, "hf-guard", metric="eval_loss", guard=guard)
    args = hf_args(tmp_path, max_steps=10, eval_steps=5, save_strategy="steps", save_steps=5)
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=Tokens(40, 1),
        eval_dataset=Tokens(16, 2),
        callbacks=[callback],
    )
    trainer.train()
    declared = client.checkpoints("hf-guard").items
    assert [(c.step, c.ref, c.superseded) for c in declared] == [
        (5, str(tmp_path / "checkpoint-5"), False),
        (10, str(tmp_path / "checkpoint-10"), False),
    ]
    assert all((tmp_path / f"checkpoint-{s}").is_dir() for s in (5, 10))
    assert client.get_run("hf-guard").guard["on"] == ["nan"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_the_keras_callback_restores_the_weights_it_saved_on_a_rollback(client: Client) -> None:
    import keras
    import numpy as np

    from tests.client.test_integrations_frameworks import (
        f32,
        keras_data,
        keras_model,
        keras_recorder,
    )

    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    from lrpilot_client.integrations.keras import LrpilotCallback

    x, y = keras_data(64, 1)
    val = keras_data(32, 2)
    model = keras_model()
    guard = {"on": ["nan", "spike"], "spike": {"rule": "ratio", "ratio": 3.0}, "max_rollbacks": 1}
    callback = LrpilotCallback(client, "keras-guard", params={"patience": 100}, guard=guard)
    at_begin: dict[int, list[Any]] = {}

    class Fault(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            at_begin[epoch] = self.model.get_weights()
            if epoch == 3:  # noise in the weights, as a bad batch would leave them
                rng = np.random.default_rng(0)
                noisy = [w + 1.0 * rng.standard_normal(w.shape) for w in at_begin[3]]
                self.model.set_weights([w.astype(np.float32) for w in noisy])

    recorder, used = keras_recorder()
    model.fit(x, y, batch_size=16, epochs=6, validation_data=val, verbose=0,
              callbacks=[Fault(), callback, recorder])  # fmt: skip

    decisions = list(client.iter_decisions("keras-guard"))
    rollback = next(d for d in decisions if d.action == "rollback")
    assert rollback.step == 16 and rollback.rollback is not None
    assert rollback.rollback["checkpoint"] == {
        "seq": rollback.rollback["checkpoint"]["seq"],
        "step": 12,
        "ref": "keras-memory:step-12",
    }
    # restored: the weights of step 12 (the end of epoch 2), and the optimizer back at step 12
    assert all(np.array_equal(a, b) for a, b in zip(at_begin[4], at_begin[3], strict=True))
    assert [s for s, _ in used] == [*range(16), *range(12, 20)]
    assert {lr for _, lr in used[:16]} == {f32(0.05)}
    assert {lr for _, lr in used[16:]} == {f32(0.05 * 0.5)}
    assert client.get_run("keras-guard").last_step == 20
    assert client.verify("keras-guard").ok
