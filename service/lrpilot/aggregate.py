"""Aggregated mode, the pure part: the weighted mean of the ranks' reports and the words a
decision taken without some ranks adds to its reason. Shared by the service (domain) and the
offline checks (bundle), so that verify recomputes exactly what the service wrote."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lrpilot.canonical import parse_float

ON_TIMEOUT = ("decide", "refuse")


def weighted_mean(reports: Iterable[tuple[float, float]]) -> float:
    """sum(w * v) / sum(w) over (value, weight) pairs in rank order, in plain IEEE arithmetic:
    a NaN among the values makes the mean NaN, +inf and -inf together make it NaN."""
    total = 0.0
    weights = 0.0
    for value, weight in reports:
        total += weight * value
        weights += weight
    return total / weights


def mean_of(ranks: Sequence[dict[str, Any]]) -> float:
    """The weighted mean of a decision's ``ranks`` list."""
    return weighted_mean((parse_float(r["value"]), parse_float(r["weight"])) for r in ranks)


def _listed(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def timeout_note(counted: Sequence[int], missing: Sequence[int], timeout_s: float) -> str:
    """What a decision taken at the timeout adds to its reason: which ranks were counted."""
    world = len(counted) + len(missing)
    return (
        f"ranks {_listed(counted)} of {world} counted; {_listed(missing)} did not report "
        f"within {timeout_s:g} s"
    )


def reason_with(reason: str, doc: dict[str, Any]) -> str:
    """The reason a decision document carries: the policy's, and for a decision taken at the
    timeout without some ranks, which ranks were counted."""
    missing = doc.get("missing_ranks")
    if not missing:
        return reason
    counted = [int(r["rank"]) for r in doc.get("ranks", ())]
    return f"{reason}; {timeout_note(counted, missing, parse_float(doc['timeout_s']))}"


def is_aggregate_spec(doc: Any) -> bool:
    """Whether ``doc`` is a run's aggregate spec as the service stores it."""
    if not isinstance(doc, dict) or set(doc) != {"timeout_s", "on_timeout"}:
        return False
    timeout = doc["timeout_s"]
    return (
        isinstance(timeout, float) and 0.0 < timeout <= 3600.0 and doc["on_timeout"] in ON_TIMEOUT
    )
