"""The schedule families (lrpilot.policies.schedules): params, the policy contract, the
deterministic arithmetic, and runs of every family through the service.

test_schedules_torch.py checks the lrs against the real torch schedulers; this file checks
everything else: torch's names and defaults, what resolve refuses (and where it says so), that
step() and the stepper log the curve, and that GET lr, GET lrs and POST /v1/simulate answer it.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient
from torch.optim import lr_scheduler

from lrpilot.canonical import canonical_json, to_strict
from lrpilot.policies import POLICIES, Observation, PolicyError, get_policy
from lrpilot.policies.arith import cos2_frac as _cos2_frac
from lrpilot.policies.arith import cos2_ratio as _cos2_ratio
from lrpilot.policies.arith import exp as _exp
from lrpilot.policies.arith import ipow as _ipow
from lrpilot.policies.arith import kcos as _kcos
from lrpilot.policies.arith import ksin as _ksin
from lrpilot.policies.arith import log as _log
from lrpilot.policies.arith import powers as _powers
from lrpilot.policies.base import MAX_STEP
from lrpilot.policies.schedules import SCHEDULES
from lrpilot.replay import replay

FAMILIES = sorted(s.name for s in SCHEDULES)
TORCH_CLASS = {
    "constant": lr_scheduler.ConstantLR,
    "step": lr_scheduler.StepLR,
    "multistep": lr_scheduler.MultiStepLR,
    "exponential": lr_scheduler.ExponentialLR,
    "linear": lr_scheduler.LinearLR,
    "cosine": lr_scheduler.CosineAnnealingLR,
    "polynomial": lr_scheduler.PolynomialLR,
    "cosine_restarts": lr_scheduler.CosineAnnealingWarmRestarts,
    "cyclic": lr_scheduler.CyclicLR,
    "one_cycle": lr_scheduler.OneCycleLR,
}
# torch arguments a schedule does not take (lrpilot serves lrs; a run counts its own steps)
NOT_TAKEN = {
    "last_epoch",
    "scale_fn",
    "scale_mode",
    "cycle_momentum",
    "base_momentum",
    "max_momentum",
    "epochs",
    "steps_per_epoch",
}
# params for each family that move the lrs within a few hundred steps
LIVELY: dict[str, dict[str, Any]] = {
    "constant": {"factor": 0.25, "total_iters": 40},
    "step": {"step_size": 30, "gamma": 0.5},
    "multistep": {"milestones": [120, 30, 30, 200], "gamma": 0.5},
    "exponential": {"gamma": 0.99},
    "inverse_time": {"decay_steps": 25.0, "decay_rate": 0.5, "staircase": True},
    "linear": {"start_factor": 0.01, "end_factor": 1.0, "total_iters": 100},
    "cosine": {"T_max": 150, "eta_min": 1e-4},
    "polynomial": {"total_iters": 250, "power": 1.5},
    "cosine_restarts": {"T_0": 40, "T_mult": 2, "eta_min": 1e-5},
    "cyclic": {"base_lr": [1e-3, 1e-4], "max_lr": 0.1, "step_size_up": 20, "mode": "triangular2"},
    "one_cycle": {"max_lr": [0.1, 0.01], "total_steps": 250, "three_phase": True},
}
BASE = (0.1, 0.01)


def resolved(family: str, params: dict[str, Any], base: tuple[float, ...] = BASE) -> Any:
    policy = get_policy(family, 1)
    p = policy.resolve(params, base)
    return policy, p, policy.init(p, base)


# -- the registry, names, defaults and schemas -----------------------------------------------


def test_every_family_is_a_released_open_loop_policy() -> None:
    assert set(FAMILIES) == set(LIVELY)
    for name in FAMILIES:
        policy = POLICIES[f"{name}@1"]
        assert policy.open_loop is True
        assert policy.actions == ("hold", "warmup", "decay")
        if name in TORCH_CLASS:
            assert TORCH_CLASS[name].__name__ in policy.description, name


@pytest.mark.parametrize("family", sorted(TORCH_CLASS))
def test_params_are_torchs_arguments_with_torchs_defaults(family: str) -> None:
    policy = get_policy(family, 1)
    sig = inspect.signature(TORCH_CLASS[family].__init__).parameters
    torch_args = {k for k in sig if k not in ("self", "optimizer")} - NOT_TAKEN
    ours = set(policy.params_schema()["properties"])
    assert ours == torch_args
    for name, value in policy.defaults().items():
        assert value == sig[name].default, name
    required = {k for k in torch_args if sig[k].default is inspect.Parameter.empty}
    if family == "one_cycle":
        required.add("total_steps")  # torch also takes epochs * steps_per_epoch
    assert set(policy.params_schema().get("required", [])) == required


def test_inverse_time_params_are_keras_arguments() -> None:
    policy = get_policy("inverse_time", 1)
    assert set(policy.params_schema()["properties"]) == {"decay_steps", "decay_rate", "staircase"}
    assert policy.defaults() == {"staircase": False}


@pytest.mark.parametrize("family", FAMILIES)
def test_schema_has_examples_that_resolve(family: str) -> None:
    policy = get_policy(family, 1)
    schema = policy.params_schema()
    assert schema["examples"], family
    for example in schema["examples"]:
        for base in ((0.1,), (0.1, 0.01)):
            if any(isinstance(v, list) for v in example.values()) and len(base) == 1:
                continue
            params = policy.resolve(example, base)
            assert params.model_dump() == {**policy.defaults(), **example}


@pytest.mark.parametrize("family", FAMILIES)
def test_resolved_params_resolve_to_themselves(family: str) -> None:
    policy, params, _ = resolved(family, LIVELY[family])
    doc = params.model_dump()
    assert canonical_json(policy.resolve(json.loads(canonical_json(doc)), BASE).model_dump()) == (
        canonical_json(doc)
    )
    assert set(doc) == set(policy.params_schema()["properties"])  # every default filled


# -- what resolve refuses --------------------------------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], tuple[float, ...], str]] = [
    ("cosine", {"T_max": -5}, BASE, "T_max"),
    ("cosine", {"T_max": 0}, BASE, "T_max"),
    ("cosine", {}, BASE, "T_max"),
    ("cosine", {"T_max": True}, BASE, "T_max"),
    ("cosine", {"T_max": 10.0}, BASE, "T_max"),
    ("cosine", {"T_max": "10"}, BASE, "T_max"),
    ("cosine", {"T_max": 10, "eta_min": -0.1}, BASE, "eta_min"),
    ("cosine", {"T_max": 10, "eta_min": "0.2"}, BASE, "eta_min"),
    ("cosine", {"T_max": 10, "eta_min": True}, BASE, "eta_min"),
    ("cosine", {"T_max": 10, "eta_min": math.inf}, BASE, "eta_min"),
    ("cosine", {"T_max": 10, "last_epoch": -1}, BASE, "last_epoch"),
    ("cosine", {"T_max": 2**62 + 1}, BASE, "T_max"),
    ("multistep", {"milestones": [10, -1]}, BASE, "milestones"),
    ("multistep", {"milestones": 10}, BASE, "milestones"),
    ("multistep", {"milestones": [1.5]}, BASE, "milestones"),
    ("multistep", {"milestones": [10], "gamma": 0.0}, BASE, "gamma"),
    ("step", {"step_size": 0}, BASE, "step_size"),
    ("step", {"step_size": 10, "gamma": -0.5}, BASE, "gamma"),
    ("step", {"step_size": 10, "gamma": math.nan}, BASE, "gamma"),
    ("exponential", {"gamma": 0.0}, BASE, "gamma"),
    ("exponential", {"gamma": True}, BASE, "gamma"),
    ("exponential", {"gamma": "0.2"}, BASE, "gamma"),
    ("constant", {"total_iters": -1}, BASE, "total_iters"),
    ("constant", {"factor": 0.0}, BASE, "factor"),
    ("constant", {"factor": 1.5}, BASE, "factor"),
    ("linear", {"start_factor": 0.0}, BASE, "start_factor"),
    ("linear", {"start_factor": 1.01}, BASE, "start_factor"),
    ("linear", {"end_factor": -0.1}, BASE, "end_factor"),
    ("linear", {"total_iters": -3}, BASE, "total_iters"),
    ("polynomial", {"total_iters": -1}, BASE, "total_iters"),
    ("polynomial", {"power": -1.0}, BASE, "power"),
    ("inverse_time", {"decay_steps": 0.0, "decay_rate": 0.5}, BASE, "decay_steps"),
    ("inverse_time", {"decay_steps": 10.0, "decay_rate": -0.5}, BASE, "decay_rate"),
    ("inverse_time", {"decay_steps": 10.0, "decay_rate": 0.5, "staircase": 1}, BASE, "staircase"),
    ("cosine_restarts", {"T_0": 0}, BASE, "T_0"),
    ("cosine_restarts", {"T_0": 10, "T_mult": 0}, BASE, "T_mult"),
    ("cosine_restarts", {"T_0": 10, "T_mult": 1.5}, BASE, "T_mult"),
    ("cyclic", {"base_lr": 0.01, "max_lr": [0.1, 0.2, 0.3]}, BASE, "max_lr"),
    ("cyclic", {"base_lr": [0.01], "max_lr": 0.1}, BASE, "base_lr"),
    ("cyclic", {"base_lr": [0.01, -0.01], "max_lr": 0.1}, BASE, "base_lr"),
    ("cyclic", {"base_lr": [], "max_lr": 0.1}, BASE, "base_lr"),
    ("cyclic", {"base_lr": True, "max_lr": 0.1}, BASE, "base_lr"),
    ("cyclic", {"base_lr": 0.01, "max_lr": "0.1"}, BASE, "max_lr"),
    ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0}, BASE, "step_size_up"),
    ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_down": -1}, BASE, "step_size_down"),
    ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "mode": "exp"}, BASE, "mode"),
    ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "gamma": 0.0}, BASE, "gamma"),
    ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "gamma": 1.5}, BASE, "gamma"),
    ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "cycle_momentum": True}, BASE, "cycle_momentum"),
    ("one_cycle", {"max_lr": 0.1}, BASE, "total_steps"),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 0}, BASE, "total_steps"),
    ("one_cycle", {"max_lr": [0.1], "total_steps": 100}, BASE, "max_lr"),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 100, "pct_start": -0.1}, BASE, "pct_start"),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 100, "pct_start": 1.1}, BASE, "pct_start"),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 10, "pct_start": 0.1}, BASE, "pct_start"),
    (
        "one_cycle",
        {"max_lr": 0.1, "total_steps": 100, "anneal_strategy": "exp"},
        BASE,
        "anneal_strategy",
    ),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 100, "div_factor": 0.0}, BASE, "div_factor"),
    (
        "one_cycle",
        {"max_lr": 1e308, "total_steps": 100, "div_factor": 1e-10},
        BASE,
        "div_factor",
    ),
    (
        "one_cycle",
        {"max_lr": 0.1, "total_steps": 100, "final_div_factor": -1.0},
        BASE,
        "final_div_factor",
    ),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 100, "epochs": 3}, BASE, "epochs"),
    (
        "one_cycle",
        {"max_lr": 0.1, "total_steps": 100, "three_phase": "yes"},
        BASE,
        "three_phase",
    ),
]


@pytest.mark.parametrize(
    "family,params,base,field", REFUSED, ids=[f"{f}-{k}" for f, _, _, k in REFUSED]
)
def test_resolve_refuses_and_names_the_field(
    family: str, params: dict[str, Any], base: tuple[float, ...], field: str
) -> None:
    with pytest.raises(PolicyError) as exc:
        get_policy(family, 1).resolve(params, base)
    locs = [loc for loc, _ in exc.value.errors]
    assert any(loc[:2] == ("params", field) for loc in locs), exc.value.errors
    assert all(msg for _, msg in exc.value.errors)


def test_refusals_say_what_to_do() -> None:
    with pytest.raises(PolicyError, match=r"pct_start \* total_steps is 1"):
        get_policy("one_cycle", 1).resolve(
            {"max_lr": 0.1, "total_steps": 10, "pct_start": 0.1}, BASE
        )
    with pytest.raises(PolicyError, match="cyclic@2 cycle the momentum"):
        get_policy("cyclic", 1).resolve({"base_lr": 0.1, "max_lr": 1.0, "max_momentum": 0.9}, BASE)
    with pytest.raises(PolicyError, match=r"give total_steps \(epochs \* steps_per_epoch\)"):
        get_policy("one_cycle", 1).resolve({"max_lr": 0.1, "steps_per_epoch": 10}, BASE)
    with pytest.raises(PolicyError, match="3 values but there are 2 param groups"):
        get_policy("cyclic", 1).resolve({"base_lr": 0.1, "max_lr": [1.0, 2.0, 3.0]}, BASE)


def test_json_ints_are_taken_as_floats() -> None:
    _, params, _ = resolved("cyclic", {"base_lr": 0, "max_lr": [1, 2]})
    assert params.model_dump()["base_lr"] == 0.0 and params.model_dump()["max_lr"] == [1.0, 2.0]
    assert all(type(x) is float for x in params.model_dump()["max_lr"])
    _, params, _ = resolved("exponential", {"gamma": 1})
    assert type(params.model_dump()["gamma"]) is float


# -- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_init_is_step_0_and_lrs_at_reads_no_state(family: str) -> None:
    policy, params, state = resolved(family, LIVELY[family])
    assert state.lrs == policy.lrs_at(params, state, 0)
    later = policy.load_state({"lrs": [123.0, 456.0]})
    for k in (0, 1, 17, 99, 250, 10_000):
        assert policy.lrs_at(params, later, k) == policy.lrs_at(params, state, k)
    with pytest.raises(ValueError, match="steps start at 0"):
        policy.lrs_at(params, state, -1)
    with pytest.raises(ValueError, match="resolved for base_lrs"):
        policy.init(params, (0.5, 0.05))


@pytest.mark.parametrize("family", FAMILIES)
def test_step_logs_the_curve_with_its_change(family: str) -> None:
    policy, params, state = resolved(family, LIVELY[family])
    seen = set()
    rng = random.Random(family)
    step = 0
    for _ in range(120):
        step += rng.choice((1, 2, 3, 5))
        value = rng.choice((0.5, math.nan, math.inf, -1.0))
        before = state.lrs
        outcome, state = policy.step(params, state, Observation(step, value, "val_loss"))
        want = policy.lrs_at(params, state, step)
        assert outcome.lrs == want == state.lrs
        assert outcome.reduced is False
        if want == before:
            assert outcome.action == "hold"
            assert outcome.reason.endswith(
                f"held (val_loss {value!r} logged; a schedule does not read it)"
            )
        else:
            rose = any(b > a for a, b in zip(before, want, strict=True))
            assert outcome.action == ("warmup" if rose else "decay")
            assert f"lrs [{before[0]!r}, {before[1]!r}] -> [{want[0]!r}, {want[1]!r}]" in (
                outcome.reason
            )
        assert outcome.reason.startswith(f"{family} schedule at step {step}: ")
        seen.add(outcome.action)
    assert seen - {"hold"}, family  # the lrs moved


def test_reasons_read_as_one_sentence() -> None:
    policy, params, state = resolved("linear", LIVELY["linear"], (0.1,))
    outcome, state = policy.step(params, state, Observation(50, 0.4312, "val_loss"))
    assert outcome.action == "warmup"
    assert outcome.reason == (
        "linear schedule at step 50: lr 0.001 -> 0.0505 "
        "(val_loss 0.4312 logged; a schedule does not read it)"
    )
    outcome, state = policy.step(params, state, Observation(60, 0.4, "val_loss"))
    outcome, state = policy.step(params, state, Observation(1000, 0.4, "val_loss"))
    outcome, state = policy.step(params, state, Observation(2000, 0.4, "val_loss"))
    assert outcome.action == "hold"
    assert outcome.reason == (
        "linear schedule at step 2000: lr 0.1 held (val_loss 0.4 logged; a schedule does not "
        "read it)"
    )


def test_actions_follow_the_shape_of_each_curve() -> None:
    def actions(family: str, steps: list[int]) -> list[str]:
        policy, params, state = resolved(family, LIVELY[family])
        out = []
        for s in steps:
            outcome, state = policy.step(params, state, Observation(s, 1.0))
            out.append(outcome.action)
        return out

    assert actions("linear", [10, 50, 100, 150]) == ["warmup", "warmup", "warmup", "hold"]
    assert actions("cosine", [10, 149, 150, 151, 200]) == [
        "decay",
        "decay",
        "decay",
        "warmup",
        "warmup",
    ]
    assert actions("cosine_restarts", [39, 40, 119, 120]) == ["decay", "warmup", "decay", "warmup"]
    assert actions("constant", [10, 39, 40, 41]) == ["hold", "hold", "warmup", "hold"]
    assert actions("one_cycle", [10, 70, 150, 240, 250, 10**9]) == [
        "warmup",
        "warmup",
        "decay",
        "decay",
        "decay",
        "hold",
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_stepper_is_step(family: str) -> None:
    """replay (the stepper) gives what step() gives: lrs, action, reason, state, state_doc."""
    policy, params, initial = resolved(family, LIVELY[family])
    rng = random.Random(family)
    stream = []
    step = 0
    for _ in range(200):
        step += rng.choice((0, 1, 7, 40))
        stream.append((step, rng.choice((0.1, math.nan, -math.inf))))
    state = initial
    for (step, value), stepper in zip(
        stream, replay(policy, params, initial, stream, "loss"), strict=True
    ):
        outcome, state = policy.step(params, state, Observation(step, value, "loss"))
        assert stepper.lrs == outcome.lrs and stepper.action == outcome.action
        assert stepper.reason() == outcome.reason
        assert stepper.state() == state
        assert stepper.state_doc() == json.loads(canonical_json(state.model_dump()))
        assert stepper.reduced is False


def test_a_fresh_stepper_has_no_reason() -> None:
    policy, params, state = resolved("cosine", LIVELY["cosine"])
    stepper = policy.stepper(params, state)
    assert stepper.action == "" and stepper.lrs == state.lrs
    with pytest.raises(RuntimeError):
        stepper.reason()


# -- torch's behaviour, spelled out ------------------------------------------------------------


def lrs(family: str, params: dict[str, Any], steps: list[int], base: tuple[float, ...] = (1.0,)):  # type: ignore[no-untyped-def]
    policy, p, state = resolved(family, params, base)
    return [policy.lrs_at(p, state, k)[0] for k in steps]


def test_multistep_milestones_in_any_order_and_repeated_as_in_torch() -> None:
    # torch counts a milestone given n times as gamma**n
    assert lrs("multistep", {"milestones": [2, 0, 2], "gamma": 0.5}, [0, 1, 2, 3, 10**9]) == [
        0.5,
        0.5,
        0.125,
        0.125,
        0.125,
    ]
    assert lrs("multistep", {"milestones": []}, [0, 10**6]) == [1.0, 1.0]


def test_torchs_zero_total_iters() -> None:
    # torch's step() applies the factor at step 0 and never undoes it when total_iters is 0
    assert lrs("constant", {"factor": 0.5, "total_iters": 0}, [0, 1, 10**6]) == [0.5] * 3
    assert lrs("linear", {"start_factor": 0.5, "total_iters": 0}, [0, 1, 10**6]) == [0.5] * 3
    assert lrs("polynomial", {"total_iters": 0}, [0, 1, 10**6]) == [1.0] * 3
    assert lrs("polynomial", {"total_iters": 4, "power": 0.0}, [0, 3, 4, 10]) == [1.0] * 4


def test_exact_ends() -> None:
    """Where the math says a value, the value: eta_min at the bottom of a cosine, end_factor
    once a linear schedule is done, 0 once a polynomial decay is done, base at each restart."""
    assert lrs("cosine", {"T_max": 7, "eta_min": 0.01}, [0, 7, 14, 21]) == [1.0, 0.01, 1.0, 0.01]
    assert lrs("linear", {"start_factor": 0.3, "end_factor": 0.0, "total_iters": 9}, [9, 99]) == [
        0.0,
        0.0,
    ]
    assert lrs("polynomial", {"total_iters": 9, "power": 0.7}, [9, 99]) == [0.0, 0.0]
    restarts = lrs("cosine_restarts", {"T_0": 3, "T_mult": 2}, [0, 3, 9, 21, 45])
    assert restarts == [1.0] * 5


def test_cyclic_and_one_cycle_replace_the_base_lrs_as_torch_does() -> None:
    """torch's CyclicLR starts at base_lr and OneCycleLR at max_lr / div_factor, whatever the
    optimizer's lrs: the run's base_lrs give the number of param groups."""
    _, _, state = resolved("cyclic", {"base_lr": [0.001, 0.002], "max_lr": 0.1})
    assert state.lrs == (0.001, 0.002)
    _, _, state = resolved("one_cycle", {"max_lr": [0.1, 0.5], "total_steps": 100})
    # torch: max + (initial - max) / 2 * (cos(0) + 1), rounded: 0.1 / 25 within an ulp of 0.1
    assert state.lrs == pytest.approx((0.1 / 25.0, 0.5 / 25.0), rel=1e-15)


EXTREME_STEPS = [0, 1, 2, 2**18 - 1, 2**18, 2**31, 10**12, 2**53 + 1, MAX_STEP - 1, MAX_STEP]
EXTREME_PARAMS: list[tuple[str, dict[str, Any]]] = [
    *LIVELY.items(),
    ("step", {"step_size": 1, "gamma": 1.5}),
    ("step", {"step_size": 1, "gamma": 1e-300}),
    ("exponential", {"gamma": 1.0001}),
    ("exponential", {"gamma": 0.5}),
    ("inverse_time", {"decay_steps": 5e-324, "decay_rate": 1.0, "staircase": True}),
    ("inverse_time", {"decay_steps": 5e-324, "decay_rate": 0.0}),
    ("cosine", {"T_max": MAX_STEP}),
    ("cosine_restarts", {"T_0": 1, "T_mult": 2}),
    ("cosine_restarts", {"T_0": MAX_STEP, "T_mult": MAX_STEP}),
    (
        "cyclic",
        {"base_lr": 0.0, "max_lr": 1.0, "step_size_up": 1, "mode": "exp_range", "gamma": 0.5},
    ),
    (
        "cyclic",
        {
            "base_lr": 0.0,
            "max_lr": 1.0,
            "step_size_up": 1,
            "step_size_down": 0,
            "mode": "triangular2",
        },
    ),
    ("one_cycle", {"max_lr": 1.0, "total_steps": MAX_STEP}),
    ("polynomial", {"total_iters": MAX_STEP, "power": 3.7}),
]


@pytest.mark.parametrize(
    "family,params", EXTREME_PARAMS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(EXTREME_PARAMS)]
)
def test_any_step_gives_lrs_never_nan_never_an_error(family: str, params: dict[str, Any]) -> None:
    policy, p, state = resolved(family, params, (0.1, 0.0))
    for k in EXTREME_STEPS:
        got = policy.lrs_at(p, state, k)
        assert len(got) == 2 and all(type(x) is float for x in got), (k, got)
        assert all(x >= 0.0 for x in got), (k, got)  # and so never NaN
        outcome, after = policy.step(p, state, Observation(k, 1.0))
        assert outcome.lrs == got
        assert policy.load_state(to_strict(after.model_dump())) == after
    if family == "exponential" and params["gamma"] > 1:
        assert policy.lrs_at(p, state, MAX_STEP) == (math.inf, 0.0)  # as torch's lr * gamma ...


# -- the deterministic arithmetic ------------------------------------------------------------


def test_kernels_are_within_one_ulp() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 120
    rng = random.Random(7)

    def ulps(got: float, exact: Any) -> float:
        e = float(exact)
        return float(abs(mpmath.mpf(got) - exact) / mpmath.mpf(math.ulp(e))) if e else abs(got)

    for _ in range(3000):
        x = rng.uniform(0.0, math.pi / 4)
        assert ulps(_kcos(x), mpmath.cos(x)) < 1.0
        tiny = x * rng.choice((1.0, 1e-5, 1e-12))
        assert ulps(_ksin(tiny), mpmath.sin(tiny)) < 1.0
        y = rng.uniform(0.0, 1.0) * 10 ** rng.uniform(-300.0, 0.0)
        assert ulps(_log(y), mpmath.log(y)) < 1.0
        z = rng.uniform(-745.0, 0.0) * rng.choice((1.0, 1e-3, 1e-9))
        if z > -708.0:  # a normal result (subnormals lose bits by design)
            assert ulps(_exp(z), mpmath.exp(z)) < 1.0
    assert _exp(-800.0) == 0.0 and _exp(800.0) == math.inf
    assert _ipow(0.5, 1075) == 0.0 and _ipow(2.0, 1024) == math.inf
    for g in (0.999, 0.1, 1.0001, 7.0):
        power = _powers(g)
        for n in (0, 1, 63, 64, 4095, 4096, 2**18 - 1, 2**18, 10**6, 2**30 - 1, 2**30, 2**40):
            exact = mpmath.mpf(g) ** n
            got = power(n)
            if float(exact) == 0.0 or math.isinf(float(exact)):
                assert got == float(exact), (g, n)
            elif abs(float(exact)) >= 2.3e-308:  # normal: a few ulps
                assert abs(got - exact) <= 5 * math.ulp(float(exact)), (g, n)


def test_cosines_keep_every_digit_where_torchs_cancel() -> None:
    """Near the end of an annealing, (1 + cos x) / 2 loses digits to cancellation (torch's
    formula: relative error ~ 4.5e-17 * T**2); cos(x / 2) ** 2 does not. Against mpmath, a few
    ulps, at any T."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 160
    for t in (1, 3, 1000, 123_457, 10**9, MAX_STEP):
        for a in {0, 1, 2, t // 3, t // 2, t - 2, t - 1, t} - {-1}:
            if not 0 <= a <= t:
                continue
            got = _cos2_ratio(a, t)
            if a == t:
                assert got == 0.0
                continue
            exact = mpmath.cos(mpmath.pi * a / (2 * t)) ** 2
            assert abs(got - exact) <= 4 * math.ulp(float(exact)), (t, a, got, float(exact))
    assert _cos2_frac(1.0) == 0.0 and _cos2_frac(0.0) == 1.0
    for p in (1e-9, 0.25, 0.3, 0.5, 0.75, 0.9, 1 - 1e-9):
        exact = mpmath.cos(mpmath.pi * mpmath.mpf(p) / 2) ** 2
        assert abs(_cos2_frac(p) - exact) <= 4 * math.ulp(float(exact)), p


def test_lrs_are_the_same_bits_in_every_run() -> None:
    """No libm: the same bits on every machine. Two values pinned (the golden files pin many
    more), both the double nearest the exact value (mpmath at 200 bits)."""
    policy, params, state = resolved("cosine", {"T_max": 1000, "eta_min": 1e-5}, (0.1,))
    assert repr(policy.lrs_at(params, state, 999)[0]) == "1.0246715233100986e-05"
    policy, params, state = resolved("polynomial", {"total_iters": 1000, "power": 0.9}, (0.1,))
    assert repr(policy.lrs_at(params, state, 123)[0]) == "0.0888586342795128"


# -- through the service ---------------------------------------------------------------------


def service_base(family: str) -> list[float]:
    return [0.1, 0.01]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_of_each_family_answers_lrs_at_through_the_api(api: TestClient, family: str) -> None:
    spec = {
        "policy": {"name": family, "version": 1, "params": LIVELY[family]},
        "base_lrs": [0.1, 0.01],
        "metric": "val_loss",
    }
    run_id = f"sched-{family}"
    r = api.put(f"/v1/runs/{run_id}", json=spec)
    assert r.status_code == 201, r.text
    policy, params, state = resolved(family, LIVELY[family])
    assert r.json()["lrs"] == list(state.lrs)

    def expected(k: int) -> list[float]:
        return list(policy.lrs_at(params, state, k))

    for k in (0, 1, 29, 30, 99, 100, 149, 150, 299, 10**9, MAX_STEP):
        got = api.get(f"/v1/runs/{run_id}/lr?step={k}").json()
        assert got["lrs"] == expected(k), k
    page = api.get(f"/v1/runs/{run_id}/lrs?from=0&count=300").json()
    assert page["lrs"] == [expected(k) for k in range(300)]
    assert page["open_loop"] is True and page["certain_through"] == 299

    # observations are logged: the decision is the curve at their step
    for k, value in ((50, 0.9), (120, "NaN"), (260, 0.7)):
        r = api.post(f"/v1/runs/{run_id}/observations", json={"step": k, "value": value})
        assert r.status_code == 200, r.text
        decision = r.json()
        assert decision["lrs"] == expected(k)
        assert decision["action"] in ("hold", "warmup", "decay")
        assert decision["reason"].startswith(f"{family} schedule at step {k}: ")
    # and the lrs between and after them are still the curve's
    page = api.get(f"/v1/runs/{run_id}/lrs?from=100&count=300").json()
    assert page["lrs"] == [expected(k) for k in range(100, 400)]
    assert api.get(f"/v1/runs/{run_id}/lr?step=123").json()["lrs"] == expected(123)
    assert api.post(f"/v1/runs/{run_id}/verify").status_code == 200


def test_a_refused_schedule_is_a_422_naming_the_field(api: TestClient) -> None:
    spec = {"policy": {"name": "cosine", "version": 1, "params": {"T_max": 0}}, "base_lrs": [0.1]}
    r = api.put("/v1/runs/bad-cosine", json=spec)
    assert r.status_code == 422, r.text
    assert "T_max" in r.text


def test_simulate_a_schedule(api: TestClient) -> None:
    values: list[Any] = [0.5, "NaN", 0.4, 0.45, 0.3, 0.35, 0.2]
    steps = [0, 30, 75, 150, 151, 200, 10**6 + 1]
    body = {
        "policy": {"name": "cosine", "version": 1, "params": LIVELY["cosine"]},
        "base_lrs": [0.1, 0.01],
        "metric": "val_loss",
        "values": values,
        "steps": steps,
    }
    r = api.post("/v1/simulate", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["policy"] == "cosine@1" and got["count"] == len(values)
    policy, params, state = resolved("cosine", LIVELY["cosine"])
    previous = list(state.lrs)
    for item, k in zip(got["items"], steps, strict=True):
        assert item["lrs"] == list(policy.lrs_at(params, state, k))
        assert item["previous_lrs"] == previous
        previous = item["lrs"]
    assert [i["action"] for i in got["items"]] == [
        "hold",
        "decay",
        "decay",
        "decay",
        "warmup",
        "warmup",
        "decay",
    ]
    assert api.get("/v1/runs").json()["items"] == []  # stored nowhere


def test_policies_list_every_family(api: TestClient) -> None:
    items = {(p["name"], p["version"]): p for p in api.get("/v1/policies").json()["items"]}
    for family in FAMILIES:
        item = items[(family, 1)]
        assert item["params_schema"]["examples"]
        assert item["actions"] == ["hold", "warmup", "decay"]
        assert item["defaults"] == get_policy(family, 1).defaults()
