"""A retime's arithmetic (lrpilot.policies.retime), pure: for every family that declares a
horizon, in both modes, the lr does not jump at at_step, the schedule's end is reached at the
new horizon, and the steps before at_step keep their lrs; what cannot be retimed is refused
with the field to blame."""

from __future__ import annotations

from typing import Any

import pytest

from lrpilot.policies import PolicyError, get_policy
from lrpilot.policies.base import Horizon, Policy
from lrpilot.policies.retime import Retimed, RetimedState, around, schedule_step

BASE = (0.1, 0.02)
FAMILIES: list[tuple[str, dict[str, Any], int]] = [  # (policy, params, a step after the peak)
    ("cosine", {"T_max": 1000, "eta_min": 0.001}, 400),
    ("linear", {"start_factor": 1.0, "end_factor": 0.1, "total_iters": 1000}, 400),
    ("polynomial", {"total_iters": 1000, "power": 2.0}, 400),
    ("one_cycle", {"max_lr": 0.1, "total_steps": 1000}, 500),
    (
        "cosine_with_min_lr",
        {"num_warmup_steps": 100, "num_training_steps": 1000, "min_lr_rate": 0.1},
        400,
    ),
    ("wsd", {"num_warmup_steps": 100, "num_training_steps": 1000, "num_decay_steps": 300}, 800),
]


def setup(name: str, params: dict[str, Any]) -> tuple[Retimed, Any]:
    policy = around(get_policy(name, 1))
    assert isinstance(policy, Retimed)
    return policy, policy.resolve(params, BASE)


@pytest.mark.parametrize("mode", ["keep_lr", "keep_fraction"])
@pytest.mark.parametrize(("name", "params", "at"), FAMILIES)
def test_no_jump_and_the_end_at_the_new_horizon(
    name: str, params: dict[str, Any], at: int, mode: str
) -> None:
    policy, p = setup(name, params)
    state = policy.init(p, BASE)
    has = policy.horizon(p, state)
    assert isinstance(has, Horizon)
    end_lrs = policy.lrs_at(p, state, has.end)
    for horizon in (at + 1, at + 37, 3 * has.end):  # shorter, and longer
        new = policy.retime(p, state, at, horizon, mode, at - 1)
        assert isinstance(new, RetimedState)
        for k in (0, at // 2, at - 1):  # what was before stays
            assert policy.lrs_at(p, new, k) == policy.lrs_at(p, state, k)
        before, there = policy.lrs_at(p, state, at), policy.lrs_at(p, new, at)
        assert there == pytest.approx(before, rel=1e-12)  # no jump (keep_lr: an affine fit)
        if mode == "keep_fraction":
            assert there == before
        assert policy.lrs_at(p, new, horizon) == pytest.approx(end_lrs, rel=1e-12, abs=1e-15)
        assert schedule_step(new.timemap, horizon) == has.end
        # a stepper driven at training steps decides the lrs the reads serve
        stepper = policy.stepper(p, new)
        for k in (at, (at + horizon) // 2, horizon):
            stepper.advance(k, 1.0)
            assert stepper.lrs == policy.lrs_at(p, new, k)
            assert f"training step {k} is schedule step" in stepper.reason()
        assert policy.load_state(stepper.state().model_dump()) == stepper.state()


def test_retimes_compose_and_a_later_one_keeps_the_map_before_it() -> None:
    policy, p = setup("cosine", {"T_max": 1000})
    first = policy.retime(p, policy.init(p, BASE), 200, 3000, "keep_fraction", None)
    second = policy.retime(p, first, 1000, 1500, "keep_lr", 900)
    for k in (0, 199, 200, 500, 999):
        assert policy.lrs_at(p, second, k) == policy.lrs_at(p, first, k)
    assert policy.lrs_at(p, second, 1000) == pytest.approx(policy.lrs_at(p, first, 1000))
    assert policy.lrs_at(p, second, 1500) == pytest.approx((0.0, 0.0), abs=1e-18)
    assert [s.k0 for s in second.timemap] == [200, 1000]


def refused(policy: Policy, params: Any, field: str, words: str, **kw: Any) -> None:
    state = kw.pop("state", None) or policy.init(params, BASE)
    args = {"at_step": 500, "horizon": 2000, "mode": "keep_lr", "last_step": 100} | kw
    with pytest.raises(PolicyError) as caught:
        policy.retime(params, state, **args)  # type: ignore[attr-defined]
    (loc, message), *_ = caught.value.errors
    assert loc == ((field,) if field else ()) and words in message, (loc, message)


def test_what_cannot_be_retimed_is_refused() -> None:
    policy, p = setup("cosine_with_min_lr", {"num_warmup_steps": 100, "num_training_steps": 1000,
                                             "min_lr_rate": 0.1})  # fmt: skip
    refused(policy, p, "at_step", "already decided", last_step=500)
    refused(policy, p, "horizon", "not after at_step", horizon=500)
    refused(policy, p, "mode", "before its peak", at_step=50, last_step=None)
    refused(policy, p, "mode", "not one of", mode="sideways")
    refused(policy, p, "at_step", "the schedule has ended", at_step=1000, horizon=5000)
    wsd, q = setup("wsd", {"num_warmup_steps": 10})  # no decay planned: no horizon yet
    refused(wsd, q, "", "no horizon")
    assert around(get_policy("plateau", 1)) is get_policy("plateau", 1)  # no horizon declared
    step, r = setup("step", {"step_size": 10})
    refused(step, r, "", "policy step@1 has no horizon")
