"""The transformers, Lightning and Keras integrations, each with the real library training a
tiny model on CPU for a few steps with evaluations, against the real service (one uvicorn
subprocess for the module).

Each test records the lr(s) the optimizer held right before every optimizer step and compares
them with GET /v1/runs/{run_id}/lr?step=k (by equality; keras holds its lr in float32, so the
service's rate rounded to float32), and checks the decision log: one observation per
evaluation, at the trainer's step, with the value the framework reported.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import logging
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lrpilot_client import Client
from tests.harness import LiveServer

LOGGER = "lrpilot_client.integrations"

# cosine over the steps, times a level that plateau control lowers: the lr changes every step,
# and each evaluation may lower it further
SCALED = {
    "schedule": {"name": "cosine", "version": 1, "params": {"T_max": 40, "eta_min": 1e-4}},
    "plateau": {"name": "plateau", "version": 1, "params": {"patience": 0, "factor": 0.5}},
}


@pytest.fixture
def client(module_server: LiveServer) -> Iterator[Client]:
    with Client(module_server.url) as c:
        yield c


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def check_used(client: Client, used: list[tuple[int, list[float]]], run_id: str) -> None:
    """Each (step, lrs) recorded equals the service's lrs at that step."""
    assert used
    for step, lrs in used:
        assert lrs == client.lrs(run_id, step), f"step {step}"


def decisions(url: str, run_id: str, superseded: bool) -> list[tuple[int, float]]:
    """(step, value) of the observations on the live branch, or of the superseded ones."""
    params = {"superseded": str(superseded).lower(), "limit": 1000}
    r = httpx.get(f"{url}/v1/runs/{run_id}/decisions", params=params)
    assert r.status_code == 200, r.text
    return [(d["step"], d["value"]) for d in r.json()["items"] if d["action"] != "rewind"]


def superseded(module_server: LiveServer, run_id: str) -> list[tuple[int, float]]:
    return decisions(module_server.url, run_id, superseded=True)


def observations(client: Client, run_id: str) -> list[tuple[int, float]]:
    """The live branch's observations."""
    return decisions(client.base_url, run_id, superseded=False)


# -- transformers ------------------------------------------------------------------------------


def tiny_bert() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 64, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] > 32).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


def hf_args(out: Path, **extra: Any) -> Any:
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {
        "output_dir": str(out), "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
        "max_steps": 30, "eval_strategy": "steps", "eval_steps": 10, "save_strategy": "no",
        "learning_rate": 0.01, "logging_steps": 5, "report_to": [], "use_cpu": True,
        "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 0,
    }  # fmt: skip
    kwargs.update(extra)
    return TrainingArguments(**kwargs)


