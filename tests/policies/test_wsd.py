"""``wsd@1`` (lrpilot.policies.wsd): transformers' get_wsd_schedule, differentially, over a grid
of every setting the two share; the shapes and starts lrpilot adds; the plateau trigger; the
cooldown a run may decide; what resolve refuses; a run through the service."""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers.optimization import get_wsd_schedule

from lrpilot.policies import Observation, PolicyError
from lrpilot.policies.base import MAX_STEP
from lrpilot.policies.wsd import WSD, WsdParams, WsdState
from tests.helpers import plateau_stream, refusal_names

ULP = 2.0**-52
BASE = (0.1, 0.003)


def resolved(params: dict[str, Any], base: tuple[float, ...] = BASE) -> tuple[WsdParams, WsdState]:
    p = WSD.resolve(params, base)
    assert isinstance(p, WsdParams)
    return p, WSD.init(p, base)


def transformers_lrs(
    params: dict[str, Any], base: tuple[float, ...], steps: int
) -> list[list[float]]:
    """What transformers' LambdaLR sets at each step: base_lr * lr_lambda(step)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in base]
    opt = torch.optim.SGD(groups, lr=base[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both horizon and stable steps: transformers warns
        sched = get_wsd_schedule(opt, **params)
    pairs = list(zip(sched.base_lrs, sched.lr_lambdas, strict=True))
    return [[b * f(k) for b, f in pairs] for k in range(steps)]


# the grid: every warmup and decay shape transformers has, with and without a floor, a
# half-cosine and other waves, a horizon or stable steps (or both: the stable steps win), no
# warmup, no decay
GRID = [
    {
        "num_warmup_steps": w,
        "num_decay_steps": d,
        **horizon,
        "warmup_type": wt,
        "decay_type": dt,
        "min_lr_ratio": m,
        "num_cycles": c,
    }
    for wt, (dt, c), m in itertools.product(
        ("linear", "cosine", "1-sqrt"),
        (("linear", 0.5), ("1-sqrt", 0.5), ("cosine", 0.5), ("cosine", 1.3)),
        (0.0, 0.1),
    )
    for w, d, horizon in (
        (100, 500, {"num_training_steps": 1200}),
        (0, 333, {"num_stable_steps": 50}),
        (7, 0, {"num_training_steps": 1000, "num_stable_steps": 10}),
    )
]
STEPS = 1300


def test_the_differential_grid_against_transformers() -> None:
    """Every setting of the grid, every step to 1,300 (past every horizon): linear and 1-sqrt
    shapes are the same float as transformers'; a cosine is within 4 ulps of the base lr
    (transformers' 0.5 * (1 + cos(x)) is libm's cos, lrpilot's a fixed polynomial; near the
    floor transformers' 1 + cos loses digits lrpilot keeps, so the relative difference of a
    tiny lr is larger: the largest is recorded in docs/policies.md)."""
    exact = compared = 0
    worst_rel = 0.0
    for params in GRID:
        p, state = resolved(params)
        theirs = transformers_lrs(params, BASE, STEPS)
        cosine = "cosine" in (params["warmup_type"], params["decay_type"])
        for k in range(STEPS):
            ours = list(WSD.lrs_at(p, state, k))
            compared += 1
            if not cosine:
                assert ours == theirs[k], (params, k)
                exact += 1
                continue
            for a, b, base in zip(ours, theirs[k], BASE, strict=True):
                assert abs(a - b) <= 4 * ULP * base, (params, k, a, b)
                if b:
                    worst_rel = max(worst_rel, abs(a - b) / b)
    assert compared == len(GRID) * STEPS == 93_600 and exact == 31_200
    assert worst_rel < 1e-10  # 2.6e-11: a cosine decay's last step, 1e-6 of the peak


def test_the_lambda_is_what_the_scheduler_sets() -> None:
    """The grid compares with base_lr * lr_lambda(k); transformers' LambdaLR stepped sets that."""
    params = GRID[5]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in BASE]
    opt = torch.optim.SGD(groups, lr=BASE[0])
    want = transformers_lrs(params, BASE, 900)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepped without an optimizer step: lrs only
        sched = get_wsd_schedule(opt, **params)
        for k in range(900):
            if k:
                sched.step()
            assert [g["lr"] for g in opt.param_groups] == want[k]


def test_params_are_transformers_arguments_with_its_defaults() -> None:
    sig = inspect.signature(get_wsd_schedule).parameters
    theirs = {k for k in sig if k not in ("optimizer", "last_epoch")}
    schema = WSD.params_schema()
    assert theirs <= set(schema["properties"])
    defaults = WSD.defaults()
    for name in theirs:
        if sig[name].default is not inspect.Parameter.empty:
            assert defaults[name] == sig[name].default, name
    # transformers requires num_decay_steps too; lrpilot's null is the rest of the horizon, or
    # the length a run decides (a plateau's, a cooldown's)
    assert schema["required"] == ["num_warmup_steps"] and defaults["num_decay_steps"] is None
    for example in schema["examples"]:
        WSD.resolve(example, BASE)


