"""More than the lr through the client: a model trained with LrpilotScheduler on one_cycle@2 or
cyclic@2 (against the real service, one uvicorn subprocess for the module) has, at every
optimizer step, the lrs, momentum (SGD's `momentum`, Adam's `betas[0]`) and weight decay that
an identical model trained with torch's OneCycleLR or CyclicLR has; and the client's models
read `momentum` and `weight_decay` from every answer that carries them."""

from __future__ import annotations

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