def hf_recorder() -> tuple[Any, list[tuple[int, list[float]]]]:
    from transformers import TrainerCallback

    used: list[tuple[int, list[float]]] = []

    class Recorder(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            used.append((state.global_step, [float(g["lr"]) for g in kw["optimizer"].param_groups]))

    return Recorder(), used


def hf_trained(out: Path, callback: Any) -> tuple[Any, list[tuple[int, list[float]]]]:
    """A tiny BERT trained for 30 steps, an evaluation every 10, with `callback` over the
    Trainer's constant schedule; the Trainer and the lrs each optimizer step used."""
    from transformers import Trainer

    recorder, used = hf_recorder()
    trainer = Trainer(
        model=tiny_bert(),
        args=hf_args(out, lr_scheduler_type="constant"),
        train_dataset=Tokens(64, 1),
        eval_dataset=Tokens(16, 2),
        callbacks=[callback, recorder],
    )
    trainer.train()
    return trainer, used


def test_transformers_callback_sets_every_step_and_posts_evaluations(
    client: Client, tmp_path: Path
) -> None:

    from lrpilot_client.integrations.transformers import LrpilotCallback

    callback = LrpilotCallback(
        client, "hf-bert", policy="scaled", params=SCALED, metric="eval_loss"
    )
    trainer, used = hf_trained(tmp_path, callback)
    assert [s for s, _ in used] == list(range(30))
    check_used(client, used, "hf-bert")
    assert len({lrs[0] for _, lrs in used}) > 20  # the trainer's constant schedule is overridden
    run = client.get_run("hf-bert")
    assert run.base_lrs == (0.01, 0.01)  # the Trainer's two groups (with and without decay)
    evals = [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
    assert [s for s, _ in evals] == [10, 20, 30]
    assert observations(client, "hf-bert") == evals
    assert callback.last_decision is not None and callback.last_decision.step == 30


def test_transformers_trainer_steps_an_lrpilot_scheduler_and_resume_rewinds(
    client: Client, module_server: LiveServer, tmp_path: Path
) -> None:
    from transformers import Trainer

    from lrpilot_client.integrations.torch import LrpilotScheduler
    from lrpilot_client.integrations.transformers import LrpilotCallback

    def trainer(out: Path) -> tuple[Any, list[tuple[int, list[float]]]]:
        model = tiny_bert()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        sched = LrpilotScheduler(opt, client, "hf-own", policy="scaled", params=SCALED,
                                 metric="eval_loss", ahead=16)  # fmt: skip
        recorder, used = hf_recorder()
        t = Trainer(
            model=model,
            args=hf_args(out, max_steps=20, save_strategy="steps", save_steps=10),
            train_dataset=Tokens(64, 1),
            eval_dataset=Tokens(16, 2),
            optimizers=(opt, sched),
            callbacks=[LrpilotCallback(), recorder],
        )
        return t, used

    first, used = trainer(tmp_path)
    first.train()
    check_used(client, used, "hf-own")
    evals = [(e["step"], e["eval_loss"]) for e in first.state.log_history if "eval_loss" in e]
    assert observations(client, "hf-own") == evals and len(evals) == 2
    # the Trainer logs the scheduler's rate: the one its step used
    logged = [(e["step"], e["learning_rate"]) for e in first.state.log_history if "loss" in e]
    assert logged and all(lr == client.lr("hf-own", s - 1) for s, lr in logged)

    # resume from the checkpoint at step 10: the Trainer loads the scheduler, which rewinds
    second, used2 = trainer(tmp_path)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert superseded(module_server, "hf-own") == [evals[1]]
    assert [s for s, _ in used2] == list(range(10, 20))
    check_used(client, used2, "hf-own")
    assert [s for s, _ in observations(client, "hf-own")] == [10, 20]


# -- Lightning ---------------------------------------------------------------------------------


def lightning_module(scheduler: Any = None) -> Any:
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(torch.relu(self.body(x)))
            return out

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(
                [{"params": self.body.parameters(), "lr": 0.05},
                 {"params": self.head.parameters(), "lr": 0.1}],
                momentum=0.9,
            )  # fmt: skip
            if scheduler is None:
                return opt
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt),
                                                       "interval": "step"}}  # fmt: skip

    return Tiny()


