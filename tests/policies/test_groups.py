"""groups@1, a policy per param group: each group's policy run alone from its own base lrs is
what the composite decides for that group; the action is the groups' most significant one; the
reasons name every group; the 422s name the field, however deep; the bounds hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lrpilot.canonical import canonical_json
from lrpilot.policies import Observation, PolicyError, get_policy
from lrpilot.policies.base import extras_of
from lrpilot.policies.compose import ACTION_ORDER, MAX_DEPTH, MAX_GROUPS
from lrpilot.replay import replay
from tests.policies.test_policies_compose import by_hand

GROUPS = get_policy("groups", 1)
COSINE = {"name": "cosine", "version": 1, "params": {"T_max": 400, "eta_min": 0.0}}
HALVE = {"name": "plateau", "version": 1, "params": {"patience": 1, "factor": 0.5}}
# at its floor (min_lr) after one reduction, then stops when the metric still stalls
STOP = {
    "name": "plateau",
    "version": 2,
    "params": {"patience": 0, "factor": 0.5, "min_lr": 0.1, "stop_after": 0},
}
# the example's head: a linear warmup over 100 steps, then plateau@1 (patience 3)
WARMUP_THEN_PLATEAU = GROUPS.examples[0]["groups"][1]["policy"]
STREAM = [(10, 1.0), (20, 0.9), (30, 0.9), (40, 0.9), (60, 0.8), (70, 0.8), (80, 0.8), (90, 0.7)]


def group(name: str, policy: dict[str, Any], param_groups: Any = 1) -> dict[str, Any]:
    return {"name": name, "policy": policy, "param_groups": param_groups}


def alone(ref: dict[str, Any], base: tuple[float, ...]) -> list[tuple[str, tuple[float, ...]]]:
    return by_hand(ref, STREAM, base)


def test_each_group_is_its_own_policy_from_its_own_base_lrs_placed_back_by_index() -> None:
    params = GROUPS.resolve(
        {"groups": [group("head", HALVE, [2, 0]), group("backbone", WARMUP_THEN_PLATEAU, [1])]},
        (0.1, 0.01, 0.2),
    )
    assert [g.param_groups for g in params.groups] == [(2, 0), (1,)]
    start = GROUPS.init(params, (0.1, 0.01, 0.2))
    got = [(s.action, s.lrs) for s in replay(GROUPS, params, start, STREAM)]
    head, backbone = alone(HALVE, (0.2, 0.1)), alone(WARMUP_THEN_PLATEAU, (0.01,))
    for (_, lrs), (_, h), (_, b) in zip(got, head, backbone, strict=True):
        assert lrs == (h[1], b[0], h[0])
    rank = ACTION_ORDER.index
    for (action, _), (ha, _), (ba, _) in zip(got, head, backbone, strict=True):
        assert action == min(ha, ba, key=rank)  # the most significant, the first on a tie
    assert "reduce" in [a for a, _ in got] and "warmup" in [a for a, _ in got]


def test_counts_take_the_base_lrs_in_order_and_default_to_one() -> None:
    params = GROUPS.resolve(
        {"groups": [{"name": "a", "policy": COSINE}, group("b", HALVE, 2)]}, (0.1, 0.2, 0.3)
    )
    assert [g.param_groups for g in params.groups] == [(0,), (1, 2)]
    assert GROUPS.resolve(params.model_dump(), (0.1, 0.2, 0.3)) == params  # idempotent


def test_the_reason_names_each_group_and_the_state_holds_each_groups_state() -> None:
    params = GROUPS.resolve({"groups": [group("body", COSINE), group("head", STOP)]}, (0.1, 0.2))
    stepper = GROUPS.stepper(params, GROUPS.init(params, (0.1, 0.2)), "val_loss")
    with pytest.raises(RuntimeError):
        stepper.reason()
    actions = [stepper.advance(step, 1.0) for step in (10, 20, 30)]
    # the head reduces, then plateau@2 stops it: the run's news, whatever the body does
    assert actions == ["decay", "reduce", "stop"] and stepper.reduced is False
    reason = stepper.reason()
    assert reason.startswith("body (cosine@1): cosine schedule at step 30: ")
    assert "; head (plateau@2): val_loss 1.0 did not improve" in reason
    state = stepper.state()
    assert len(state.groups) == 2 and state.groups[1]["lrs"] == (0.1,)
    assert canonical_json(stepper.state_doc()) == canonical_json(state.model_dump())
    # the state goes on from where it was left, as after a restart of the service
    again = GROUPS.stepper(params, GROUPS.load_state(state.model_dump()), "val_loss")
    assert again.state() == state and again.lrs == stepper.lrs


def test_a_reduction_in_any_group_counts_once_and_lrs_at_follows_each_group() -> None:
    base = (0.1, 0.2)
    params = GROUPS.resolve({"groups": [group("a", HALVE), group("b", COSINE)]}, base)
    state = GROUPS.init(params, base)
    reductions = 0
    cosine = get_policy("cosine", 1)
    cp = cosine.resolve(COSINE["params"], (0.2,))
    for step, value in STREAM:
        outcome, state = GROUPS.step(params, state, Observation(step, value))
        reductions += outcome.reduced
        # between evaluations the schedule moves on and the plateau's lr holds
        later = GROUPS.lrs_at(params, state, step + 5)
        assert later == (outcome.lrs[0], cosine.lrs_at(cp, cosine.init(cp, (0.2,)), step + 5)[0])
    assert reductions == sum(a == "reduce" for a, _ in alone(HALVE, (0.1,))) > 0


def refused(params: dict[str, Any], base: tuple[float, ...] = (0.1, 0.2)) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        GROUPS.resolve(params, base)
    return [".".join(map(str, loc)) + " | " + msg for loc, msg in caught.value.errors]


@pytest.mark.parametrize(
    "params,where,words",
    [
        (
            {"groups": [group("a", COSINE), group("b", {**HALVE, "params": {"factor": 2}})]},
            "params.groups.1.policy.params.factor",
            "less than 1",
        ),
        (
            {"groups": [group("a", COSINE), group("b", {"name": "nope", "version": 1})]},
            "params.groups.1.policy.name",
            "unknown policy 'nope@1'",
        ),
        ({"groups": [group("a", COSINE)]}, "params.groups", "add up to 1, the run has 2"),
        (
            {"groups": [group("a", COSINE, [0])]},
            "params.groups",
            "param group 1 is in no group",
        ),
        (
            {"groups": [group("a", COSINE, [0, 2]), group("b", HALVE, [1])]},
            "params.groups.0.param_groups.1",
            "param group 2 does not exist",
        ),
        (
            {"groups": [group("a", COSINE, [0, 1]), group("b", HALVE, [1])]},
            "params.groups.1.param_groups.0",
            "is in group 'a' already",
        ),
        (
            {"groups": [group("a", COSINE, [0]), {"name": "b", "policy": HALVE}]},
            "params.groups.1.param_groups",
            "not both",
        ),
        (
            {"groups": [group("a", COSINE), group("a", HALVE)]},
            "params.groups.1.name",
            "named twice",
        ),
        (
            {"groups": [group("a b", COSINE), group("b", HALVE)]},
            "params.groups.0.name",
            "pattern",
        ),
        (
            {"groups": [group("a", {"name": "range_test", "version": 1}), group("b", HALVE)]},
            "params.groups.0.policy.name",
            "counts training steps from 0",
        ),
        (
            {
                "groups": [
                    group("a", {"name": "groups", "version": 1, "params": {"groups": []}}),
                    group("b", HALVE),
                ]
            },
            "params.groups.0.policy.name",
            "cannot be groups@1",
        ),
        ({"groups": []}, "params.groups", "at least 1"),
    ],
)
def test_impossible_groups_are_refused_naming_the_field(
    params: dict[str, Any], where: str, words: str
) -> None:
    errors = refused(params)
    assert any(e.startswith(where + " | ") and words in e for e in errors), errors


def test_the_bounds_on_groups_and_depth() -> None:
    many = {"groups": [group(f"g{i}", COSINE) for i in range(MAX_GROUPS + 1)]}
    assert any("at most 64" in e for e in refused(many, (0.1,) * (MAX_GROUPS + 1)))
    exactly = {"groups": [group(f"g{i}", COSINE) for i in range(MAX_GROUPS)]}
    assert len(GROUPS.resolve(exactly, (0.1,) * MAX_GROUPS).groups) == MAX_GROUPS
    # groups -> sequence -> plateau: 3 deep, the bound; one more level is refused
    deep = {"groups": [group("a", WARMUP_THEN_PLATEAU), group("b", HALVE)]}
    GROUPS.resolve(deep, (0.1, 0.2))
    deeper = {
        "name": "sequence",
        "version": 1,
        "params": {"phases": [{"policy": WARMUP_THEN_PLATEAU}]},
    }
    errors = refused({"groups": [group("a", deeper), group("b", HALVE)]})
    assert errors == [f"params.groups | policies nest at most {MAX_DEPTH} deep"]
    # a group inside a sequence's phase counts too
    seq = get_policy("sequence", 1)
    inside = {"phases": [{"policy": {"name": "groups", "version": 1, "params": deep}}]}
    with pytest.raises(PolicyError, match="nest at most"):
        seq.resolve(inside, (0.1, 0.2))


def test_a_run_spec_refused_names_the_place_in_the_body(api: TestClient) -> None:
    spec = {
        "policy": {
            "name": "groups",
            "version": 1,
            "params": {
                "groups": [group("a", COSINE), group("b", {**HALVE, "params": {"factor": 2}})]
            },
        },
        "base_lrs": [0.1, 0.2],
    }
    r = api.put("/v1/runs/g", json=spec)
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert ["body", "policy", "params", "groups", 1, "policy", "params", "factor"] in locs
    spec["base_lrs"] = [0.1, 0.2, 0.3]
    spec["policy"]["params"] = {"groups": [group("a", COSINE), group("b", HALVE)]}
    r = api.put("/v1/runs/g", json=spec)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
        "body", "policy", "params", "groups"
    ]  # fmt: skip
    assert "add up to 2, the run has 3 base lrs" in r.json()["detail"][0]["msg"]


# -- more than the lr: each group's momentum and weight decay, in the run's order --------------

# two groups that both cycle the momentum and ramp the weight decay, each its own way
CYCLING = {
    "name": "one_cycle",
    "version": 2,
    "params": {
        "max_lr": 0.1,
        "total_steps": 100,
        "start_wd": 0.0,
        "end_wd": 0.1,
        "wd_incr_style": "linear",
        "wd_incr_steps": 50,
    },
}
CYCLIC = {
    "name": "cyclic",
    "version": 2,
    "params": {
        "base_lr": 0.001,
        "max_lr": 0.05,
        "step_size_up": 7,
        "base_momentum": [0.8, 0.7],
        "max_momentum": 0.9,
        "start_wd": 0.01,
        "end_wd": 0.0,
        "wd_incr_style": "cosine",
        "wd_incr_steps": 30,
    },
}
EXTRAS = ("momentum", "weight_decay")


def test_each_groups_momentum_and_weight_decay_placed_back_by_index() -> None:
    base = (0.1, 0.01, 0.2)
    params = GROUPS.resolve(
        {"groups": [group("head", CYCLIC, [2, 0]), group("backbone", CYCLING, [1])]}, base
    )
    (head, hp, hs), (body, bp, bs) = [
        (policy, resolved, policy.init(resolved, own))
        for ref, own in [(CYCLIC, (0.2, 0.1)), (CYCLING, (0.01,))]
        for policy in [get_policy(ref["name"], ref["version"])]
        for resolved in [policy.resolve(ref["params"], own)]
    ]

    def by_hand(step: int) -> dict[str, tuple[float, ...]]:
        """Each group's policy alone, its values placed back at its param groups' indices."""
        h, b = head.extras_at(hp, hs, step), body.extras_at(bp, bs, step)
        return {name: (h[name][1], b[name][0], h[name][0]) for name in EXTRAS}

    state = GROUPS.init(params, base)
    assert extras_of(state) == by_hand(0)
    stepper = GROUPS.stepper(params, state, "val_loss")
    for step, value in [*STREAM, (150, 0.6), (10**6, 0.5)]:
        outcome, state = GROUPS.step(params, state, Observation(step, value, "val_loss"))
        stepper.advance(step, value)
        assert {name: getattr(outcome, name) for name in EXTRAS} == by_hand(step)
        assert extras_of(state) == extras_of(stepper) == by_hand(step)
        assert GROUPS.extras_at(params, state, step + 3) == by_hand(step + 3)  # between
        assert canonical_json(stepper.state_doc()) == canonical_json(state.model_dump())
        assert stepper.reason() == outcome.reason
        assert "head (cyclic@2): " in outcome.reason and ", momentum " in outcome.reason
    assert GROUPS.load_state(state.model_dump()) == state
    assert len(set(by_hand(7)["momentum"])) == 3  # three param groups, three momenta


def test_groups_that_schedule_none_keep_the_state_they_had() -> None:
    params = GROUPS.resolve({"groups": [group("a", COSINE), group("b", HALVE)]}, (0.1, 0.2))
    state = GROUPS.init(params, (0.1, 0.2))
    outcome, state = GROUPS.step(params, state, Observation(10, 1.0))
    assert set(state.model_dump()) == {"lrs", "groups"}  # no member for what is not scheduled
    assert set(GROUPS.stepper(params, state).state_doc()) == {"lrs", "groups"}
    assert (outcome.momentum, outcome.weight_decay) == (None, None)
    assert GROUPS.extras_at(params, state, 20) == {} == extras_of(GROUPS.stepper(params, state))


@pytest.mark.parametrize(
    "other,name",
    [
        (COSINE, "momentum and the weight_decay"),
        ({**CYCLING, "params": {"max_lr": 0.1, "total_steps": 100}}, "weight_decay"),
    ],
)
def test_a_group_without_what_another_schedules_is_refused_naming_it(
    other: dict[str, Any], name: str
) -> None:
    errors = refused({"groups": [group("backbone", CYCLING), group("head", other)]})
    assert len(errors) == 1, errors
    assert errors[0].startswith("params.groups.1.policy | ")
    assert f"every group schedules the {name} or none: groups.1 (head, " in errors[0]
    assert "group 'backbone' does" in errors[0]


LR_ONLY = {"name": "one_cycle", "version": 2, "params": {"max_lr": 0.1, "cycle_momentum": False}}


@pytest.mark.parametrize(
    "name,params,where",
    [
        ("sequence", {"phases": [{"policy": CYCLING}]}, "params.phases.0.policy"),
        (
            "sequence",
            {"phases": [{"policy": COSINE, "until_step": 10}, {"policy": CYCLIC}]},
            "params.phases.1.policy",
        ),
        ("scaled", {"schedule": CYCLING, "plateau": HALVE}, "params.schedule"),
    ],
)
def test_a_composite_that_serves_the_lr_only_refuses_a_policy_scheduling_more(
    name: str, params: dict[str, Any], where: str
) -> None:
    composite = get_policy(name, 1)
    with pytest.raises(PolicyError) as caught:
        composite.resolve(params, (0.1, 0.2))
    (message,) = str(caught.value).split("; ")
    assert message.startswith(f"{where}: ") and "(it serves the lr only)" in message
    # one_cycle@2 that schedules the lr alone is welcome there
    lr_only = {**LR_ONLY, "params": {**LR_ONLY["params"], "total_steps": 100}}
    swapped = json.loads(json.dumps(params).replace(json.dumps(CYCLING), json.dumps(lr_only)))
    swapped = json.loads(json.dumps(swapped).replace(json.dumps(CYCLIC), json.dumps(lr_only)))
    composite.resolve(swapped, (0.1, 0.2))