def test_the_shapes_lrpilot_adds() -> None:
    # DeepSeek's: x0.316 at 80% and again at 90% of the horizon, then the floor after it
    p, s = resolved(
        {
            "num_warmup_steps": 20,
            "num_training_steps": 1000,
            "decay_start_fraction": 0.8,
            "decay_type": "step",
        },
        (1.0,),
    )
    at = {k: WSD.lrs_at(p, s, k)[0] for k in (20, 799, 800, 899, 900, 999, 1000)}
    assert at == {20: 1.0, 799: 1.0, 800: 0.316, 899: 0.316, 900: 0.316 * 0.316, 999: 0.316**2,
                  1000: 0.0}  # fmt: skip
    # exponential warmup and decay: geometric between min_lr_ratio and 1
    p, s = resolved(
        {
            "num_warmup_steps": 100,
            "num_stable_steps": 0,
            "num_decay_steps": 100,
            "warmup_type": "exponential",
            "decay_type": "exponential",
            "min_lr_ratio": 0.01,
        },
        (1.0,),
    )
    for k, want in ((0, 0.01), (50, 0.1), (100, 1.0), (150, 0.1), (199, 0.01**0.99), (200, 0.01)):
        assert math.isclose(WSD.lrs_at(p, s, k)[0], want, rel_tol=1e-15), k


def test_without_a_planned_decay_the_lrs_stay_until_one_is_decided() -> None:
    p, s = resolved({"num_warmup_steps": 10})
    assert WSD.lrs_at(p, s, MAX_STEP) == BASE and p.decay_start() is None
    cooled = WSD.cooldown(p, s, 500, 100, "linear", last_step=400)
    assert cooled.decay_start == 500 and WSD.lrs_at(p, cooled, 499) == BASE
    assert WSD.lrs_at(p, cooled, 550) == tuple(b * 0.5 for b in BASE)
    assert WSD.lrs_at(p, cooled, 600) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("at_step", "last_step", "words"),
    [
        (400, 400, "step 400 is already decided"),
        (5, None, "step 5 is in the warmup"),
        (900, 10, "the decay starts at step 800: there is no stable phase left"),
    ],
)
def test_a_cooldown_is_refused_when_its_step_is_past_or_there_is_no_stable_phase(
    at_step: int, last_step: int | None, words: str
) -> None:
    p, s = resolved({"num_warmup_steps": 10, "num_decay_steps": 200, "num_training_steps": 1000})
    with pytest.raises(PolicyError, match=words):
        WSD.cooldown(p, s, at_step, 100, None, last_step)


def test_an_exponential_cooldown_needs_a_floor_above_0() -> None:
    p, s = resolved({"num_warmup_steps": 10})
    with pytest.raises(PolicyError, match="needs one > 0"):
        WSD.cooldown(p, s, 500, 100, "exponential", last_step=None)
    p, s = resolved({"num_warmup_steps": 10, "min_lr_ratio": 0.01})
    cooled = WSD.cooldown(p, s, 500, 100, "exponential", last_step=None)
    assert cooled.decay_type == "exponential" and WSD.lrs_at(p, cooled, 600) == (0.001, 0.00003)


def test_the_plateau_trigger_starts_the_decay_once() -> None:
    params = {"num_warmup_steps": 10, "num_decay_steps": 100, "plateau": {"patience": 2}}
    p, state = resolved(params)
    values = [5.0, 2.0, 1.0, 1.0, math.nan, 1.0, 0.5, 0.1, 0.01]
    actions, reasons = [], []
    for i, v in enumerate(values):
        out, state = WSD.step(p, state, Observation(5 + 10 * i, v, "val_loss"))
        actions.append(out.action)
        reasons.append(out.reason)
        assert out.reduced == (i == 5)
        assert out.lrs == WSD.lrs_at(p, state, 5 + 10 * i)
    # step 5 is in the warmup (not counted), 1.0 twice and a NaN do not improve: the third is
    # a plateau (> patience 2) at step 55, where the decay starts
    assert actions == [
        "warmup",
        "warmup",
        "hold",
        "hold",
        "hold",
        "decay",
        "decay",
        "decay",
        "decay",
    ]
    assert isinstance(state, WsdState) and state.decay_start == 55 and state.decay_steps == 100
    assert reasons[5] == (
        "wsd at step 55, cosine decay from step 55 to 155: lrs [0.1, 0.003] held; val_loss 1.0 "
        "did not improve on best 1.0 for 3 evaluations > patience 2: a plateau, the decay "
        "starts here"
    )
    assert (
        reasons[0] == "wsd at step 5, linear warmup to step 10: lrs [0.0, 0.0] -> [0.05, "
        "0.0015] (val_loss 5.0 logged)"
    )
    assert WSD.lrs_at(p, state, 155) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({}, "num_warmup_steps", "required"),
        ({"num_warmup_steps": 10, "num_training_steps": 100}, "num_decay_steps", "where would"),
        (
            {"num_warmup_steps": 50, "num_decay_steps": 80, "num_training_steps": 100},
            "num_warmup_steps",
            "inside the warmup",
        ),
        ({"num_warmup_steps": 1, "decay_start_fraction": 0.5}, "num_training_steps", "required"),
        (
            {
                "num_warmup_steps": 1,
                "num_training_steps": 9,
                "num_stable_steps": 1,
                "decay_start_fraction": 0.5,
            },
            "decay_start_fraction",
            "not both",
        ),
        ({"num_warmup_steps": 1, "num_stable_steps": 5}, "num_decay_steps", "how long"),
        ({"num_warmup_steps": 1, "plateau": {"patience": 1}}, "num_decay_steps", "with plateau"),
        ({"num_warmup_steps": 1, "warmup_type": "exponential"}, "warmup_type", "min_lr_ratio > 0"),
        ({"num_warmup_steps": 1, "decay_type": "inverse"}, "decay_type", "Input should be"),
        ({"num_warmup_steps": 1, "min_lr_ratio": 1.5}, "min_lr_ratio", "less than or equal"),
        ({"num_warmup_steps": 1, "last_epoch": 3}, "last_epoch", "not a param here"),
        ({"num_warmup_steps": 1, "plateau": {"factor": 0.5}}, "plateau.factor", "Extra inputs"),
    ],
)
def test_resolve_refuses_and_names_the_field(
    params: dict[str, Any], field: str, words: str
) -> None:
    assert refusal_names(WSD, params, BASE, field, words)


