"""More than the lr through the client: a model trained with LrpilotScheduler on one_cycle@2 or
cyclic@2 (against the real service, one uvicorn subprocess for the module) has, at every
optimizer step, the lrs, momentum (SGD's `momentum`, Adam's `betas[0]`) and weight decay that
an identical model trained with torch's OneCycleLR or CyclicLR has; and the client's models
read `momentum` and `weight_decay` from every answer that carries them."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler

from lrpilot_client import Client
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.client.test_integrations_torch import model_and_optimizer, train_step

STEPS = 60


@pytest.fixture
def client(module_server: Any) -> Iterator[Client]:
    with Client(module_server.url) as c:
        yield c


class Held:
    """What every param group held when optimizer.step() ran: lr, momentum (or betas[0]) and
    weight decay, a step a row."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.rows: list[list[tuple[float, float, float]]] = []
        optimizer.register_step_pre_hook(self.hook)

    def hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.rows.append(
            [
                (
                    float(g["lr"]),
                    float(g["betas"][0] if "betas" in g else g["momentum"]),
                    float(g["weight_decay"]),
                )
                for g in optimizer.param_groups
            ]
        )


def trained(make_scheduler: Any, kind: type[torch.optim.Optimizer], lrs: list[float]) -> Held:
    layers, optimizer = model_and_optimizer(lrs, kind)
    scheduler = make_scheduler(optimizer)
    held = Held(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(STEPS):
            train_step(layers, optimizer, k)
            scheduler.step()
    return held


ONE_CYCLE = {"max_lr": [0.1, 0.05], "total_steps": STEPS + 1, "pct_start": 0.25}
CYCLIC = {"base_lr": 0.001, "max_lr": [0.1, 0.2], "step_size_up": 7, "mode": "triangular2"}


@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.AdamW], ids=["sgd", "adamw"])
@pytest.mark.parametrize(
    "family,params,torch_class",
    [
        ("one_cycle", ONE_CYCLE, lr_scheduler.OneCycleLR),
        ("one_cycle", ONE_CYCLE | {"three_phase": True, "anneal_strategy": "linear"}, None),
        ("cyclic", CYCLIC | {"base_momentum": [0.8, 0.7], "max_momentum": 0.9}, None),
    ],
    ids=["one_cycle", "one_cycle-three_phase-linear", "cyclic"],
)
def test_momentum_at_every_step_is_torchs(
    client: Client,
    request: pytest.FixtureRequest,
    kind: type[torch.optim.Optimizer],
    family: str,
    params: dict[str, Any],
    torch_class: Any,
) -> None:
    reference = torch_class or (
        lr_scheduler.OneCycleLR if family == "one_cycle" else lr_scheduler.CyclicLR
    )
    run_id = f"extras-{request.node.callspec.id}"
    ours = trained(
        lambda opt: LrpilotScheduler(opt, client, run_id, family, 2, params, "val_loss"),
        kind,
        [0.1, 0.1],
    )
    theirs = trained(lambda opt: reference(opt, **params), kind, [0.1, 0.1])
    assert len(ours.rows) == len(theirs.rows) == STEPS
    for k, (a, b) in enumerate(zip(ours.rows, theirs.rows, strict=True)):
        for g, ((lr, m, wd), (t_lr, t_m, t_wd)) in enumerate(zip(a, b, strict=True)):
            # lrpilot computes the curves with its own deterministic kernels (no libm): within an
            # ulp or two of torch (tests/policies/test_extras_torch.py measures it)
            assert m == pytest.approx(t_m, rel=1e-12, abs=0.0), f"step {k} group {g}: momentum"
            assert lr == pytest.approx(t_lr, rel=1e-12, abs=0.0), f"step {k} group {g}: lr"
            assert wd == t_wd, f"step {k} group {g}: weight decay"  # not scheduled: untouched


def test_weight_decay_ramp_reaches_the_optimizer_and_every_answer(client: Client) -> None:
    params = {
        "max_lr": 0.1,
        "total_steps": STEPS + 1,
        "cycle_momentum": False,
        "start_wd": 0.0,
        "end_wd": 0.1,
        "wd_incr_style": "linear",
        "wd_incr_steps": 40,
    }

    def wd(k: int) -> float:  # Megatron's get_wd, linear: 0.0 + (k / 40) * (0.1 - 0.0)
        return 0.1 if k > 40 else 0.0 + (float(k) / float(40)) * 0.1

    layers, optimizer = model_and_optimizer([0.1], torch.optim.AdamW)
    scheduler = LrpilotScheduler(optimizer, client, "extras-wd", "one_cycle", 2, params, "loss")
    held = Held(optimizer)
    for k in range(STEPS):
        train_step(layers, optimizer, k)
        scheduler.step()
        if k == 30:
            decision = scheduler.observe(1.5)
            assert decision.weight_decay == (wd(31),)
            assert decision.momentum is None  # not scheduled: absent
    assert [row[0][2] for row in held.rows] == [wd(k) for k in range(STEPS)]
    assert [row[0][1] for row in held.rows] == [0.9] * STEPS  # AdamW's betas[0], untouched
    at = client.lr_at("extras-wd", 20)
    assert at.weight_decay == (wd(20),) and at.momentum is None
    block = client.lrs_range("extras-wd", 38, 4)
    assert block.weight_decay == tuple((wd(k),) for k in range(38, 42))
    assert block.extras_at(40) == {"weight_decay": (0.1,)}
    (last,) = client.decisions("extras-wd").items
    assert last.weight_decay == decision.weight_decay
    simulated = client.simulate("one_cycle", 2, params, [0.1], [1.0, 2.0])
    assert [d.weight_decay for d in simulated.items] == [(wd(1),), (wd(2),)]


def test_an_optimizer_without_momentum_is_refused_as_torch_refuses_it(client: Client) -> None:
    _, optimizer = model_and_optimizer([0.1], torch.optim.Adagrad)
    with pytest.raises(ValueError, match="neither momentum nor betas"):
        LrpilotScheduler(
            optimizer, client, "extras-adagrad", "one_cycle", 2, ONE_CYCLE | {"max_lr": 0.1}
        )


def test_the_transformers_callback_writes_the_momentum_through_the_scheduler(
    client: Client, tmp_path: Any
) -> None:
    """The transformers and Lightning callbacks go through LrpilotScheduler: the Trainer's
    AdamW holds the run's betas[0] at every step, over whatever the Trainer's own scheduler
    wrote."""
    from transformers import Trainer

    from lrpilot_client.integrations.transformers import LrpilotCallback
    from tests.client.test_integrations_frameworks import Tokens, hf_args, tiny_bert

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
        args=hf_args(tmp_path, lr_scheduler_type="constant", max_steps=12, eval_steps=6),
        train_dataset=Tokens(48, 1),
        eval_dataset=Tokens(8, 2),
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
    from tests.client.test_integrations_frameworks import keras_data, keras_model

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
