"""``inverse_sqrt@1`` (lrpilot.policies.inverse_sqrt), differentially: form transformers against
transformers' get_inverse_sqrt_schedule (the same floats), form fairseq against fairseq's
InverseSquareRootSchedule.step_update and form noam against The Annotated Transformer's rate
through a LambdaLR (a few ulps: their powers are libm's pow); its refusals; a run."""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers.optimization import get_inverse_sqrt_schedule

from lrpilot.policies import get_policy
from lrpilot.policies.base import MAX_STEP
from tests.helpers import refusal_names

POLICY = get_policy("inverse_sqrt", 1)
ULP = 2.0**-52
BASE = (0.1, 7e-4)
STEPS = 3000


def ours(params: dict[str, Any], base: tuple[float, ...], steps: range) -> list[list[float]]:
    p = POLICY.resolve(params, base)
    state = POLICY.init(p, base)
    return [list(POLICY.lrs_at(p, state, k)) for k in steps]


def lambda_lr(
    make: Callable[[torch.optim.Optimizer], Any], base: tuple[float, ...]
) -> list[list[float]]:
    """The lrs a LambdaLR sets over STEPS steps (stepped, as a training loop does)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in base]
    opt = torch.optim.SGD(groups, lr=base[0])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepped without an optimizer step: lrs only
        sched = make(opt)
        for k in range(STEPS):
            if k:
                sched.step()
            out.append([float(g["lr"]) for g in opt.param_groups])
    return out


TRANSFORMERS_GRID = [(w, t) for w in (0, 1, 10, 100, 1000) for t in (None, 1, 77, 1000, 5000)]


def test_form_transformers_is_transformers_bit_for_bit() -> None:
    compared = 0
    for w, t in TRANSFORMERS_GRID:
        params = {"num_warmup_steps": w, "timescale": t}
        theirs = lambda_lr(lambda opt, w=w, t=t: get_inverse_sqrt_schedule(opt, w, t), BASE)
        assert ours(params, BASE, range(STEPS)) == theirs, params
        compared += STEPS
    assert compared == 75_000


def fairseq_lrs(lr: float, warmup_updates: int, warmup_init_lr: float, k: int) -> float:
    """fairseq/optim/lr_scheduler/inverse_square_root_schedule.py, its arithmetic."""
    lr_step = (lr - warmup_init_lr) / warmup_updates
    decay_factor = lr * warmup_updates**0.5
    if k < warmup_updates:
        return warmup_init_lr + k * lr_step
    return decay_factor * k**-0.5


def test_form_fairseq_is_fairseqs_formula_within_two_ulps() -> None:
    worst = 0.0
    for w in (1, 10, 100, 4000):
        for init in (0.0, 1e-7, 1e-4):
            params = {"form": "fairseq", "num_warmup_steps": w, "warmup_init_lr": init}
            for k, lrs in enumerate(ours(params, BASE, range(STEPS + 2000))):
                for got, b in zip(lrs, BASE, strict=True):
                    want = fairseq_lrs(b, w, init, k)
                    assert abs(got - want) <= 2 * ULP * want, (params, k, got, want)
                    worst = max(worst, abs(got - want) / want if want else 0.0)
    assert worst < 4.5e-16  # 1 / sqrt(k) where fairseq has pow(k, -0.5): an ulp or two


def test_form_noam_is_the_annotated_transformers_rate_within_four_ulps() -> None:
    for w in (1, 400, 4000):
        for d in (1, 512, 1000):

            def rate(step: int, w: int = w, d: int = d) -> float:
                if step == 0:
                    step = 1
                return d ** (-0.5) * min(step ** (-0.5), step * w ** (-1.5))

            # The Annotated Transformer's factor is the base lr (its optimizer's lr is 1.0)
            theirs = lambda_lr(
                lambda opt, rate=rate: torch.optim.lr_scheduler.LambdaLR(opt, rate), BASE
            )
            params = {"form": "noam", "num_warmup_steps": w, "d_model": d}
            for k, (a, b) in enumerate(zip(ours(params, BASE, range(STEPS)), theirs, strict=True)):
                for x, y in zip(a, b, strict=True):
                    assert abs(x - y) <= 4 * ULP * y, (params, k, x, y)


def test_form_t5_is_t5s_rsqrt() -> None:
    """T5's 1 / sqrt(max(step, warmup)): 0.01 through 10,000 warmup steps, then the decay."""
    lrs = [x for (x,) in ours({"form": "t5", "num_warmup_steps": 10_000}, (1.0,), range(40_001))]
    assert lrs[:10_001] == [0.01] * 10_001 and lrs[40_000] == 0.005
    assert all(a > b for a, b in itertools.pairwise(lrs[10_000:]))