def lightning_data(n: int, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def lightning_trainer(out: Path, callbacks: list[Any], epochs: int, **extra: Any) -> Any:
    import lightning.pytorch as pl

    used: list[tuple[int, list[float]]] = []

    class Recorder(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            used.append((trainer.global_step, [float(g["lr"]) for g in optimizer.param_groups]))

    trainer = pl.Trainer(
        default_root_dir=str(out), max_epochs=epochs, accelerator="cpu", devices=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[*callbacks, Recorder()], **extra,
    )  # fmt: skip
    trainer.recorded = used
    return trainer


@pytest.fixture
def quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        yield


def test_lightning_callback_with_checkpoint_resume(
    client: Client, module_server: LiveServer, tmp_path: Path, quiet_lightning: None
) -> None:
    import lightning.pytorch as pl

    from lrpilot_client.integrations.lightning import LrpilotCallback

    def fit(epochs: int, ckpt: str | None = None) -> tuple[Any, LrpilotCallback]:
        callback = LrpilotCallback(client, "pl-tiny", policy="scaled", params=SCALED, ahead=16)
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
        trainer = lightning_trainer(tmp_path, [callback, saver], epochs)
        trainer.fit(lightning_module(), lightning_data(64, 1), lightning_data(32, 2),
                    ckpt_path=ckpt)  # fmt: skip
        return trainer, callback

    trainer, callback = fit(3)  # 8 steps an epoch, validation after each (and a sanity check)
    assert [s for s, _ in trainer.recorded] == list(range(24))
    check_used(client, trainer.recorded, "pl-tiny")
    assert client.get_run("pl-tiny").base_lrs == (0.05, 0.1)
    posted = observations(client, "pl-tiny")
    assert [s for s, _ in posted] == [8, 16, 24]  # no post for the sanity check
    assert posted[-1][1] == pytest.approx(float(trainer.callback_metrics["val_loss"]), rel=1e-6)
    # the first block of 16 steps, then one after each validation (whose block covers the rest)
    assert callback.scheduler is not None and callback.scheduler.fetches == 4

    # resume from the end of epoch 1 (step 8): the callback's state rewinds the run
    ckpt = next(tmp_path.glob("epoch=0-step=8*.ckpt"))
    resumed, _ = fit(3, str(ckpt))
    assert superseded(module_server, "pl-tiny") == posted[1:]
    assert [s for s, _ in resumed.recorded] == list(range(8, 24))
    check_used(client, resumed.recorded, "pl-tiny")
    assert [s for s, _ in observations(client, "pl-tiny")] == [8, 16, 24]


def test_lightning_module_returns_the_scheduler(
    client: Client, tmp_path: Path, quiet_lightning: None
) -> None:
    from lrpilot_client.integrations.lightning import LrpilotCallback
    from lrpilot_client.integrations.torch import LrpilotScheduler

    def scheduler(opt: torch.optim.Optimizer) -> LrpilotScheduler:
        return LrpilotScheduler(opt, client, "pl-module", policy="scaled", params=SCALED,
                                metric="val_loss")  # fmt: skip

    callback = LrpilotCallback()
    trainer = lightning_trainer(tmp_path, [callback], 2, enable_checkpointing=False)
    trainer.fit(lightning_module(scheduler), lightning_data(64, 1), lightning_data(32, 2))
    assert not callback.owned and callback.scheduler is trainer.lr_scheduler_configs[0].scheduler
    check_used(client, trainer.recorded, "pl-module")
    assert [s for s, _ in observations(client, "pl-module")] == [8, 16]


# -- Keras -------------------------------------------------------------------------------------


def keras_model(lr: float = 0.05) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9), loss="mse")
    return model


def keras_data(n: int, seed: int) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x.numpy(), x.sum(1, keepdim=True).numpy()


