"""plateau@1 params (validation, defaults) and properties that hold for every stream."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import struct
from collections.abc import Callable
from typing import Any

os.environ["KERAS_BACKEND"] = "torch"

import keras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lrpilot.canonical import canonical_json
from lrpilot.policies import Observation, PolicyError, get_policy

POLICY = get_policy("plateau", 1)
NAN, INF = math.nan, math.inf

# ----------------------------------------------------------------------------- validation

GE0 = r"greater than or equal to 0|>= ?0"
GT0 = r"greater than 0|> ?0"
LT1 = r"less than 1|< ?1"
EXTRA = r"(?i)extra inputs|unknown|not permitted|unexpected"

INVALID: list[tuple[dict[str, Any], tuple[float, ...], str, str]] = [
    # (params, base_lrs, the param named, a regex for the rule the message must state)
    ({"factor": 0.0}, (0.1,), "factor", GT0),
    ({"factor": -0.5}, (0.1,), "factor", GT0),
    ({"factor": 1.0}, (0.1,), "factor", LT1),
    ({"factor": 2.0}, (0.1,), "factor", LT1),
    ({"factor": NAN}, (0.1,), "factor", ""),
    ({"patience": -1}, (0.1,), "patience", GE0),
    ({"patience": 1.5}, (0.1,), "patience", "integer"),
    ({"cooldown": -1}, (0.1,), "cooldown", GE0),
    ({"min_lr": -1e-6}, (0.1,), "min_lr", GE0),
    ({"min_lr": [0.0, -1e-6]}, (0.1, 0.2), "min_lr", GE0),
    ({"min_lr": [0.0]}, (0.1, 0.2), "min_lr", "param group"),
    ({"min_lr": [0.0, 0.0, 0.0]}, (0.1, 0.2), "min_lr", "param group"),
    ({"min_lr": INF}, (0.1,), "min_lr", "finite"),
    ({"mode": "auto"}, (0.1,), "mode", "'min' or 'max'"),
    ({"mode": "MIN"}, (0.1,), "mode", "'min' or 'max'"),
    ({"threshold_mode": "relative"}, (0.1,), "threshold_mode", "'rel' or 'abs'"),
    ({"flavor": "tensorflow"}, (0.1,), "flavor", "'torch' or 'keras'"),
    ({"flavour": "torch"}, (0.1,), "flavour", EXTRA),
    ({"min_delta": 0.1}, (0.1,), "min_delta", EXTRA),
    ({"threshold": NAN}, (0.1,), "threshold", "finite"),
    ({"threshold": INF}, (0.1,), "threshold", "finite"),
    ({"threshold": -1e-4}, (0.1,), "threshold", GE0),
    ({"eps": NAN}, (0.1,), "eps", "finite"),
    ({"eps": INF}, (0.1,), "eps", "finite"),
    ({"eps": -1.0}, (0.1,), "eps", GE0),
    ({"threshold": 1.0}, (0.1,), "threshold", "< 1"),
    ({"flavor": "keras", "factor": 1.0}, (0.1,), "factor", LT1),
    ({"flavor": "keras", "patience": -3}, (0.1,), "patience", GE0),
    ({"flavor": "keras", "cooldown": -1}, (0.1,), "cooldown", GE0),
    ({"flavor": "keras", "min_lr": -0.1}, (0.1,), "min_lr", GE0),
    ({"flavor": "keras", "mode": "auto"}, (0.1,), "mode", "'min' or 'max'"),
    ({"flavor": "keras", "min_delta": NAN}, (0.1,), "min_delta", "finite"),
    ({"flavor": "keras", "min_delta": -INF}, (0.1,), "min_delta", "finite"),
    ({"flavor": "keras", "threshold": 1e-4}, (0.1,), "threshold", EXTRA),
    ({"flavor": "keras", "eps": 1e-8}, (0.1,), "eps", EXTRA),
    ({"flavor": "keras", "threshold_mode": "rel"}, (0.1,), "threshold_mode", EXTRA),
]


def param_of(loc: tuple[str | int, ...]) -> str | int | None:
    """The param an error location names (locations may be relative to the run spec)."""
    if loc[:1] == ("params",):
        loc = loc[1:]
    return loc[0] if loc else None


@pytest.mark.parametrize(
    ("params", "base_lrs", "param", "rule"),
    INVALID,
    ids=[f"{i}-{case[2]}" for i, case in enumerate(INVALID)],
)
def test_invalid_params_raise_policy_error_naming_param_and_rule(
    params: dict[str, Any], base_lrs: tuple[float, ...], param: str, rule: str
) -> None:
    with pytest.raises(PolicyError) as info:
        POLICY.resolve(params, base_lrs)
    errors = info.value.errors
    assert errors, "PolicyError without errors"
    named = [(loc, msg) for loc, msg in errors if param_of(loc) == param]
    assert named, f"no error located at {param!r}: {errors!r}"
    assert any(param in msg and re.search(rule, msg) for _, msg in named), (
        f"no error on {param!r} states the rule {rule!r}: {errors!r}"
    )
    assert param in str(info.value)


def test_policy_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        POLICY.resolve({"factor": 5}, (0.1,))


def test_several_broken_rules_are_all_reported() -> None:
    with pytest.raises(PolicyError) as info:
        POLICY.resolve({"factor": 0, "patience": -1, "mode": "sideways"}, (0.1,))
    assert {param_of(loc) for loc, _ in info.value.errors} >= {"factor", "patience", "mode"}


def test_unknown_policy_version() -> None:
    with pytest.raises(PolicyError, match="plateau@99"):
        get_policy("plateau", 99)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"flavor": "torch", "min_lr": [0.0, 1e-4]},
        {"min_lr": 0},
        {"threshold": 0.0, "eps": 0.0, "patience": 0, "cooldown": 0},
        {"mode": "max", "threshold_mode": "rel", "threshold": 5.0},
        {"flavor": "keras", "min_delta": 0.0, "min_lr": 0.0},
    ],
)
def test_valid_params_resolve(params: dict[str, Any]) -> None:
    base_lrs = (0.1, 0.2) if isinstance(params.get("min_lr"), list) else (0.1,)
    resolved = POLICY.resolve(params, base_lrs).model_dump()
    for key, value in params.items():
        assert resolved[key] == value


# ------------------------------------------------------------------------------- defaults


def signature_defaults(fn: Any) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_torch_defaults_are_torchs() -> None:
    torch_defaults = signature_defaults(ReduceLROnPlateau.__init__)
    ours = POLICY.resolve({}, (0.1,)).model_dump()
    assert ours.pop("flavor") == "torch"
    assert set(ours) == set(torch_defaults)
    for name, value in torch_defaults.items():
        assert ours[name] == value and type(ours[name]) in (type(value), float), name
    assert POLICY.defaults() == {"flavor": "torch", **ours}


def test_keras_defaults_are_keras_except_mode() -> None:
    keras_defaults = signature_defaults(keras.callbacks.ReduceLROnPlateau.__init__)
    ours = POLICY.resolve({"flavor": "keras"}, (0.1,)).model_dump()
    assert ours.pop("flavor") == "keras"
    assert keras_defaults.pop("mode") == "auto"
    assert ours.pop("mode") == "min"  # we take no "auto": the metric's direction is explicit
    for name in ("monitor", "verbose"):  # not policy params
        keras_defaults.pop(name)
    assert set(ours) == set(keras_defaults)
    for name, value in keras_defaults.items():
        assert ours[name] == value, name


def test_schema_and_description() -> None:
    schema = POLICY.params_schema()
    assert json.dumps(schema)  # plain data
    assert POLICY.description
    assert set(POLICY.actions) == {"hold", "reduce", "cooldown"}


# ----------------------------------------------------------------------------- properties

metric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10.0, max_value=10.0),
    st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 1.0, 1e38, 3.5e38, -1e300, 5e-324]),
)
lr_values = st.sampled_from([0.1, 1e-3, 3e-4, 0.5, 1.0, 1e-5, 1e-7])
min_lr_values = st.sampled_from([0.0, 1e-6, 1e-4, 1e-3, 0.05, 0.3, 2.0])
factors = st.one_of(
    st.sampled_from([0.5, 0.1, 0.3333, 0.9]),
    st.floats(min_value=1e-3, max_value=0.999),
)


@st.composite
def setups(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[float, ...]]:
    flavor = draw(st.sampled_from(["torch", "keras"]))
    n = 1 if flavor == "keras" else draw(st.integers(1, 4))
    base_lrs = tuple(draw(lr_values) for _ in range(n))
    params: dict[str, Any] = {
        "flavor": flavor,
        "mode": draw(st.sampled_from(["min", "max"])),
        "factor": draw(factors),
        "patience": draw(st.integers(0, 5)),
        "cooldown": draw(st.integers(0, 3)),
    }
    if flavor == "torch":
        params["threshold_mode"] = draw(st.sampled_from(["rel", "abs"]))
        params["threshold"] = draw(st.sampled_from([0.0, 1e-4, 0.01, 0.1]))
        params["eps"] = draw(st.sampled_from([0.0, 1e-8, 1e-3]))
        if draw(st.booleans()):
            params["min_lr"] = [draw(min_lr_values) for _ in range(n)]
        else:
            params["min_lr"] = draw(min_lr_values)
    else:
        params["min_delta"] = draw(st.sampled_from([0.0, 1e-4, 0.01, 0.1]))
        params["min_lr"] = draw(min_lr_values)
    return params, base_lrs


def replay(
    params: dict[str, Any], base_lrs: tuple[float, ...], values: list[float]
) -> list[tuple[tuple[str, ...], str, str, str]]:
    """(lrs by repr, action, reason, canonical state) for every evaluation."""
    resolved = POLICY.resolve(params, base_lrs)
    state = POLICY.init(resolved, base_lrs)
    out = []
    for i, v in enumerate(values):
        outcome, state = POLICY.step(resolved, state, Observation(i, v, "val_loss"))
        out.append(
            (
                tuple(repr(x) for x in outcome.lrs),
                outcome.action,
                outcome.reason,
                canonical_json(state.model_dump()),
            )
        )
    return out


Setup = tuple[dict[str, Any], tuple[float, ...]]  # params and base_lrs


def on_streams(test: Callable[[Setup, list[float]], None]) -> Callable[[], None]:
    """``test`` as a property of 150 generated setups, each with a stream of metric values."""
    streams = st.lists(metric_values, min_size=1, max_size=80)
    limits = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    return limits(given(setups(), streams)(test))


@on_streams
def test_replay_is_deterministic(setup: Setup, values: list[float]) -> None:
    params, base_lrs = setup
    assert replay(params, base_lrs, values) == replay(dict(params), tuple(base_lrs), values)


@on_streams
def test_state_round_trips_through_canonical_json(setup: Setup, values: list[float]) -> None:
    """Storing the state as canonical JSON between evaluations changes no decision."""
    params, base_lrs = setup
    resolved = POLICY.resolve(params, base_lrs)
    direct = POLICY.init(resolved, base_lrs)
    stored = canonical_json(direct.model_dump())
    for i, v in enumerate(values):
        obs = Observation(i, v, "val_loss")
        want, direct = POLICY.step(resolved, direct, obs)
        got, loaded = POLICY.step(resolved, POLICY.load_state(json.loads(stored)), obs)
        assert [repr(x) for x in got.lrs] == [repr(x) for x in want.lrs]
        assert (got.action, got.reason) == (want.action, want.reason)
        stored = canonical_json(loaded.model_dump())
        assert stored == canonical_json(direct.model_dump())


def shape(obj: Any) -> Any:
    """The structure of a JSON document: keys and list lengths, scalars reduced to None."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return None


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setups(), st.lists(metric_values, min_size=1, max_size=40), st.integers(0, 2**32))
def test_state_is_bounded_and_lrs_only_fall_to_min_lr(
    setup: Setup, pattern: list[float], seed: int
) -> None:
    params, base_lrs = setup
    resolved = POLICY.resolve(params, base_lrs)
    keras_flavor = params["flavor"] == "keras"
    min_lr = params["min_lr"]
    floors = list(min_lr) if isinstance(min_lr, list) else [min_lr] * len(base_lrs)
    if keras_flavor:  # keras stores lrs in float32 and compares with float32(min_lr)
        floors = [f32(x) for x in floors]
    state = POLICY.init(resolved, base_lrs)
    start = state.lrs
    prev = start
    after: dict[int, str] = {}
    for i in range(1000):
        value = pattern[(i * 7 + seed) % len(pattern)] if i % 3 else pattern[i % len(pattern)]
        outcome, state = POLICY.step(resolved, state, Observation(i, value, "val_loss"))
        assert outcome.lrs == state.lrs
        assert len(outcome.lrs) == len(base_lrs)
        for g, (lr, old, floor, first) in enumerate(
            zip(outcome.lrs, prev, floors, start, strict=True)
        ):
            assert lr <= old, f"group {g}: lr rose {old!r} -> {lr!r} at {i}"
            assert lr >= floor or lr == first, f"group {g}: {lr!r} < min_lr {floor!r} at {i}"
            assert math.isfinite(lr)
        if outcome.action == "reduce":
            assert outcome.lrs != prev or keras_flavor
        elif not keras_flavor:
            assert outcome.lrs == prev
        prev = outcome.lrs
        if i + 1 in (10, 1000):
            after[i + 1] = canonical_json(state.model_dump())
    short, long = json.loads(after[10]), json.loads(after[1000])
    assert shape(short) == shape(long)
    assert (
        set(short)
        == set(long)
        == {
            "lrs",
            "best",
            "best_step",
            "bad_evaluations",
            "cooldown_counter",
        }
    )
    assert len(after[1000]) < 400, after[1000]
