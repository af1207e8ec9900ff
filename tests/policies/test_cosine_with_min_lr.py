"""``cosine_with_min_lr@1`` (lrpilot.policies.cosine_with_min_lr), differentially against
transformers' get_cosine_with_min_lr_schedule_with_warmup over a grid; its warmup shapes; its
refusals; a run through the service."""

from __future__ import annotations

import inspect
import itertools
import math
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from lrpilot.policies import get_policy
from lrpilot.policies.base import MAX_STEP
from tests.helpers import refusal_names

POLICY = get_policy("cosine_with_min_lr", 1)
ULP = 2.0**-52
BASE = (0.1, 0.003)


def ours(params: dict[str, Any], base: tuple[float, ...], steps: range) -> list[tuple[float, ...]]:
    p = POLICY.resolve(params, base)
    state = POLICY.init(p, base)
    return [POLICY.lrs_at(p, state, k) for k in steps]


GRID = list(itertools.product((0, 10, 100), (200, 1000), (0.5, 1.3), (0.0, 0.1)))


def test_against_transformers_over_a_grid() -> None:
    """Warmups 0, 10, 100 x horizons 200, 1000 x num_cycles 0.5, 1.3 x min_lr_rate 0, 0.1, every
    step to twice the horizon: the warmup is the same float, the cosine within 8 ulps of the
    base lr (transformers rounds its angle, pi * num_cycles * 2.0 * p, and calls libm's cos)."""
    compared = exact = 0
    for w, t, c, m in GRID:
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in BASE]
        opt = torch.optim.SGD(groups, lr=BASE[0])
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, w, t, c, min_lr_rate=m)
        pairs = list(zip(sched.base_lrs, sched.lr_lambdas, strict=True))
        params = {"num_warmup_steps": w, "num_training_steps": t, "num_cycles": c, "min_lr_rate": m}
        for k, got in enumerate(ours(params, BASE, range(2 * t - w + 1))):
            want = [b * f(k) for b, f in pairs]
            compared += 1
            if k < w:
                assert list(got) == want, (params, k)
            for x, y, b in zip(got, want, BASE, strict=True):
                assert abs(x - y) <= 8 * ULP * b, (params, k, x, y)
            exact += list(got) == want
    assert compared == 27_944 and exact > 7_000


def test_params_are_transformers_arguments_with_its_defaults() -> None:
    sig = inspect.signature(get_cosine_with_min_lr_schedule_with_warmup).parameters
    theirs = {k for k in sig if k not in ("optimizer", "last_epoch", "min_lr")}
    schema = POLICY.params_schema()
    assert theirs <= set(schema["properties"]) and "min_lr" not in schema["properties"]
    assert POLICY.defaults()["num_cycles"] == sig["num_cycles"].default
    assert set(schema["required"]) == {"num_warmup_steps", "num_training_steps", "min_lr_rate"}


def test_warmup_shapes_and_far_steps() -> None:
    base = (1.0,)
    common = {"num_warmup_steps": 100, "num_training_steps": 1100, "min_lr_rate": 0.01}
    (lin, cos, sqrt, expo) = (
        ours({**common, "warmup_type": kind}, base, range(50, 51))[0][0]
        for kind in ("linear", "cosine", "1-sqrt", "exponential")
    )
    assert lin == 0.5 and abs(cos - 0.5) <= ULP and sqrt == 1.0 - math.sqrt(0.5)
    assert math.isclose(expo, 0.1, rel_tol=1e-15)  # 0.01 ** 0.5
    at = ours(common, base, range(1100, 1101))[0][0]
    assert at == 0.01  # the floor at the horizon
    # past the horizon the half-cosine rises again (as transformers'), its angle exact at any
    # step: at 100 + 2 * 1000 * n it is back at the peak
    (far,) = ours(common, base, range(100 + 2000 * 10**15, 100 + 2000 * 10**15 + 1))
    assert far == (1.0,) and ours(common, base, range(MAX_STEP, MAX_STEP + 1))[0][0] <= 1.0


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"num_warmup_steps": 1, "num_training_steps": 10}, "min_lr_rate", "required"),
        (
            {"num_warmup_steps": 1, "num_training_steps": 10, "min_lr": 1e-5},
            "min_lr",
            "Extra inputs",
        ),
        (
            {"num_warmup_steps": 20, "num_training_steps": 10, "min_lr_rate": 0.1},
            "num_warmup_steps",
            "would end after",
        ),
        (
            {
                "num_warmup_steps": 1,
                "num_training_steps": 10,
                "min_lr_rate": 0.0,
                "warmup_type": "exponential",
            },
            "warmup_type",
            "min_lr_rate > 0",
        ),
        (
            {"num_warmup_steps": 1, "num_training_steps": 10, "min_lr_rate": 1.5},
            "min_lr_rate",
            "less than or equal",
        ),
    ],
)
def test_resolve_refuses_and_names_the_field(
    params: dict[str, Any], field: str, words: str
) -> None:
    assert refusal_names(POLICY, params, BASE, field, words)


def test_a_run_through_the_service(api: TestClient) -> None:
    params = {"num_warmup_steps": 20, "num_training_steps": 200, "min_lr_rate": 0.1}
    spec = {
        "policy": {"name": "cosine_with_min_lr", "version": 1, "params": params},
        "base_lrs": list(BASE),
    }
    assert api.put("/v1/runs/cmin", json=spec).status_code == 201
    want = [list(lrs) for lrs in ours(params, BASE, range(300))]
    page = api.get("/v1/runs/cmin/lrs?from=0&count=300").json()
    assert page["lrs"] == want and page["certain_through"] == 299
    for k, action in ((10, "warmup"), (20, "warmup"), (150, "decay"), (160, "decay")):
        d = api.post("/v1/runs/cmin/observations", json={"step": k, "value": 0.5}).json()
        assert d["lrs"] == want[k] and d["action"] == action, d
    assert api.post("/v1/runs/cmin/verify").status_code == 200
