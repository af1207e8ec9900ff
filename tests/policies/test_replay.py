"""lrpilot.replay and the policies' steppers: the fast path decides exactly as step() does.

The golden logs (tests/golden/) are replayed through ``replay()`` with one stepper for the whole
stream, reading lrs, action, reason() and state() at every observation; ``trace()`` and the
stepper are compared with ``Plateau.step()`` called one observation at a time (a fresh stepper
from the frozen state every time) on generated streams.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrpilot.canonical import canonical_json, parse_float
from lrpilot.policies import Frozen, Observation, State, get_policy
from lrpilot.replay import replay, trace
from tests.harness import GOLDEN_DIR
from tests.streams import make_stream

GOLDEN = GOLDEN_DIR / "plateau@1.jsonl"
POLICY = get_policy("plateau", 1)


def golden_lines() -> list[dict[str, Any]]:
    with GOLDEN.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


LINES = golden_lines()


def setup_of(line: dict[str, Any]) -> tuple[Frozen, State, list[tuple[int, float]]]:
    base_lrs = tuple(parse_float(x) for x in line["base_lrs"])
    params = POLICY.resolve(line["params"], base_lrs)
    observations = [(step, parse_float(raw)) for step, raw in line["observations"]]
    return params, POLICY.init(params, base_lrs), observations


def golden_decision(want: dict[str, Any]) -> tuple[list[str], str, str, str]:
    lrs = [repr(parse_float(x)) for x in want["lrs"]]
    return lrs, want["action"], want["reason"], canonical_json(want["state"])


@pytest.mark.parametrize("n", range(len(LINES)), ids=[f"plateau@1-{n}" for n in range(len(LINES))])
def test_replay_gives_the_golden_decisions(n: int) -> None:
    line = LINES[n]
    params, state, observations = setup_of(line)
    initial = canonical_json(state.model_dump())
    steppers = replay(POLICY, params, state, observations, line["metric"])
    first = None
    count = 0
    for i, (stepper, want) in enumerate(zip(steppers, line["decisions"], strict=True)):
        first = first or stepper
        assert stepper is first, "replay yields one stepper, advanced in place"
        got = (
            [repr(x) for x in stepper.lrs],
            stepper.action,
            stepper.reason(),
            canonical_json(stepper.state().model_dump()),
        )
        assert got == golden_decision(want), f"{GOLDEN.name} line {n} decision {i}"
        # what verify compares each logged state with: the golden state as JSON reads it back
        assert stepper.state_doc() == json.loads(canonical_json(want["state"]))
        assert all(type(x) is float for x in stepper.lrs)
        assert stepper.reduced == (stepper.action == "reduce")
        count += 1
    assert count == len(observations)
    assert canonical_json(state.model_dump()) == initial, "the state replay started from"


@pytest.mark.parametrize("n", range(len(LINES)), ids=[f"plateau@1-{n}" for n in range(len(LINES))])
def test_trace_gives_the_golden_actions_and_lrs(n: int) -> None:
    line = LINES[n]
    params, state, observations = setup_of(line)
    got = [
        (action, [repr(x) for x in lrs])
        for action, lrs in trace(replay(POLICY, params, state, observations, line["metric"]))
    ]
    want = [(w["action"], golden_decision(w)[0]) for w in line["decisions"]]
    assert got == want


@pytest.mark.parametrize("every", [1, 3, 17])
def test_reason_and_state_read_now_and_then_are_the_golden_ones(every: int) -> None:
    """reason() and state() describe the last advance however many advances went unread, and a
    stepper built from a stored state (mid-stream, loaded from its JSON) carries on exactly."""
    for n, line in enumerate(LINES):
        params, state, observations = setup_of(line)
        decisions = line["decisions"]
        half = len(observations) // 2
        if half:  # resume from the golden state after observation half - 1
            state = POLICY.load_state(json.loads(canonical_json(decisions[half - 1]["state"])))
        steppers = replay(POLICY, params, state, observations[half:], line["metric"])
        for i, stepper in enumerate(steppers, start=half):
            if i % every == 0 or i == len(observations) - 1:
                lrs, action, reason, state_json = golden_decision(decisions[i])
                where = f"line {n} decision {i}"
                assert [repr(x) for x in stepper.lrs] == lrs, where
                assert stepper.action == action, where
                assert stepper.reason() == reason, where
                assert canonical_json(stepper.state().model_dump()) == state_json, where


def test_a_fresh_stepper_has_no_reason_and_the_state_it_was_given() -> None:
    for flavor in ("torch", "keras"):
        params = POLICY.resolve({"flavor": flavor}, (0.1,))
        state = POLICY.init(params, (0.1,))
        stepper = POLICY.stepper(params, state)
        assert stepper.action == "" and not stepper.reduced
        assert stepper.lrs == state.lrs
        assert stepper.state() == state
        with pytest.raises(RuntimeError, match="no observation"):
            stepper.reason()
        assert list(replay(POLICY, params, state, [])) == []
        assert trace(replay(POLICY, params, state, [])) == []


# -- generated streams: trace() and replay() against step() one observation at a time ---------

metric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10.0, max_value=10.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 1e38, 3.5e38, -1e300]),
)


def stepwise(
    params: Frozen, state: State, observations: list[tuple[int, float]]
) -> list[tuple[str, list[str], str, bool, str]]:
    """step() one observation at a time: (action, lrs by repr, reason, reduced, state)."""
    out = []
    for step, value in observations:
        outcome, state = POLICY.step(params, state, Observation(step, value, "val_loss"))
        out.append(
            (
                outcome.action,
                [repr(x) for x in outcome.lrs],
                outcome.reason,
                outcome.reduced,
                canonical_json(state.model_dump()),
            )
        )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10**6),
    st.sampled_from(["torch", "keras"]),
    st.none() | st.lists(metric_values, min_size=1, max_size=120),
)
def test_trace_and_replay_agree_with_step(
    seed: int, flavor: str, values: list[float] | None
) -> None:
    """Params and base_lrs from tests/streams.py (plateaus, boundary values, non-finite values);
    the values are the stream's own or drawn by hypothesis."""
    stream = make_stream(seed, flavor)
    params = POLICY.resolve(stream.params, stream.base_lrs)
    state = POLICY.init(params, stream.base_lrs)
    if values is None:
        observations = list(zip(stream.steps, stream.values, strict=True))
    else:
        observations = [(10 * i, value) for i, value in enumerate(values)]
    want = stepwise(params, state, observations)

    traced = trace(replay(POLICY, params, state, observations, "val_loss"))
    assert [(a, [repr(x) for x in lrs]) for a, lrs in traced] == [(w[0], w[1]) for w in want]

    got = [
        (
            s.action,
            [repr(x) for x in s.lrs],
            s.reason(),
            s.reduced,
            canonical_json(s.state().model_dump()),
        )
        for s in replay(POLICY, params, state, observations, "val_loss")
    ]
    assert got == want
