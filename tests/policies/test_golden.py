"""Replay the frozen decision logs in tests/golden/: released policies must decide identically
forever (lrs by repr, action, reason and state). See tests/golden/README.md; the scripts that
wrote them are checked by tests/operations/test_golden_generators.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lrpilot.canonical import canonical_json, parse_float
from lrpilot.policies import POLICIES, Observation, get_policy
from lrpilot.policies.base import MAX_STEP
from tests.harness import GOLDEN_DIR

FILES = sorted(GOLDEN_DIR.glob("*.jsonl"))
# Schedule families (the registry's open-loop policies): one file each, every line with "lrs_at".
SCHEDULES = sorted({policy.name for policy in POLICIES.values() if policy.open_loop})
# Every released version's file holds at least 10 streams: plateau control more (plateaus come and
# go), the compositions fewer (each of their streams runs through several phases).
MIN_STREAMS = {key: 10 for key in POLICIES} | {
    "plateau@1": 30,
    "plateau@2": 30,
    "sequence@1": 5,
    "scaled@1": 5,
    "groups@1": 6,
}


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


CASES = [(path, n) for path in FILES for n in range(len(load(path)))]


def test_golden_files_exist() -> None:
    names = {p.stem for p in FILES}
    assert names >= set(MIN_STREAMS), f"missing golden files: {set(MIN_STREAMS) - names}"


@pytest.mark.parametrize("name", sorted(MIN_STREAMS))
def test_golden_file_has_enough_streams(name: str) -> None:
    assert len(load(GOLDEN_DIR / f"{name}.jsonl")) >= MIN_STREAMS[name]


@pytest.mark.parametrize("name", ["plateau@1"])
def test_golden_file_is_large_and_covers_both_flavors_and_non_finite_values(name: str) -> None:
    lines = load(GOLDEN_DIR / f"{name}.jsonl")
    assert len(lines) >= MIN_STREAMS[name]
    assert {line["params"]["flavor"] for line in lines} == {"torch", "keras"}
    values = [parse_float(v) for line in lines for _, v in line["observations"]]
    assert any(math.isnan(v) for v in values)
    assert math.inf in values and -math.inf in values
    actions = {d["action"] for line in lines for d in line["decisions"]}
    assert actions == {"hold", "reduce", "cooldown"}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_golden_file_pins_lrs_at_from_step_0_to_the_largest_step(name: str) -> None:
    lines = load(GOLDEN_DIR / f"{name}@1.jsonl")
    for line in lines:
        steps = [step for step, _ in line["lrs_at"]]
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == MAX_STEP
    actions = {d["action"] for line in lines for d in line["decisions"]}
    assert "hold" in actions and actions - {"hold"} and actions <= {"hold", "warmup", "decay"}
    values = [parse_float(v) for line in lines for _, v in line["observations"]]
    assert any(math.isnan(v) for v in values)  # logged, never read


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_file_is_canonical_json_lines(path: Path) -> None:
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f):
            assert raw.endswith("\n"), f"line {n} has no newline"
            assert raw[:-1] == canonical_json(json.loads(raw)), f"line {n} is not canonical"


@pytest.mark.parametrize("path,n", CASES, ids=[f"{p.stem}-{n}" for p, n in CASES])
def test_golden_stream_replays_identically(path: Path, n: int) -> None:
    line = load(path)[n]
    assert line["policy"] == path.stem
    name, version = line["policy"].split("@")
    policy = get_policy(name, int(version))
    base_lrs = tuple(parse_float(x) for x in line["base_lrs"])
    params = policy.resolve(line["params"], base_lrs)
    assert canonical_json(params.model_dump()) == canonical_json(line["params"]), (
        "the stored params are resolved params: resolving them again must change nothing"
    )
    state = policy.init(params, base_lrs)
    in_force = [(-1, state)]  # (step, the state its decision left), the initial state first
    observations, decisions = line["observations"], line["decisions"]
    assert len(observations) == len(decisions) > 0
    for i, ((step, raw), want) in enumerate(zip(observations, decisions, strict=True)):
        value = parse_float(raw)
        outcome, state = policy.step(params, state, Observation(step, value, line["metric"]))
        where = f"{path.name} line {n} decision {i} (step {step}, value {value!r})"
        got_lrs = [repr(x) for x in outcome.lrs]
        want_lrs = [repr(parse_float(x)) for x in want["lrs"]]
        assert got_lrs == want_lrs, f"{where}: lrs {got_lrs} != frozen {want_lrs}"
        assert outcome.action == want["action"], f"{where}: action"
        assert outcome.reason == want["reason"], f"{where}: reason"
        assert canonical_json(state.model_dump()) == canonical_json(want["state"]), (
            f"{where}: state"
        )
        in_force.append((step, state))
    # lrs_at at training steps, as GET lr?step=N answers: from the state of the last decision
    # at or before the step (the initial state before the first)
    for step, want_lrs in line.get("lrs_at", []):
        state = [s for at, s in in_force if at <= step][-1]
        got_lrs = [repr(x) for x in policy.lrs_at(params, state, step)]
        want_lrs = [repr(parse_float(x)) for x in want_lrs]
        assert got_lrs == want_lrs, f"{path.name} line {n}: lrs_at({step}) {got_lrs} != frozen"
    # and what the policy schedules beside the lrs (momentum, weight decay), at the same steps
    for step, want_extras in line.get("extras_at", []):
        state = [s for at, s in in_force if at <= step][-1]
        got = canonical_json({k: list(v) for k, v in policy.extras_at(params, state, step).items()})
        assert got == canonical_json(want_extras), f"{path.name} line {n}: extras_at({step})"
