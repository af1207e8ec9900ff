"""one_cycle@2 and cyclic@2 as policies: what their params refuse (one clear message naming
the param), the state and reason of a decision, and the stepper agreeing with step()."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lrpilot.canonical import canonical_json
from lrpilot.policies import Observation, PolicyError, get_policy
from lrpilot.policies.base import extras_of
from tests.helpers import started

BASE = (0.1, 0.01)
ONE = {"max_lr": 0.1, "total_steps": 100}
CYC = {"base_lr": 0.001, "max_lr": 0.1}


@pytest.mark.parametrize(
    "family,params,field,words",
    [
        ("one_cycle", ONE | {"start_wd": 0.1}, "start_wd", "give both"),
        ("one_cycle", ONE | {"end_wd": 0.1}, "end_wd", "give both"),
        ("one_cycle", ONE | {"wd_incr_steps": 10}, "wd_incr_steps", "give both"),
        ("one_cycle", ONE | {"start_wd": 0.0, "end_wd": 0.1}, "wd_incr_style", "constant"),
        ("one_cycle", ONE | {"start_wd": [0.0] * 3, "end_wd": 0.1}, "start_wd", "3 values"),
        ("one_cycle", ONE | {"start_wd": -0.1, "end_wd": 0.1}, "start_wd", ">= 0"),
        ("one_cycle", ONE | {"wd_incr_style": "exp"}, "wd_incr_style", "constant"),
        ("one_cycle", ONE | {"base_momentum": [0.8]}, "base_momentum", "1 values"),
        ("one_cycle", ONE | {"max_momentum": True}, "max_momentum", ">= 0"),
        ("one_cycle", ONE | {"cycle_momentum": "yes"}, "cycle_momentum", "bool"),
        (
            "cyclic",
            CYC | {"start_wd": 0.0, "end_wd": 0.1, "wd_incr_style": "linear"},
            "wd_incr_steps",
            "no end",
        ),
        (
            "cyclic",
            CYC | {"start_wd": 0.0, "end_wd": 0.1, "wd_incr_steps": 0},
            "wd_incr_steps",
            "greater than or equal to 1",
        ),
    ],
)
def test_bad_params_are_refused_naming_the_param(
    family: str, params: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        get_policy(family, 2).resolve(params, BASE)
    assert [loc for loc, _ in caught.value.errors] == [("params", field)]
    assert words in str(caught.value)


@pytest.mark.parametrize("family", ["one_cycle", "cyclic"])
def test_the_first_version_refuses_the_momentum_naming_the_second(family: str) -> None:
    params = (ONE if family == "one_cycle" else CYC) | {"cycle_momentum": True}
    with pytest.raises(PolicyError, match="one_cycle@2 and cyclic@2 cycle the momentum"):
        get_policy(family, 1).resolve(params, BASE)


@pytest.mark.parametrize(
    "family,params",
    [
        ("one_cycle", ONE | {"start_wd": [0.0, 0.01], "end_wd": 0.1, "wd_incr_style": "cosine"}),
        ("cyclic", CYC | {"base_momentum": [0.8, 0.7], "max_momentum": 0.9}),
        ("cyclic", CYC | {"cycle_momentum": False}),
    ],
)
def test_step_and_stepper_agree_and_the_state_holds_the_extras(
    family: str, params: dict[str, Any]
) -> None:
    policy, resolved, state = started(family, 2, params, BASE)
    stepper = policy.stepper(resolved, state, "val_loss")
    for step in (1, 7, 30, 99, 100, 5000):
        outcome, state = policy.step(resolved, state, Observation(step, math.nan, "val_loss"))
        stepper.advance(step, math.nan)
        assert canonical_json(stepper.state_doc()) == canonical_json(state.model_dump())
        assert stepper.reason() == outcome.reason
        scheduled = policy.extras_at(resolved, state, step)
        assert extras_of(state) == scheduled == extras_of(stepper)
        assert (outcome.momentum, outcome.weight_decay) == (
            scheduled.get("momentum"),
            scheduled.get("weight_decay"),
        )
        for name in ("momentum", "weight_decay"):
            assert (name in outcome.reason) == (name in scheduled)
    assert policy.load_state(state.model_dump()) == state