def test_a_run_through_the_service(api: TestClient) -> None:
    """PUT, observations that trigger the decay, GET lr and lrs (certain only through the last
    decided step: a later decision may start the decay), verify, simulate; a bad spec is a 422."""
    params = {"num_warmup_steps": 10, "num_decay_steps": 100, "plateau": {"patience": 1}}
    spec = {"policy": {"name": "wsd", "version": 1, "params": params}, "base_lrs": list(BASE)}
    r = api.put("/v1/runs/wsd-run", json=spec)
    assert r.status_code == 201, r.text
    p, state = resolved(params)
    steps, values = [20, 30, 40, 50, 60], [1.0, 1.0, "NaN", 0.5, 0.4]
    for k, v in zip(steps, values, strict=True):
        d = api.post("/v1/runs/wsd-run/observations", json={"step": k, "value": v}).json()
        out, state = WSD.step(p, state, Observation(k, float(v), "metric"))
        assert d["lrs"] == list(out.lrs) and d["action"] == out.action, d
    assert d["action"] == "decay" and state.decay_start == 40  # type: ignore[attr-defined]
    page = api.get("/v1/runs/wsd-run/lrs?from=0&count=200").json()
    assert page["open_loop"] is False and page["certain_through"] == 60
    # the state in force at each step: before step 40 the decay was not decided, and the
    # lrs there are the same with or without it
    assert page["lrs"] == [list(WSD.lrs_at(p, state, k)) for k in range(200)]
    assert page["lrs"][140] == [0.0, 0.0]
    assert api.get("/v1/runs/wsd-run/lr?step=90").json()["lrs"] == list(WSD.lrs_at(p, state, 90))
    assert api.post("/v1/runs/wsd-run/verify").status_code == 200
    body = {"policy": spec["policy"], "base_lrs": list(BASE), "values": values, "steps": steps}
    sim = api.post("/v1/simulate", json=body).json()
    assert [i["lrs"] for i in sim["items"]][-1] == d["lrs"]
    bad = {"policy": {"name": "wsd", "version": 1, "params": {"num_warmup_steps": -1}},
           "base_lrs": [0.1]}  # fmt: skip
    r = api.put("/v1/runs/wsd-bad", json=bad)
    assert r.status_code == 422 and "num_warmup_steps" in r.text


@pytest.mark.parametrize(
    "rule",
    [
        {"patience": 3},
        {"patience": 0, "threshold": 0.0},
        {"mode": "max", "patience": 2, "threshold": 0.01, "threshold_mode": "abs"},
        {"patience": 5, "threshold": 0.05},
    ],
)
def test_the_trigger_fires_where_torchs_plateau_first_reduces(rule: dict[str, Any]) -> None:
    """torch's ReduceLROnPlateau fed the same evaluations (the stable phase's: the trigger
    counts no other) first reduces at the very evaluation where the trigger starts the decay,
    on 30 streams with NaN among their values."""
    params = {"num_warmup_steps": 0, "num_decay_steps": 100, "plateau": rule}
    p, _ = resolved(params, (1.0,))
    fired = 0
    for seed in range(30):
        stream = plateau_stream(60, seed + 1)
        if seed % 3 == 0:  # a NaN now and then: never an improvement, in torch as here
            stream = [(s, math.nan if i % 7 == 3 else v) for i, (s, v) in enumerate(stream)]
        if rule.get("mode") == "max":
            stream = [(s, -v) for s, v in stream]
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, **rule)
        state = WSD.init(p, (1.0,))
        theirs = None
        for step, value in stream:
            sched.step(value)
            if theirs is None and opt.param_groups[0]["lr"] < 1.0:
                theirs = step
            state = WSD.step(p, state, Observation(step, value))[1]
        assert isinstance(state, WsdState)
        ours = state.decay_start
        assert ours == theirs, (seed, rule)
        fired += ours is not None
    assert fired >= 20  # the streams stall: most of them reach a plateau