def keras_recorder() -> tuple[Any, list[tuple[int, float]]]:
    import keras

    used: list[tuple[int, float]] = []

    class Recorder(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            opt = self.model.optimizer
            used.append((int(keras.ops.convert_to_numpy(opt.iterations)),
                         float(keras.ops.convert_to_numpy(opt.learning_rate))))  # fmt: skip

    return Recorder(), used


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_callback_every_step_val_loss_and_resume(
    client: Client, module_server: LiveServer, tmp_path: Path
) -> None:
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    from lrpilot_client.integrations.keras import LrpilotCallback

    x, y = keras_data(64, 1)
    val = keras_data(32, 2)
    model = keras_model()
    callback = LrpilotCallback(client, "keras-mlp", policy="scaled", params=SCALED, ahead=16)
    saver = keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.keras"))
    recorder, used = keras_recorder()
    history = model.fit(x, y, batch_size=16, epochs=5, validation_data=val, verbose=0,
                        callbacks=[callback, saver, recorder])  # fmt: skip
    assert [s for s, _ in used] == list(range(20))  # 4 steps an epoch
    for step, lr in used:
        assert lr == f32(client.lr("keras-mlp", step)), f"step {step}"
    assert len({lr for _, lr in used}) > 15
    assert client.get_run("keras-mlp").base_lrs == (f32(0.05),)
    posted = observations(client, "keras-mlp")
    assert posted == [(4 * (e + 1), v) for e, v in enumerate(history.history["val_loss"])]
    assert callback.fetches == 6  # the first block of 16 steps, one after each evaluation

    # resume from the checkpoint of epoch 2 (step 8): the run is rewound to it
    restored = keras.models.load_model(tmp_path / "e2.keras")
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == 8
    callback2 = LrpilotCallback(client, "keras-mlp", policy="scaled", params=SCALED)
    recorder2, used2 = keras_recorder()
    restored.fit(x, y, batch_size=16, epochs=4, initial_epoch=2, validation_data=val, verbose=0,
                 callbacks=[callback2, recorder2])  # fmt: skip
    assert superseded(module_server, "keras-mlp") == posted[2:]
    assert [s for s, _ in used2] == list(range(8, 16))
    for step, lr in used2:
        assert lr == f32(client.lr("keras-mlp", step)), f"step {step}"
    assert [s for s, _ in observations(client, "keras-mlp")] == [4, 8, 12, 16]


# -- more than the lr: the momentum and weight decay of one_cycle@2 reach the optimizer ----------


def test_the_transformers_callback_writes_the_momentum_through_the_scheduler(
    client: Client, tmp_path: Path
) -> None:
    """The transformers and Lightning callbacks go through LrpilotScheduler: the Trainer's
    AdamW holds the run's betas[0] at every step, over whatever the Trainer's own scheduler
    wrote."""
    from transformers import Trainer

    from lrpilot_client.integrations.transformers import LrpilotCallback

    params = {"max_lr": 0.01, "total_steps": 16, "base_momentum": 0.8, "max_momentum": 0.95}
    callback = LrpilotCallback(client, "hf-one-cycle", "one_cycle", 2, params, "eval_loss")
    held: list[tuple[int, float]] = []

    class Betas:  # before each optimizer step, what AdamW's first group holds
        def attach(self, optimizer: torch.optim.Optimizer) -> None:
            optimizer.register_step_pre_hook(
                lambda opt, a, k: held.append((len(held), float(opt.param_groups[0]["betas"][0])))
            )

    trainer = Trainer(
        model=tiny_bert(),
        args=hf_args(tmp_path, lr_scheduler_type="constant", max_steps=12, eval_strategy="no"),
        train_dataset=Tokens(48, 1),
        callbacks=[callback],
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=12)
    Betas().attach(trainer.optimizer)
    trainer.train()
    assert len(held) == 12
    block = client.lrs_range("hf-one-cycle", 0, 12)
    assert [b for _, b in held] == [m[0] for m in block.momentum or ()]
    assert len({b for _, b in held}) > 8


def test_keras_writes_beta_1_and_weight_decay_when_the_step_runs_eagerly(client: Client) -> None:
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    from lrpilot_client.integrations.keras import LrpilotCallback

    params = {
        "max_lr": 0.05,
        "total_steps": 16,
        "start_wd": 0.0,
        "end_wd": 0.01,
        "wd_incr_style": "linear",
    }
    model = keras_model()
    model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.0), loss="mse")
    seen: list[tuple[int, float, float]] = []

    class Seen(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            opt = self.model.optimizer
            step = int(keras.ops.convert_to_numpy(opt.iterations))
            seen.append((step, float(opt.beta_1), float(opt.weight_decay)))

    x, y = keras_data(64, 1)
    callback = LrpilotCallback(client, "keras-one-cycle", "one_cycle", 2, params, "loss")
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback, Seen()])
    assert [s for s, _, _ in seen] == list(range(12))
    block = client.lrs_range("keras-one-cycle", 0, 12)
    assert [(b, w) for _, b, w in seen] == [
        (m[0], wd[0]) for m, wd in zip(block.momentum or (), block.weight_decay or (), strict=True)
    ]


def test_the_lightning_callback_writes_the_momentum_of_every_step(
    client: Client, tmp_path: Path, quiet_lightning: None
) -> None:
    import lightning.pytorch as pl

    from lrpilot_client.integrations.lightning import LrpilotCallback

    held: list[list[float]] = []

    class Momentum(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            held.append([float(g["momentum"]) for g in optimizer.param_groups])

    params = {"max_lr": [0.05, 0.1], "total_steps": 16, "base_momentum": [0.8, 0.85]}
    callback = LrpilotCallback(client, "pl-one-cycle", "one_cycle", 2, params)
    trainer = lightning_trainer(tmp_path, [callback, Momentum()], 2)
    trainer.fit(lightning_module(), lightning_data(64, 1), lightning_data(16, 2))
    block = client.lrs_range("pl-one-cycle", 0, 16)
    assert held == [list(m) for m in block.momentum or ()]  # SGD's momentum, each group's
    assert len({m[0] for m in held}) > 10