def test_params_are_transformers_arguments_with_its_defaults() -> None:
    sig = inspect.signature(get_inverse_sqrt_schedule).parameters
    schema = POLICY.params_schema()
    assert {k for k in sig if k not in ("optimizer", "last_epoch")} <= set(schema["properties"])
    assert POLICY.defaults()["timescale"] is sig["timescale"].default is None
    assert schema["required"] == ["num_warmup_steps"]
    for example in schema["examples"]:
        POLICY.resolve(example, BASE)


def test_large_steps_and_the_ends() -> None:
    assert ours({"num_warmup_steps": 100}, (1.0,), range(0, 1)) == [[0.0]]
    (at_w,) = ours({"num_warmup_steps": 100}, (1.0,), range(100, 101))
    assert at_w == [1.0]  # the peak: 1 / sqrt(100 / 100)
    (far,) = ours({"num_warmup_steps": 100}, (1.0,), range(MAX_STEP, MAX_STEP + 1))
    assert far == [1.0 / (2.0**31 / 10.0)]  # sqrt((2**62 + 0) / 100) is 2**31 / 10, rounded


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({}, "num_warmup_steps", "required"),
        ({"num_warmup_steps": -1}, "num_warmup_steps", "greater than or equal to 0"),
        ({"num_warmup_steps": 10, "timescale": 0}, "timescale", "greater than or equal to 1"),
        ({"num_warmup_steps": 10, "form": "noam"}, "d_model", "needs d_model"),
        ({"num_warmup_steps": 0, "form": "fairseq"}, "num_warmup_steps", "divides by it"),
        (
            {"num_warmup_steps": 1, "form": "noam", "d_model": 8, "timescale": 3},
            "timescale",
            "form transformers'",
        ),
        ({"num_warmup_steps": 1, "warmup_init_lr": 0.1}, "warmup_init_lr", "form fairseq's"),
        ({"num_warmup_steps": 1, "d_model": 512}, "d_model", "form noam's"),
        ({"num_warmup_steps": 1, "form": "rsqrt"}, "form", "Input should be"),
        ({"num_warmup_steps": 1, "last_epoch": 0}, "last_epoch", "not a param here"),
    ],
)
def test_resolve_refuses_and_names_the_field(
    params: dict[str, Any], field: str, words: str
) -> None:
    assert refusal_names(POLICY, params, BASE, field, words)


def test_a_run_and_a_simulation_through_the_service(api: TestClient) -> None:
    params = {"form": "noam", "num_warmup_steps": 40, "d_model": 64}
    spec = {"policy": {"name": "inverse_sqrt", "version": 1, "params": params}, "base_lrs": [2.0]}
    assert api.put("/v1/runs/noam", json=spec).status_code == 201
    want = ours(params, (2.0,), range(300))
    page = api.get("/v1/runs/noam/lrs?from=0&count=300").json()
    assert page["lrs"] == want and page["open_loop"] is True and page["certain_through"] == 299
    for k in (10, 40, 41, 290):
        d = api.post("/v1/runs/noam/observations", json={"step": k, "value": 1.0}).json()
        assert d["lrs"] == want[k] and d["reason"].startswith(f"inverse_sqrt schedule at step {k}")
    assert [d["action"] for d in api.get("/v1/runs/noam/decisions").json()["items"]] == [
        "warmup", "warmup", "decay", "decay"
    ]  # fmt: skip
    assert api.post("/v1/runs/noam/verify").status_code == 200
    body = {"policy": spec["policy"], "base_lrs": [2.0], "values": [1.0, 1.0], "steps": [5, 500]}
    sim = api.post("/v1/simulate", json=body).json()
    assert [i["lrs"] for i in sim["items"]] == [want[5], ours(params, (2.0,), range(500, 501))[0]]
    bad = {"policy": {"name": "inverse_sqrt", "version": 1, "params": {"num_warmup_steps": 5,
           "form": "noam"}}, "base_lrs": [1.0]}  # fmt: skip
    r = api.put("/v1/runs/noam-bad", json=bad)
    assert r.status_code == 422 and "d_model" in r.text
