"""The policy registry: every released ``name@version``, served forever."""

from __future__ import annotations

from lrpilot.policies.base import (
    Frozen,
    Observation,
    Outcome,
    Policy,
    PolicyError,
    State,
    policy_id,
)
from lrpilot.policies.compose import Groups, Scaled, Sequence
from lrpilot.policies.cosine_with_min_lr import COSINE_WITH_MIN_LR
from lrpilot.policies.inverse_sqrt import INVERSE_SQRT
from lrpilot.policies.plateau import Plateau
from lrpilot.policies.plateau2 import Plateau2
from lrpilot.policies.range_test import RangeTest
from lrpilot.policies.schedules import SCHEDULES
from lrpilot.policies.schedules2 import SCHEDULES2
from lrpilot.policies.wsd import WSD

POLICIES: dict[str, Policy] = {
    policy_id(p.name, p.version): p
    for p in (
        Plateau(),
        Plateau2(),
        Sequence(),
        Scaled(),
        *SCHEDULES,
        *SCHEDULES2,
        RangeTest(),
        INVERSE_SQRT,
        WSD,
        COSINE_WITH_MIN_LR,
        Groups(),
    )
}


def get_policy(name: str, version: int) -> Policy:
    """The policy ``name@version``; PolicyError names what is served when it is unknown."""
    try:
        return POLICIES[policy_id(name, version)]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        field = "version" if any(p.name == name for p in POLICIES.values()) else "name"
        raise PolicyError(
            [((field,), f"unknown policy {policy_id(name, version)!r}; served: {known}")]
        ) from None


ACTIONS: frozenset[str] = frozenset(a for p in POLICIES.values() for a in p.actions)


__all__ = [
    "POLICIES",
    "Frozen",
    "Observation",
    "Outcome",
    "Policy",
    "PolicyError",
    "State",
    "get_policy",
    "policy_id",
]
