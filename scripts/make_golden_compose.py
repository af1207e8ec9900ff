"""Write tests/golden/sequence@1.jsonl and tests/golden/scaled@1.jsonl: frozen composites.

One canonical-JSON line a case, in the golden format (tests/golden/README.md), with "lrs_at"
at a spread of training steps. Before writing, every case is checked against its parts run by
hand: a sequence's decisions and lrs are each phase's own policy run from the run's base lrs
(a schedule phase on its own clock from the phase's start); a scaled run's lrs are the
schedule's lrs times the lrs of its plateau policy run from base lrs of 1.0. A released
version's file never changes: the script refuses to overwrite one unless --force.

    python scripts/make_golden_compose.py [--out-dir tests/golden] [--force]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import golden_lines

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

from lrpilot.canonical import canonical_json, to_strict  # noqa: E402
from lrpilot.policies import Observation, Policy, get_policy  # noqa: E402

NAN, INF = math.nan, math.inf
METRIC = "val_loss"


def ref(name: str, version: int = 1, **params: Any) -> dict[str, Any]:
    return {"name": name, "version": version, "params": params}


def stream(n: int, every: int, stall_at: int, seed: int) -> list[tuple[int, float]]:
    """Falls, then stalls with a wobble; a NaN and an inf now and then (seeded)."""
    out = []
    for k in range(1, n + 1):
        step = k * every
        level = 0.4 + 1.5 * math.exp(-min(step, stall_at) / (stall_at / 3))
        value = round(level + 0.002 * ((k * (seed + 1)) % 3), 6)
        if k % (17 + seed) == 0:
            value = NAN if seed % 2 else INF
        out.append((step, value))
    return out


SEQUENCES: list[tuple[dict[str, Any], tuple[float, ...], list[tuple[int, float]]]] = [
    (
        {
            "phases": [
                {"policy": ref("linear", start_factor=0.01, total_iters=1000), "until_step": 1000},
                {"policy": ref("plateau", patience=3, factor=0.5)},
            ]
        },
        (0.1,),
        stream(40, 250, 4000, 0),
    ),
    (
        {
            "phases": [
                {"policy": ref("plateau", patience=0, factor=0.5), "until_step": 500},
                {"policy": ref("plateau", patience=1, factor=0.1)},
            ]
        },
        (0.1, 0.2),
        stream(30, 50, 300, 1),
    ),
    (
        {
            "phases": [
                {"policy": ref("linear", start_factor=0.1, total_iters=200), "until_step": 200},
                {"policy": ref("cosine", T_max=800, eta_min=0.001), "until_step": 1000},
                {"policy": ref("plateau", 2, patience=2, window=2)},
            ]
        },
        (0.05, 0.01),
        stream(30, 50, 900, 2),
    ),
    (
        {
            "phases": [
                {"policy": ref("constant", factor=0.5, total_iters=100), "until_step": 300},
                {
                    "policy": ref(
                        "plateau",
                        2,
                        patience=2,
                        on_plateau={
                            "action": "decay",
                            "shape": "cosine",
                            "steps": 600,
                            "floor": 0.0,
                        },
                        stop_after=3,
                    )
                },
            ]
        },
        (0.1,),
        stream(40, 50, 600, 3),
    ),
    (
        {
            "phases": [
                {"policy": ref("step", step_size=100, gamma=0.5), "until_step": 400},
                {"policy": ref("exponential", gamma=0.99), "until_step": 800},
                {"policy": ref("plateau", patience=1, factor=0.2, cooldown=1)},
            ]
        },
        (0.3, 0.03, 0.003),
        stream(30, 40, 700, 4),
    ),
    (
        {"phases": [{"policy": ref("plateau", flavor="keras", patience=2, factor=0.5)}]},
        (0.1,),
        stream(20, 10, 100, 5),
    ),
]

SCALED: list[tuple[dict[str, Any], tuple[float, ...], list[tuple[int, float]]]] = [
    (
        {
            "schedule": ref("cosine", T_max=10000, eta_min=0.0001),
            "plateau": ref("plateau", patience=3, factor=0.5),
        },
        (0.1,),
        stream(40, 250, 4000, 0),
    ),
    (
        {
            "schedule": ref("linear", start_factor=0.1, total_iters=500),
            "plateau": ref("plateau", patience=1, factor=0.1, min_lr=0.001),
        },
        (0.1, 0.01),
        stream(30, 50, 600, 1),
    ),
    (
        {
            "schedule": ref("one_cycle", max_lr=0.5, total_steps=2000),
            "plateau": ref(
                "plateau",
                2,
                patience=2,
                on_plateau={"action": "decay", "shape": "linear", "steps": 500, "floor": 0.1},
            ),
        },
        (0.1,),
        stream(40, 50, 1000, 2),
    ),
    (
        {
            "schedule": ref("cosine_restarts", T_0=300, T_mult=2),
            "plateau": ref("plateau", 2, patience=1, best_of=3, ema=0.5),
        },
        (0.02, 0.2),
        stream(40, 40, 900, 3),
    ),
    (
        {
            "schedule": ref("exponential", gamma=0.999),
            "plateau": ref("plateau", patience=2, factor=0.5, cooldown=2),
        },
        (1.0,),
        stream(30, 100, 1500, 4),
    ),
    (
        {
            "schedule": ref("constant", factor=1.0, total_iters=0),
            "plateau": ref("plateau", patience=0, factor=0.9, threshold_mode="abs", threshold=0.01),
        },
        (0.1,),
        stream(20, 10, 120, 5),
    ),
]


def lrs_at_steps(observations: list[tuple[int, float]]) -> list[int]:
    last = observations[-1][0]
    steps = {0, 1, last, last + 1, last * 10, 2**62}
    for step, _ in observations[:: max(1, len(observations) // 6)]:
        steps |= {step - 1, step, step + 1}
    return sorted(s for s in steps if s >= 0)


def line_of(
    name: str, params: dict[str, Any], base_lrs: tuple[float, ...], obs: list[tuple[int, float]]
) -> dict[str, Any]:
    line = golden_lines.decide(f"{name}@1", params, base_lrs, obs, METRIC, lrs_at_steps(obs))
    return to_strict(line)


def by_hand_sequence(
    params: dict[str, Any], base_lrs: tuple[float, ...], obs: list[tuple[int, float]]
) -> list[tuple[float, ...]]:
    """Each phase its own policy from the base lrs: the lrs after each observation."""
    phases = params["phases"]
    starts = [0] + [p["until_step"] for p in phases[:-1]]
    out: list[tuple[float, ...]] = []
    current: tuple[int, Policy, Any, Any] | None = None
    for step, value in obs:
        i = max(j for j, start in enumerate(starts) if start <= step)
        if current is None or current[0] != i:
            p = phases[i]["policy"]
            policy = get_policy(p["name"], p["version"])
            resolved = policy.resolve(p["params"], base_lrs)
            current = (i, policy, resolved, policy.init(resolved, base_lrs))
        i, policy, resolved, state = current
        clock = step - starts[i] if policy.open_loop else step
        outcome, state = policy.step(resolved, state, Observation(clock, value, METRIC))
        current = (i, policy, resolved, state)
        out.append(outcome.lrs)
    return out


def by_hand_scaled(
    params: dict[str, Any], base_lrs: tuple[float, ...], obs: list[tuple[int, float]]
) -> list[tuple[float, ...]]:
    s, p = params["schedule"], params["plateau"]
    schedule, plateau = get_policy(s["name"], s["version"]), get_policy(p["name"], p["version"])
    ones = tuple(1.0 for _ in base_lrs)
    sp, pp = schedule.resolve(s["params"], base_lrs), plateau.resolve(p["params"], ones)
    s0, state = schedule.init(sp, base_lrs), plateau.init(pp, ones)
    out = []
    for step, value in obs:
        _, state = plateau.step(pp, state, Observation(step, value, METRIC))
        base, scale = schedule.lrs_at(sp, s0, step), plateau.lrs_at(pp, state, step)
        out.append(tuple(a * b for a, b in zip(base, scale, strict=True)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "tests" / "golden")
    parser.add_argument("--force", action="store_true", help="overwrite (unreleased versions only)")
    args = parser.parse_args(argv)
    for name, cases, by_hand in (
        ("sequence", SEQUENCES, by_hand_sequence),
        ("scaled", SCALED, by_hand_scaled),
    ):
        path = args.out_dir / f"{name}@1.jsonl"
        if golden_lines.refuses(path, args.force):
            return 2
        lines = []
        for params, base_lrs, obs in cases:
            line = line_of(name, params, base_lrs, obs)
            want = [list(x) for x in by_hand(params, base_lrs, obs)]
            got = [d["lrs"] for d in line["decisions"]]
            if canonical_json(got) != canonical_json(to_strict(want)):
                print(
                    f"{name}: a case disagrees with its parts run by hand: {params}",
                    file=sys.stderr,
                )
                return 1
            lines.append(line)
        golden_lines.write(path, lines)
        print(f"wrote {path}: {len(lines)} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
