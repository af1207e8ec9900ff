"""LrpilotScheduler (lrpilot_client.integrations.torch) with real torch optimizers against the
real service (one uvicorn subprocess for the module, a run id per test).

Every test records the lrs each param group held when `optimizer.step()` ran (a step pre-hook
registered after the scheduler's) and compares them with what the service answers for that
step, GET /v1/runs/{run_id}/lr?step=k, by equality: a float group holds the service's float, a
float64 tensor the same value, a float32 tensor the service's value rounded to float32.
Requests are counted by the client's transport. A run of one_cycle@2 or cyclic@2 also writes
the momentum (SGD's `momentum`, Adam's `betas[0]`) and weight decay into the optimizer: the
same, at every step, as torch's OneCycleLR and CyclicLR write, and under groups@1 each param
group gets its own group's.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch.optim import lr_scheduler

from lrpilot_client import Client
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.harness import LiveServer

LOGGER = "lrpilot_client.integrations"

pytestmark = pytest.mark.filterwarnings(
    # torch.load(weights_only=True) of a state_dict is what the test means
    "ignore:.*weights_only.*:FutureWarning"
)


class Counting(httpx.HTTPTransport):
    """httpx's transport, counting each request as (method, path)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return super().handle_request(request)

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, p in self.requests if m == method and p.endswith(suffix))


@pytest.fixture
def transport() -> Counting:
    return Counting()


@pytest.fixture
def client(module_server: LiveServer, transport: Counting) -> Iterator[Client]:
    with Client(module_server.url, transport=transport) as c:
        yield c


@pytest.fixture
def reader(module_server: LiveServer) -> Iterator[Client]:
    """Another client, for the test's own questions (not counted)."""
    with Client(module_server.url) as c:
        yield c


class Recorder:
    """The lrs of every param group at each optimizer.step(), by training step."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.used: list[list[float]] = []
        self.tensors: list[list[torch.Tensor | None]] = []
        optimizer.register_step_pre_hook(self.hook)

    def hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.used.append([float(g["lr"]) for g in optimizer.param_groups])
        self.tensors.append(
            [g["lr"] if isinstance(g["lr"], torch.Tensor) else None for g in optimizer.param_groups]
        )


def as_held(lr: float, like: Any) -> float:
    """The service's rate as a group holding `like` holds it."""
    if isinstance(like, torch.Tensor):
        return float(torch.tensor(lr, dtype=like.dtype))
    return lr


def model_and_optimizer(
    lrs: list[Any], kind: type[torch.optim.Optimizer] = torch.optim.SGD, seed: int = 0
) -> tuple[list[torch.nn.Linear], torch.optim.Optimizer]:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(4, 4) for _ in lrs]
    groups = [
        {"params": layer.parameters(), "lr": lr} for layer, lr in zip(layers, lrs, strict=True)
    ]
    kwargs: dict[str, Any] = {"momentum": 0.9} if kind is torch.optim.SGD else {}
    return layers, kind(groups, lr=0.0, **kwargs)


