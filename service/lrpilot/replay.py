"""Replay an observation stream through a policy: the project's one replay loop.

Pure, like the policies: no I/O, no SQL, no HTTP, no clock. It runs a policy's ``Stepper``
(the policy's own rule over plain mutable state, see ``lrpilot.policies.base``), so a replay of
a million observations costs one ``advance()`` each; reasons and frozen states are built only
for the observations a caller asks them of.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from lrpilot.policies.base import Frozen, Policy, State, Stepper


def replay(
    policy: Policy,
    params: Frozen,
    state: State,
    observations: Iterable[tuple[int, float]],
    metric: str = "metric",
) -> Iterator[Stepper]:
    """Feed (step, value) pairs through the policy; yield the stepper after each one (the same
    object each time: read what you need before the next).

    ``params`` are resolved params (``policy.resolve``) and ``state`` the state to start from
    (``policy.init`` or a stored one); neither is changed. The stepper is built here, at the
    call, so a policy that refuses them raises now rather than at the first ``next()``.
    ``metric`` names the value in the reasons, as ``Observation.metric`` does for ``step``.
    """
    stepper = policy.stepper(params, state, metric)
    return _advance_each(stepper, observations)


def _advance_each(stepper: Stepper, observations: Iterable[tuple[int, float]]) -> Iterator[Stepper]:
    advance = stepper.advance
    for step, value in observations:
        advance(step, value)
        yield stepper


def trace(
    policy: Policy,
    params: Frozen,
    state: State,
    observations: Iterable[tuple[int, float]],
    metric: str = "metric",
) -> list[tuple[str, tuple[float, ...]]]:
    """(action, lrs) after each observation, as ``replay`` gives them (what-if). The lrs
    tuples are the stepper's own: one object as long as no reduction changes them."""
    return [(s.action, s.lrs) for s in replay(policy, params, state, observations, metric)]
