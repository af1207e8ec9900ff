"""Elastic jobs, the pure part: the scaling rule that rescales a run's lrs when its job reports
a new world_size or global batch size.

A run created with ``"scaling": {"rule": "linear", "by": "world_size", "base": 8}`` says that
its base_lrs were tuned for 8 ranks. When the job reports another size (the world_size of its
observations, or ``POST /v1/runs/{run_id}/resize``), a ``scale`` entry joins the chain: from
its step on, every lr the run serves is the policy's lr times the rule's factor
(``linear``: size / base, Goyal et al.'s "larger batches need a proportionally larger lr";
``sqrt``: its square root, the rule often used with adaptive optimizers). The policy itself
never sees the factor: its state, its floors and its plateau detection are those of the base
size, so a resize never looks like a plateau and the lrs come back exactly when the size does.

Shared by the service (domain) and the offline check (bundle), so that verify recomputes
exactly what the service wrote.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lrpilot.policies.base import fmt_change, fmt_lrs

RULES = ("linear", "sqrt")
MEASURES = ("world_size", "batch_size")
MAX_SIZE = 2**31 - 1
SCALE = "scale"  # the action of a scale entry


def is_scaling_spec(doc: Any) -> bool:
    """Whether ``doc`` is a run's scaling spec as the service stores it."""
    return (
        isinstance(doc, dict)
        and set(doc) == {"rule", "by", "base"}
        and doc["rule"] in RULES
        and doc["by"] in MEASURES
        and type(doc["base"]) is int
        and 1 <= doc["base"] <= MAX_SIZE
    )


def factor(spec: Mapping[str, Any], size: int) -> float:
    """What the rule multiplies the base lrs by at ``size`` (1.0 at the base size)."""
    ratio = size / spec["base"]  # two ints: one correctly rounded division
    return ratio if spec["rule"] == "linear" else math.sqrt(ratio)  # sqrt: correctly rounded


def scaled(lrs: Iterable[float], by: float) -> list[float]:
    """The lrs a run serves: the policy's, times the factor in force."""
    if by == 1.0:
        return list(lrs)
    return [lr * by for lr in lrs]


@dataclass(frozen=True, slots=True)
class InForce:
    """The size a run's lrs are scaled for, the factor, and the step its scale entry applies
    from (None: the base size, since the start)."""

    size: int
    factor: float = 1.0
    step: int | None = None

    def doc(self) -> dict[str, Any]:
        return {"size": self.size, "factor": self.factor, "step": self.step}

    @staticmethod
    def of(spec: Mapping[str, Any] | None, doc: Mapping[str, Any] | None) -> InForce | None:
        """A run's scale in force from its stored spec and scale (None: no scaling rule)."""
        if spec is None:
            return None
        if doc is None:
            return InForce(spec["base"])
        return InForce(int(doc["size"]), float(doc["factor"]), doc["step"])


def entry_fields(spec: Mapping[str, Any], was: InForce, size: int) -> dict[str, Any]:
    """The fields a scale entry adds to the entry shape: the new factor and what changed."""
    return {"scale": factor(spec, size), "resize": {"by": spec["by"], "from": was.size, "to": size}}


def reason(
    spec: Mapping[str, Any], was: int, size: int, previous_lrs: list[float], lrs: list[float]
) -> str:
    """One sentence: what the job reported, which rule applied, and what it did to the lrs."""
    by = spec["by"]
    rule = "linear scaling rule" if spec["rule"] == "linear" else "square-root scaling rule"
    change = fmt_change(tuple(previous_lrs), tuple(lrs))
    return (
        f"{by} {was} -> {size}: {rule}, base_lrs are for {by} {spec['base']}: {change} "
        f"({factor(spec, size)!r} x the policy's)"
    )


def note(spec: Mapping[str, Any], force: InForce, lrs: list[float]) -> str:
    """What a decision's reason adds while a factor is in force: the policy's reason speaks
    of its own lrs, the served ones are these."""
    return f"x {force.factor!r} for {spec['by']} {force.size}: {fmt_lrs(tuple(lrs))} served"
