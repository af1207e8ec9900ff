"""What the golden-file generators (scripts/make_golden*.py) share: a stream decided into one
golden line (tests/golden/README.md), and a golden file written, never over a released one.

Each generator keeps what is its own: the streams, and the reference it checks them against.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))  # the service as in this tree, installed or not

from lrpilot.canonical import canonical_json  # noqa: E402
from lrpilot.policies import Observation, get_policy  # noqa: E402
from lrpilot.policies.base import State  # noqa: E402


def decide(
    ref: str,
    params: dict[str, Any],
    base_lrs: Sequence[float],
    observations: Iterable[tuple[int, float]],
    metric: str,
    lrs_at: Iterable[int] | None = None,
    lrs_at_from_start: bool = False,
) -> dict[str, Any]:
    """The golden line of `observations` run through policy `ref` ("name@version") from its
    initial state: each decision's lrs, action, reason and the state it left. With `lrs_at`
    steps, also the policy's lrs at each, from the state in force there (the last decision's
    at or before it), or from the initial state with `lrs_at_from_start`."""
    name, version = ref.split("@")
    policy = get_policy(name, int(version))
    base = tuple(base_lrs)
    resolved = policy.resolve(params, base)
    state = policy.init(resolved, base)
    in_force: list[tuple[int, State]] = [(-1, state)]  # (step, the state its decision left)
    decisions, seen = [], []
    for step, value in observations:
        outcome, state = policy.step(resolved, state, Observation(step, value, metric))
        decisions.append(
            {
                "lrs": list(outcome.lrs),
                "action": outcome.action,
                "reason": outcome.reason,
                "state": state.model_dump(),
            }
        )
        in_force.append((step, state))
        seen.append([step, value])
    line: dict[str, Any] = {
        "policy": ref,
        "params": resolved.model_dump(),
        "base_lrs": list(base),
        "metric": metric,
        "observations": seen,
        "decisions": decisions,
    }
    if lrs_at is not None:
        line["lrs_at"] = []
        for step in lrs_at:
            at = in_force[0][1] if lrs_at_from_start else _in_force_at(in_force, step)
            line["lrs_at"].append([step, list(policy.lrs_at(resolved, at, step))])
    return line


def _in_force_at(in_force: list[tuple[int, State]], step: int) -> State:
    return [state for when, state in in_force if when <= step][-1]


def refuses(out: Path, force: bool) -> bool:
    """True, with the reason on stderr, when `out` exists and `force` was not given."""
    if out.exists() and not force:
        print(
            f"refusing to overwrite {out}: a released policy version's golden file never "
            "changes (a behaviour change is a new policy version with its own file); "
            "pass --force only for an unreleased version",
            file=sys.stderr,
        )
        return True
    return False


def write(out: Path, lines: Iterable[Any]) -> None:
    """Write `lines` to `out`, one canonical-JSON line each, whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(canonical_json(line) + "\n" for line in lines), encoding="utf-8")
    tmp.replace(out)