def train_step(layers: list[torch.nn.Linear], optimizer: torch.optim.Optimizer, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    x = torch.randn(8, 4, generator=g)
    loss = sum(((layer(x) - x.flip(1)) ** 2).mean() for layer in layers)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()


def served(reader: Client, run_id: str, step: int) -> list[float]:
    return reader.lrs(run_id, step)


def check_used(reader: Client, recorder: Recorder, runs: dict[int, str], first: int = 0) -> None:
    """The lrs used at steps first.. equal the service's; `runs` maps a step to the run in
    charge from that step on."""
    starts = sorted(runs)
    for i, (used, tensors) in enumerate(zip(recorder.used, recorder.tensors, strict=True)):
        step = first + i
        run_id = runs[max(s for s in starts if s <= step)]
        expected = served(reader, run_id, step)
        held = [as_held(lr, t) for lr, t in zip(expected, tensors, strict=True)]
        assert used == held, f"step {step}, run {run_id}: used {used}, service {expected}"


def superseded(module_server: LiveServer, run_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{module_server.url}/v1/runs/{run_id}/decisions", params={"superseded": "true"})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_cosine_every_step_with_tensor_lrs_and_a_request_per_block(
    client: Client, reader: Client, transport: Counting
) -> None:
    f64 = torch.tensor(0.05, dtype=torch.float64)
    f32 = torch.tensor(0.02, dtype=torch.float32)
    layers, opt = model_and_optimizer([0.1, f64, f32], torch.optim.Adam)
    sched = LrpilotScheduler(
        opt, client, "cosine-tensors", policy="cosine", params={"T_max": 200, "eta_min": 1e-4},
        ahead=128,
    )  # fmt: skip
    rec = Recorder(opt)
    for k in range(300):
        train_step(layers, opt, k)
        sched.step()
    assert sched.last_epoch == 300
    # the very tensors the optimizer was given, written in place, their dtype kept
    assert opt.param_groups[1]["lr"] is f64 and opt.param_groups[2]["lr"] is f32
    assert all(t[1] is f64 and t[2] is f32 for t in rec.tensors)
    assert f64.dtype == torch.float64 and f32.dtype == torch.float32
    check_used(reader, rec, {0: "cosine-tensors"})
    # torch's own CosineAnnealingLR over the same steps (closed form vs recursive: close)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=200, eta_min=1e-4)
    for used in rec.used:
        assert math.isclose(used[0], ref_opt.param_groups[0]["lr"], rel_tol=1e-9)
        ref_opt.step()
        ref.step()
    assert len({round(u[0], 12) for u in rec.used}) > 150  # a new rate (nearly) every step
    # 301 steps' rates (0..300) in blocks of 128: three GET /lrs and the PUT, nothing else
    assert transport.count("GET", "/lrs") == sched.fetches == 3
    assert transport.count("PUT") == 1
    assert len(transport.requests) == 4
    assert sched.get_last_lr()[0] == served(reader, "cosine-tensors", 300)[0]


WARMUP_THEN_PLATEAU = {
    "phases": [
        {
            "policy": {"name": "linear", "version": 1,
                       "params": {"start_factor": 0.1, "total_iters": 40}},
            "until_step": 40,
        },
        {"policy": {"name": "plateau", "version": 1, "params": {"patience": 1, "factor": 0.5}}},
    ]
}  # fmt: skip
# one value an evaluation (every 20 steps): improves, then stalls so that plateau reduces twice
VAL_LOSSES = [1.0, 0.8, 0.7, 0.7, 0.71, 0.72, 0.7, 0.7, 0.69, 0.7]


def test_warmup_then_plateau_every_step_few_requests_decisions_logged(
    client: Client, reader: Client, transport: Counting, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    layers, opt = model_and_optimizer([0.1, 0.01])
    sched = LrpilotScheduler(
        opt, client, "warm-plateau", policy="sequence", params=WARMUP_THEN_PLATEAU,
        metric="val_loss",
    )  # fmt: skip
    rec = Recorder(opt)
    decisions = []
    for k in range(200):
        train_step(layers, opt, k)
        sched.step()
        if sched.last_epoch % 20 == 0:
            loss = torch.tensor(VAL_LOSSES[k // 20], dtype=torch.float64)  # a 0-dim tensor
            decisions.append(sched.observe(loss))
    check_used(reader, rec, {0: "warm-plateau"})
    assert rec.used[0] == [0.1 * 0.1, 0.01 * 0.1]  # the warmup's first rate
    assert [d.action for d in decisions].count("reduce") == 2
    assert rec.used[-1] == [0.025, 0.0025]
    # the service logged every evaluation, at the step it was posted
    log = list(reader.iter_decisions("warm-plateau"))
    assert [(d.step, d.value, d.action) for d in log] == [
        (20 * (i + 1), v, d.action)
        for i, (v, d) in enumerate(zip(VAL_LOSSES, decisions, strict=True))
    ]
    # 200 steps: the PUT, a POST per evaluation, a GET after each and the first: not 200
    assert transport.count("POST", "/observations") == 10
    assert transport.count("GET", "/lrs") == sched.fetches == 11
    assert len(transport.requests) == 22
    assert sum("val_loss 0.7 ->" in r.getMessage() for r in caplog.records) >= 3
    assert reader.verify("warm-plateau", head=sched.head_hash()).ok


def test_reduce_on_plateau_style_matches_torch(client: Client) -> None:
    """step(metrics) once an epoch, as ReduceLROnPlateau is used: the same lrs as torch's."""
    values = [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.92, 0.5, 0.5, 0.6, 0.7, 0.8, float("nan"), 0.4]
    params = {"patience": 1, "factor": 0.5, "cooldown": 1, "min_lr": [0.0, 0.002]}
    _, ours = model_and_optimizer([0.1, 0.01])
    _, theirs = model_and_optimizer([0.1, 0.01])
    sched = LrpilotScheduler(ours, client, "rop-style", params=params, metric="val_loss")
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **params)  # type: ignore[arg-type]
    for v in values:
        ours.step()  # (no gradients: nothing moves) the order torch expects
        sched.step(v)
        ref.step(v)
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    assert sched.last_epoch == len(values)
    assert ours.param_groups[1]["lr"] == 0.002  # at its floor


def save(
    sched: LrpilotScheduler, opt: torch.optim.Optimizer, layers: list[torch.nn.Linear]
) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {
            "scheduler": sched.state_dict(),
            "optimizer": opt.state_dict(),
            "model": [layer.state_dict() for layer in layers],
        },
        buf,
    )
    return buf.getvalue()


def load(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
    return out


def train(
    layers: list[torch.nn.Linear],
    opt: torch.optim.Optimizer,
    sched: LrpilotScheduler,
    steps: range,
    values: list[float],
    *,
    save_at: int | None = None,
    unfreeze: tuple[int, torch.nn.Linear] | None = None,
) -> bytes:
    """Train over ``steps`` with an evaluation every 10 steps, the i-th after ``steps.start``
    posting ``values[i]``; ``unfreeze`` (step, layer) adds the layer as a new param group (lr 0.2)
    before that step. Returns the checkpoint saved when the scheduler reached ``save_at``."""
    checkpoint = b""
    for k in steps:
        if unfreeze is not None and k == unfreeze[0]:  # gradual unfreezing: a group between steps
            opt.add_param_group({"params": unfreeze[1].parameters(), "lr": 0.2})
            layers.append(unfreeze[1])
        train_step(layers, opt, k)
        sched.step()
        if sched.last_epoch % 10 == 0:
            sched.observe(values[(sched.last_epoch - steps.start) // 10 - 1])
        if sched.last_epoch == save_at:
            checkpoint = save(sched, opt, layers)
    return checkpoint


def test_state_dict_round_trip_and_resume_from_an_older_checkpoint_rewinds(
    client: Client, reader: Client, module_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    run = "resume-me"
    params = {"patience": 1, "factor": 0.5}
    layers, opt = model_and_optimizer([0.1, torch.tensor(0.01, dtype=torch.float64)])
    sched = LrpilotScheduler(opt, client, run, params=params, metric="val_loss", ahead=50)
    first = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9]  # at steps 10..60: reduces at 40 and 60
    checkpoint = train(layers, opt, sched, range(60), first, save_at=30)
    at_30 = load(checkpoint)["scheduler"]
    assert at_30["run_id"] == run and at_30["last_epoch"] == 30 and at_30["observed_step"] == 30
    assert at_30["head_hash"] == next(d.hash for d in reader.iter_decisions(run) if d.step == 30)

    # state_dict round trip: a new scheduler (a restart at step 60) takes the state over
    state = sched.state_dict()
    _, opt2 = model_and_optimizer([0.1, torch.tensor(0.01, dtype=torch.float64)])
    again = LrpilotScheduler(opt2, client, run, params=params, metric="val_loss")
    opt2.load_state_dict(opt.state_dict())
    again.load_state_dict(state)
    assert again.state_dict() == state
    assert [float(g["lr"]) for g in opt2.param_groups] == served(reader, run, 60) == [0.025, 0.0025]
    assert superseded(module_server, run) == []  # step 60 is the run's last: nothing to rewind

    # resume from the checkpoint at step 30: the run goes back to its state after step 30
    saved = load(checkpoint)
    layers3, opt3 = model_and_optimizer([0.1, torch.tensor(0.01, dtype=torch.float64)])
    resumed = LrpilotScheduler(opt3, client, run, params=params, metric="val_loss", ahead=50)
    for layer, sd in zip(layers3, saved["model"], strict=True):
        layer.load_state_dict(sd)
    opt3.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert resumed.last_epoch == 30
    assert [float(g["lr"]) for g in opt3.param_groups] == [0.1, 0.01]  # as at step 30
    gone = superseded(module_server, run)
    assert [(d["step"], d["value"]) for d in gone] == [(40, 0.9), (50, 0.9), (60, 0.9)]
    rewinds = list(reader.iter_decisions(run, action="rewind"))
    assert len(rewinds) == 1 and rewinds[0].rewind is not None
    assert rewinds[0].rewind["to_step"] == 30 and rewinds[0].rewind["superseded"] == 3
    assert any("rewound to step 30" in r.getMessage() for r in caplog.records)

    # the resumed job sees other values this time: no conflict, and its own lrs
    rec = Recorder(opt3)
    second = [0.8, 0.7, 0.7, 0.7]  # at steps 40..70
    train(layers3, opt3, resumed, range(30, 70), second)
    check_used(reader, rec, {0: run}, first=30)
    assert [float(g["lr"]) for g in opt3.param_groups] == [0.05, 0.005]  # reduced at 70 only
    live = [(d.step, d.value) for d in reader.iter_decisions(run) if d.action != "rewind"]
    assert live[-4:] == [(40, 0.8), (50, 0.7), (60, 0.7), (70, 0.7)]
    assert reader.verify(run, head=resumed.head_hash()).ok


def test_a_param_group_added_mid_run_continues_on_a_derived_run(
    client: Client, reader: Client, module_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    run, derived = "unfreeze", "unfreeze.g3"
    params = {"patience": 1, "factor": 0.5}
    layers, opt = model_and_optimizer([0.1, 0.01])
    head = torch.nn.Linear(4, 4)
    sched = LrpilotScheduler(
        opt, client, run, params=params, metric="val_loss", labels={"team": "vision"}
    )
    rec = Recorder(opt)
    values = [1.0, 1.0, 1.0, 0.9, 0.9, 0.9]  # at steps 10..60: reduces at 30 and 60
    checkpoint = train(layers, opt, sched, range(60), values, save_at=20, unfreeze=(35, head))
    assert sched.run_id == derived and sched.root_run_id == run
    check_used(reader, rec, {0: run, 35: derived})
    assert rec.used[34] == [0.05, 0.005]
    assert rec.used[35] == [0.05, 0.005, 0.1]  # the new group reduced as the others were
    assert rec.used[-1] == [0.05, 0.005, 0.1]  # step 59; the evaluation at 60 reduces:
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.0025, 0.05]

    # reported to the service: the derived run, its lineage, the parent's history replayed
    child = reader.get_run(derived)
    assert child.base_lrs == (0.1, 0.01, 0.2) and child.metric == "val_loss"
    assert child.policy.name == "plateau" and child.policy.params["patience"] == 1
    assert dict(child.labels) == {
        "team": "vision", "lrpilot.parent_run": run, "lrpilot.root_run": run,
    }  # fmt: skip
    parent_log = [(d.step, d.value, d.lrs) for d in reader.iter_decisions(run)]
    child_log = [(d.step, d.value, d.lrs) for d in reader.iter_decisions(derived)]
    assert [(s, v) for s, v, _ in parent_log] == [(10, 1.0), (20, 1.0), (30, 1.0)]
    assert [(s, v) for s, v, _ in child_log] == [(10 * (i + 1), v) for i, v in enumerate(values)]
    assert [lrs[:2] for _, _, lrs in child_log[:3]] == [lrs for _, _, lrs in parent_log]
    # and logged
    added = [r.getMessage() for r in caplog.records if "param group(s) added" in r.getMessage()]
    assert len(added) == 1
    assert "step 35" in added[0] and "'unfreeze' continues as run 'unfreeze.g3'" in added[0]
    assert "3 observation(s)" in added[0]

    # a restart whose optimizer already has the three groups finds the derived run
    _, opt2 = model_and_optimizer([0.1, 0.01, 0.2])
    restarted = LrpilotScheduler(opt2, client, run, params=params, metric="val_loss",
                                 labels={"team": "vision"})  # fmt: skip
    assert restarted.run_id == derived
    restarted.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [0.025, 0.0025, 0.05]

    # a job resumed from before the unfreezing (step 20) forks again, differently
    saved = load(checkpoint)
    layers3, opt3 = model_and_optimizer([0.1, 0.01])
    resumed = LrpilotScheduler(opt3, client, run, params=params, metric="val_loss",
                               labels={"team": "vision"})  # fmt: skip
    opt3.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert resumed.run_id == run and resumed.last_epoch == 20
    assert [(d["step"], d["value"]) for d in superseded(module_server, run)] == [(30, 1.0)]
    rec3 = Recorder(opt3)
    head3 = torch.nn.Linear(4, 4)
    again = [0.8, 0.8, 0.8, 0.8]  # at steps 30..60: this time 30 improves
    train(layers3, opt3, resumed, range(20, 60), again, unfreeze=(40, head3))
    assert resumed.run_id == derived
    check_used(reader, rec3, {0: run, 40: derived}, first=20)
    live = [(d.step, d.value) for d in reader.iter_decisions(derived) if d.action != "rewind"]
    assert live[-4:] == [(30, 0.8), (40, 0.8), (50, 0.8), (60, 0.8)]
    rewind = list(reader.iter_decisions(derived, action="rewind"))
    assert rewind and rewind[-1].rewind is not None and rewind[-1].rewind["to_step"] == 20
    assert reader.verify(derived, head=resumed.head_hash()).ok

    # groups cannot be removed
    opt3.param_groups.pop()
    with pytest.raises(RuntimeError, match="cannot be removed"):
        resumed.step()


def test_a_checkpoint_of_another_run_is_refused(client: Client, tmp_path: Path) -> None:
    _, opt = model_and_optimizer([0.1])
    a = LrpilotScheduler(opt, client, "run-a", policy="constant", params={"factor": 1.0})
    _, opt2 = model_and_optimizer([0.1])
    b = LrpilotScheduler(opt2, client, "run-b", policy="constant", params={"factor": 1.0})
    with pytest.raises(ValueError, match="'run-a'"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="not an LrpilotScheduler"):
        b.load_state_dict({"last_epoch": 3})


def test_an_elastic_restart_on_fewer_ranks_rescales_from_the_checkpoint_on(
    client: Client, reader: Client, module_server: LiveServer
) -> None:
    run, scaling = "elastic-job", {"rule": "linear", "by": "world_size", "base": 2}
    params = {"T_max": 100, "eta_min": 0.001}
    reader.create_run("elastic-ref", "cosine", params=params, base_lrs=[0.1, 0.01])
    reference = reader.lrs_ahead("elastic-ref", 0, 60).lrs  # the same schedule, never scaled

    def used_as(factor: float, rec: Recorder, first: int) -> None:
        for i, (used, tensors) in enumerate(zip(rec.used, rec.tensors, strict=True)):
            want = [lr * factor for lr in reference[first + i]]
            assert used == [as_held(lr, t) for lr, t in zip(want, tensors, strict=True)], i

    def train(world_size: int, steps: range, checkpoint: bytes | None = None) -> Recorder:
        """The job on `world_size` ranks for `steps`, resumed from `checkpoint` if given (a
        tensor lr is written in place: each optimizer gets its own)."""
        layers, opt = model_and_optimizer([0.1, torch.tensor(0.01, dtype=torch.float64)])
        sched = LrpilotScheduler(
            opt, client, run, "cosine", params=params, scaling=scaling, world_size=world_size
        )
        if checkpoint is not None:
            saved = load(checkpoint)
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
        assert sched.last_epoch == steps.start
        rec = Recorder(opt)
        for k in steps:
            train_step(layers, opt, k)
            sched.step()
            if sched.last_epoch == 20:
                saved_at[20] = save(sched, opt, layers)
        return rec

    saved_at: dict[int, bytes] = {}
    used_as(2.0, train(4, range(30)), 0)  # 4 ranks where the lrs were tuned for 2

    # an elastic launcher restarts the job on 1 rank, from the checkpoint at step 20
    at_20 = saved_at[20]
    rec = train(1, range(20, 50), at_20)
    used_as(0.5, rec, 20)
    check_used(reader, rec, {0: run}, first=20)
    log = [(d.step, d.action, d.scale) for d in reader.iter_decisions(run)]
    assert log == [(0, "scale", 2.0), (20, "scale", 0.5)]  # from where the job resumed
    assert reader.verify(run).ok

    # a restart from the same checkpoint on 3 ranks: the resize at 20 is superseded
    used_as(1.5, train(3, range(20, 30), at_20), 20)
    log = [(d.step, d.action, d.scale) for d in reader.iter_decisions(run)]
    assert log[2:] == [(19, "rewind", 2.0), (20, "scale", 1.5)]
    assert [d["step"] for d in superseded(module_server, run)] == [20]
    assert reader.verify(run).ok


# -- more than the lr: one_cycle@2 and cyclic@2 against torch's OneCycleLR and CyclicLR --------

EXTRAS_STEPS = 60


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
        for k in range(EXTRAS_STEPS):
            train_step(layers, optimizer, k)
            scheduler.step()
    return held


ONE_CYCLE = {"max_lr": [0.1, 0.05], "total_steps": EXTRAS_STEPS + 1, "pct_start": 0.25}
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
    assert len(ours.rows) == len(theirs.rows) == EXTRAS_STEPS
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
        "total_steps": EXTRAS_STEPS + 1,
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
    for k in range(EXTRAS_STEPS):
        train_step(layers, optimizer, k)
        scheduler.step()
        if k == 30:
            decision = scheduler.observe(1.5)
            assert decision.weight_decay == (wd(31),)
            assert decision.momentum is None  # not scheduled: absent
    assert [row[0][2] for row in held.rows] == [wd(k) for k in range(EXTRAS_STEPS)]
    assert [row[0][1] for row in held.rows] == [0.9] * EXTRAS_STEPS  # AdamW's betas[0], untouched
    at = client.lr_at("extras-wd", 20)
    assert at.weight_decay == (wd(20),) and at.momentum is None
    block = client.lrs_range("extras-wd", 38, 4)
    assert block.weight_decay == tuple((wd(k),) for k in range(38, 42))
    assert block.extras_at(40) == {"weight_decay": (0.1,)}
    (last,) = client.decisions("extras-wd").items
    assert last.weight_decay == decision.weight_decay
    simulated = client.simulate("one_cycle", 2, params, [0.1], [1.0, 2.0])
    assert [d.weight_decay for d in simulated.items] == [(wd(1),), (wd(2),)]


def test_under_groups_each_param_group_gets_its_own_policys_momentum(client: Client) -> None:
    """groups@1 with the backbone on cyclic@2 and the head on one_cycle@2: each param group's
    lr and momentum are what torch's CyclicLR and OneCycleLR give that group alone."""
    backbone = CYCLIC | {"max_lr": 0.1}
    head = ONE_CYCLE | {"max_lr": 0.05}
    params = {
        "groups": [
            {"name": "backbone", "policy": {"name": "cyclic", "version": 2, "params": backbone}},
            {"name": "head", "policy": {"name": "one_cycle", "version": 2, "params": head}},
        ]
    }
    run_id = "extras-groups"
    sgd = torch.optim.SGD
    ours = trained(
        lambda opt: LrpilotScheduler(opt, client, run_id, "groups", 1, params, "val_loss"),
        sgd,
        [0.1, 0.1],
    )
    alone = [
        trained(lambda opt: lr_scheduler.CyclicLR(opt, **backbone), sgd, [0.1]),
        trained(lambda opt: lr_scheduler.OneCycleLR(opt, **head), sgd, [0.1]),
    ]
    assert len(ours.rows) == EXTRAS_STEPS
    for k, row in enumerate(ours.rows):
        for g, (lr, m, wd) in enumerate(row):
            t_lr, t_m, t_wd = alone[g].rows[k][0]
            assert m == pytest.approx(t_m, rel=1e-12, abs=0.0), f"step {k} group {g}: momentum"
            assert lr == pytest.approx(t_lr, rel=1e-12, abs=0.0), f"step {k} group {g}: lr"
            assert wd == t_wd, f"step {k} group {g}: weight decay"  # not scheduled: untouched
    assert ours.rows[20][0][1] != ours.rows[20][1][1]  # two policies, two momenta
    at = client.lr_at(run_id, 20)
    assert at.momentum == tuple(m for _, m, _ in ours.rows[20]) and at.weight_decay is None


def test_an_optimizer_without_momentum_is_refused_as_torch_refuses_it(client: Client) -> None:
    _, optimizer = model_and_optimizer([0.1], torch.optim.Adagrad)
    with pytest.raises(ValueError, match="neither momentum nor betas"):
        LrpilotScheduler(
            optimizer, client, "extras-adagrad", "one_cycle", 2, ONE_CYCLE | {"max_lr": 0.1}
        )
