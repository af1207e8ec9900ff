"""Write tests/golden/groups@1.jsonl: frozen decisions of a policy per param group.

One canonical-JSON line a case, in the golden format (tests/golden/README.md), with "lrs_at"
at a spread of training steps. Groups mix schedules, plateau control (both versions, a stop
among them), warmup-stable-decay and the composites (a sequence, a scale) as groups; param
groups given as counts and as indices out of order; eight groups on eight policies; groups
that schedule the momentum and the weight decay (the last line, with "extras_at"); NaN and
infinities in every stream. Before writing, every line is checked against its parts run by
hand: each group its own policy from its own base lrs on the real steps, the run's lrs (and
momentum and weight decay) placed back by index, and the decision's action the groups' most
significant one. A released version's file never changes: the script refuses to overwrite one
unless --force.

    python scripts/make_golden_groups.py [--out tests/golden/groups@1.jsonl] [--force]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import golden_lines
from make_golden_compose import METRIC, lrs_at_steps, ref, stream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

from lrpilot.canonical import parse_float, to_strict  # noqa: E402
from lrpilot.policies import Observation, get_policy  # noqa: E402
from lrpilot.policies.compose import ACTION_ORDER  # noqa: E402


def group(name: str, policy: dict[str, Any], param_groups: Any = 1) -> dict[str, Any]:
    return {"name": name, "policy": policy, "param_groups": param_groups}


WARMUP_THEN_PLATEAU = ref(
    "sequence",
    phases=[
        {"policy": ref("linear", start_factor=0.01, total_iters=500), "until_step": 500},
        {"policy": ref("plateau", patience=2, factor=0.5)},
    ],
)
EIGHT = [  # the bench's run: eight groups on eight policies
    ref("cosine", T_max=2000, eta_min=0.0001),
    ref("plateau", patience=2, factor=0.5),
    ref("linear", start_factor=0.1, total_iters=300),
    ref("one_cycle", max_lr=0.5, total_steps=2000),
    ref("plateau", 2, patience=1, window=2),
    ref("exponential", gamma=0.999),
    ref("wsd", num_warmup_steps=100, num_stable_steps=1400, num_decay_steps=500),
    ref("step", step_size=300, gamma=0.5),
]

CASES: list[tuple[dict[str, Any], tuple[float, ...], list[tuple[int, float]]]] = [
    (  # the fine-tune: a backbone on a cosine with a longer warmup, the head on warmup-then-plateau
        {
            "groups": [
                group(
                    "backbone",
                    ref(
                        "cosine_with_min_lr",
                        num_warmup_steps=1000,
                        num_training_steps=10000,
                        min_lr_rate=0.1,
                    ),
                ),
                group("head", WARMUP_THEN_PLATEAU),
            ]
        },
        (0.0001, 0.001),
        stream(40, 250, 4000, 0),
    ),
    (  # param groups by index, out of order; two lrs in one group
        {
            "groups": [
                group("decoder", ref("plateau", patience=1, factor=0.1, cooldown=1), [2, 0]),
                group("encoder", ref("cosine", T_max=1000), [1]),
            ]
        },
        (0.1, 0.01, 0.2),
        stream(30, 50, 600, 1),
    ),
    (  # plateau@2 stopping the run beside a warmup-stable-decay
        {
            "groups": [
                group(
                    "body",
                    ref("wsd", num_warmup_steps=100, num_stable_steps=900, num_decay_steps=500),
                    2,
                ),
                group("head", ref("plateau", 2, patience=1, stop_after=2)),
            ]
        },
        (0.01, 0.02, 0.1),
        stream(40, 50, 500, 2),
    ),
    (  # a scale as a group, one_cycle as another
        {
            "groups": [
                group(
                    "scaled",
                    ref(
                        "scaled",
                        schedule=ref("cosine", T_max=2000),
                        plateau=ref("plateau", patience=1, factor=0.5),
                    ),
                ),
                group("cycle", ref("one_cycle", max_lr=0.3, total_steps=2000)),
            ]
        },
        (0.1, 0.01),
        stream(40, 50, 1000, 3),
    ),
    (
        {"groups": [group(f"g{i}", policy) for i, policy in enumerate(EIGHT)]},
        (0.1, 0.05, 0.02, 0.01, 0.1, 0.3, 0.003, 0.2),
        stream(40, 50, 1200, 4),
    ),
    (  # one group: the policy alone, its reason named
        {"groups": [group("all", ref("plateau", flavor="keras", patience=2, factor=0.5), 2)]},
        (0.1, 0.01),
        stream(20, 10, 100, 5),
    ),
    (  # more than the lr: each group's momentum and weight decay, placed back by index
        {
            "groups": [
                group(
                    "head",
                    ref(
                        "cyclic",
                        2,
                        base_lr=0.001,
                        max_lr=0.05,
                        step_size_up=70,
                        base_momentum=[0.8, 0.7],
                        start_wd=0.01,
                        end_wd=0.0,
                        wd_incr_style="cosine",
                        wd_incr_steps=600,
                    ),
                    [2, 0],
                ),
                group(
                    "backbone",
                    ref(
                        "one_cycle",
                        2,
                        max_lr=0.01,
                        total_steps=1000,
                        start_wd=0.0,
                        end_wd=0.1,
                        wd_incr_style="linear",
                        wd_incr_steps=500,
                    ),
                    [1],
                ),
            ]
        },
        (0.1, 0.01, 0.2),
        stream(30, 30, 600, 6),
    ),
]


def lines() -> list[dict[str, Any]]:
    made = []
    for params, base_lrs, obs in CASES:
        line = golden_lines.decide("groups@1", params, base_lrs, obs, METRIC, lrs_at_steps(obs))
        made.append(to_strict(line))
    return made


def by_hand(line: dict[str, Any]) -> str | None:
    """Each group's policy run alone from its own base lrs: the run's lrs and action after
    each observation; what disagrees, or None."""
    base = [parse_float(x) for x in line["base_lrs"]]
    runs = []
    for g in line["params"]["groups"]:
        policy = get_policy(g["policy"]["name"], g["policy"]["version"])
        own = tuple(base[k] for k in g["param_groups"])
        params = policy.resolve(g["policy"]["params"], own)
        runs.append([policy, params, policy.init(params, own), g["param_groups"]])
    for (step, raw), decision in zip(line["observations"], line["decisions"], strict=True):
        lrs, actions = [0.0] * len(base), []
        extras: dict[str, list[float]] = {}  # what every group schedules beside the lrs
        for run in runs:
            policy, params, state, indices = run
            outcome, run[2] = policy.step(
                params, state, Observation(step, parse_float(raw), METRIC)
            )
            actions.append(outcome.action)
            for k, lr in zip(indices, outcome.lrs, strict=True):
                lrs[k] = lr
            for name in ("momentum", "weight_decay"):
                values = getattr(outcome, name)
                if values is not None:
                    for k, x in zip(indices, values, strict=True):
                        extras.setdefault(name, [0.0] * len(base))[k] = x
        rank = {a: n for n, a in enumerate(ACTION_ORDER)}
        action = min(actions, key=lambda a: rank.get(a, 0.5))
        got = [repr(parse_float(x)) for x in decision["lrs"]]
        if got != [repr(x) for x in lrs] or decision["action"] != action:
            return f"step {step}: {decision['action']} {got}, by hand {action} {lrs}"
        logged = {k: v for k, v in decision["state"].items() if k in ("momentum", "weight_decay")}
        if logged != extras:
            return f"step {step}: the state's extras {logged}, by hand {extras}"
    return None


def main(argv: list[str] | None = None) -> int:
    return golden_lines.generate(
        argv,
        __doc__,
        ROOT / "tests" / "golden" / "groups@1.jsonl",
        lines,
        by_hand,
        against="its groups run by hand",
    )


if __name__ == "__main__":
    sys.exit(main())
