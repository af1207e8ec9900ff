"""What the golden-file generators (scripts/make_golden*.py) share: a stream decided into one
golden line (tests/golden/README.md), a golden file written, never over a released one, and
the command line of a generator that writes one file after checking every line.

Each generator keeps what is its own: the streams, and the reference it checks them against.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))  # the service as in this tree, installed or not

from lrpilot.canonical import canonical_json  # noqa: E402
from lrpilot.policies import get_policy  # noqa: E402
from lrpilot.policies.base import State  # noqa: E402
from lrpilot.replay import Replay  # noqa: E402

# A stream: params, base lrs, the steps and the values observed at them.
Stream = tuple[dict[str, Any], tuple[float, ...], list[int], list[float]]


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
    at or before it), or from the initial state with `lrs_at_from_start`; and, when the policy
    schedules momentum or weight decay, those at the same steps (`extras_at`)."""
    name, version = ref.split("@")
    policy = get_policy(name, int(version))
    base = tuple(base_lrs)
    resolved = policy.resolve(params, base)
    replay = Replay(policy, resolved, base, metric)  # the service's one replay loop
    in_force: list[tuple[int, State]] = [(-1, replay.state())]  # (step, the state it left)
    decisions, seen = [], []
    for step, value in observations:
        action = replay.observe(step, value)
        state = replay.state()
        decisions.append(
            {
                "lrs": list(replay.stepper.lrs),
                "action": action,
                "reason": replay.stepper.reason(),
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
        line["lrs_at"], extras_at = [], []
        for step in lrs_at:
            at = in_force[0][1] if lrs_at_from_start else _in_force_at(in_force, step)
            line["lrs_at"].append([step, list(policy.lrs_at(resolved, at, step))])
            extras = policy.extras_at(resolved, at, step)
            if extras:
                extras_at.append([step, {name: list(v) for name, v in extras.items()}])
        if extras_at:  # a policy that schedules momentum or weight decay: those too
            line["extras_at"] = extras_at
    return line


def decided(ref: str, metric: str, streams: Callable[[], Iterable[Stream]]) -> list[dict[str, Any]]:
    """The golden line of each stream that ``streams()`` gives (``decide`` without lrs_at)."""
    return [
        decide(ref, params, base_lrs, zip(steps, values, strict=True), metric)
        for params, base_lrs, steps, values in streams()
    ]


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


def lrs_check(
    reference: Callable[[dict[str, Any]], list[list[float]]],
) -> Callable[[dict[str, Any]], str | None]:
    """A check for ``generate``: a line's lrs after every observation against the ``reference``'s,
    as the same floats (repr tells -0.0 from 0.0 and a NaN from a number); a line that differs
    is named by its params."""

    def check(line: dict[str, Any]) -> str | None:
        want, got = reference(line), [d["lrs"] for d in line["decisions"]]
        same = [[repr(x) for x in r] for r in want] == [[repr(x) for x in r] for r in got]
        return None if same else str(line["params"])

    return check


def generate(
    argv: list[str] | None,
    doc: str | None,
    default_out: Path,
    lines: Callable[[], list[dict[str, Any]]],
    check: Callable[[dict[str, Any]], str | None],
    *,
    checks: Callable[[dict[str, Any]], bool] | None = None,
    against: str = "the reference",
    no_verify_help: str | None = None,
) -> int:
    """A generator's main: ``--out`` (``default_out``) and ``--force``; refuse a released file
    (exit 2); make the ``lines``; ``check`` each one (or each one ``checks`` selects, and then
    say how many), which says how the line disagrees with the reference (``against``), or None;
    write only if none does, else exit 1 naming the stream. With ``no_verify_help``, a
    ``--no-verify`` flag skips the check."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--force", action="store_true", help="overwrite (never for a released version)")
    if no_verify_help is not None:
        ap.add_argument("--no-verify", action="store_true", help=no_verify_help)
    args = ap.parse_args(argv)
    out: Path = args.out
    if refuses(out, args.force):
        return 2

    made = lines()
    checked = 0
    for n, line in enumerate([] if getattr(args, "no_verify", False) else made):
        if checks is not None and not checks(line):
            continue
        problem = check(line)
        if problem is not None:
            print(f"stream {n} disagrees with {against}: {problem}", file=sys.stderr)
            return 1
        checked += 1
    write(out, made)
    counted = "" if checks is None else f" ({checked} checked against {against})"
    print(f"wrote {len(made)} streams to {out}{counted}")
    return 0


def exact_ramp(kind: str, x: Any, low: Any) -> Any:
    """A warmup's factor in mpmath (the caller sets its precision) at the fraction ``x`` of it
    done, from ``low`` to 1: linear, cosine, 1-sqrt shapes times (1 - low) plus low, or
    exponential, low ** (1 - x) (lrpilot.policies.curve.warmup_ramp's formula)."""
    import mpmath

    if kind == "exponential":
        return low ** (1 - x)
    shape = {
        "linear": x,
        "cosine": (1 - mpmath.cos(mpmath.pi * x)) / 2,
        "1-sqrt": 1 - mpmath.sqrt(1 - x),
    }[kind]
    return shape * (1 - low) + low
