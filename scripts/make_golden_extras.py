"""Write tests/golden/one_cycle@2.jsonl and cyclic@2.jsonl: the lrs, momentum and weight decay.

The golden format of the schedule families (tests/golden/README.md), with ``extras_at``: the
momentum and weight decay the policy answers at each ``lrs_at`` step. The cases are
make_golden_schedules.py's (its hand-written and seeded random params of one_cycle and cyclic),
each with torch's momentum defaults, other momentum levels (one value, or one per group), the
momentum cycling off, and Megatron's weight decay ramps (constant, linear, cosine).

Before writing, every line is checked: its lrs are one_cycle@1's or cyclic@1's (the same
floats, at every lrs_at step and decision); its momentum equals torch's OneCycleLR or CyclicLR
with ``cycle_momentum`` stepped to each step up to --torch-steps, within 1e-10 relative; its
weight decay equals Megatron-LM's get_wd formula within 1e-12 relative (the same float for the
constant and linear ramps). A released version's file never changes: the script refuses to
overwrite one unless --force.

    python scripts/make_golden_extras.py [--out-dir tests/golden] [--force] [--torch-steps 1000]
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import golden_lines
import make_golden_schedules as schedules

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("one_cycle", "cyclic")

# what a case adds to a @1 case's params: momentum and weight decay
VARIANTS: list[dict[str, Any]] = [
    {},  # torch's defaults: the momentum cycled, no weight decay
    {"base_momentum": 0.5, "max_momentum": 0.99, "start_wd": 0.01, "end_wd": 0.01},
    {"cycle_momentum": False, "start_wd": 0.0, "end_wd": 0.1, "wd_incr_style": "linear"},
    {"start_wd": 0.1, "end_wd": 0.001, "wd_incr_style": "cosine", "wd_incr_steps": 77},
]


def cases(family: str) -> list[tuple[dict[str, Any], tuple[float, ...]]]:
    base_cases = list(schedules.HAND_WRITTEN[family])
    rng = random.Random(f"{family}@2-params")
    base_cases += [schedules.random_case(family, rng) for _ in range(5)]
    out = []
    for n, (params, base) in enumerate(base_cases):
        extra = dict(VARIANTS[n % len(VARIANTS)])
        if n % 3 == 2 and "cycle_momentum" not in extra:  # one momentum level a group
            extra["base_momentum"] = [0.8 - 0.1 * g for g in range(len(base))]
            extra["max_momentum"] = [0.9 - 0.05 * g for g in range(len(base))]
        if family == "cyclic" and "start_wd" in extra:
            extra.setdefault("wd_incr_steps", 500)  # a cycle has no end of its own
        out.append((params | extra, base))
    return out


def lines(family: str) -> list[dict[str, Any]]:
    from lrpilot.policies import get_policy

    made = []
    for n, (params, base) in enumerate(cases(family)):
        rng = random.Random(f"{family}@2-observations-{n}")
        doc = get_policy(family, 2).resolve(params, base).model_dump()
        steps = schedules.observation_steps(family, doc, rng)
        vals = schedules.values(rng, len(steps))
        made.append(
            golden_lines.decide(
                f"{family}@2",
                params,
                base,
                zip(steps, vals, strict=True),
                "val_loss",
                lrs_at=schedules.probe_steps(family, doc),
                lrs_at_from_start=True,
            )
        )
    return made


def torch_momentum(family: str, line: dict[str, Any], steps: list[int]) -> dict[int, list[float]]:
    """torch's momentum of each group at ``steps`` (ascending), stepped there from 0."""
    import torch
    from torch.optim import lr_scheduler

    p = line["params"]
    base = line["base_lrs"]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(groups, lr=base[0], momentum=0.9)
    ramp = ("start_wd", "end_wd", "wd_incr_steps", "wd_incr_style")  # Megatron's, not torch's
    kwargs = {k: v for k, v in p.items() if k not in ramp}
    cls = lr_scheduler.OneCycleLR if family == "one_cycle" else lr_scheduler.CyclicLR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = cls(opt, **kwargs)
    return schedules.stepped(sched, opt, steps, "momentum")


def verify(family: str, line: dict[str, Any], torch_steps: int) -> str | None:
    from lrpilot.policies import get_policy

    p = line["params"]
    base = tuple(line["base_lrs"])
    one = get_policy(family, 1)
    p1 = {k: v for k, v in p.items() if k in one.params_model.model_fields}
    r1 = one.resolve(p1, base)
    s1 = one.init(r1, base)
    for step, lrs in line["lrs_at"]:
        if [repr(x) for x in lrs] != [repr(x) for x in one.lrs_at(r1, s1, step)]:
            return f"lrs_at({step}) is not {family}@1's"
    for (step, _), d in zip(line["observations"], line["decisions"], strict=True):
        if [repr(x) for x in d["lrs"]] != [repr(x) for x in one.lrs_at(r1, s1, step)]:
            return f"the decision at step {step} is not {family}@1's"
    extras = dict((step, e) for step, e in line.get("extras_at", []))
    steps = sorted(extras)
    if p["cycle_momentum"]:
        limit = torch_steps if family == "cyclic" else min(torch_steps, p["total_steps"] - 1)
        near = [s for s in steps if s <= limit]
        theirs = torch_momentum(family, line, near)
        for step in near:
            for a, b in zip(extras[step]["momentum"], theirs[step], strict=True):
                if abs(a - b) > 1e-10 * abs(b):
                    return f"momentum at step {step}: {a!r}, torch {b!r}"
    if p["start_wd"] is not None:
        sys.path.insert(0, str(ROOT))
        from tests.policies.test_extras_torch import megatron_wd  # the one copy of Megatron's

        n = len(base)
        starts = p["start_wd"] if isinstance(p["start_wd"], list) else [p["start_wd"]] * n
        ends = p["end_wd"] if isinstance(p["end_wd"], list) else [p["end_wd"]] * n
        incr = p["wd_incr_steps"] or p["total_steps"]
        for step in steps:
            want = [
                megatron_wd(step, s, e, incr, p["wd_incr_style"])
                for s, e in zip(starts, ends, strict=True)
            ]
            got = extras[step]["weight_decay"]
            exact = p["wd_incr_style"] != "cosine"
            for a, b in zip(got, want, strict=True):
                if (a != b) if exact else abs(a - b) > 1e-12 * abs(b):
                    return f"weight decay at step {step}: {a!r}, Megatron {b!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tests" / "golden")
    ap.add_argument("--force", action="store_true", help="overwrite (never for a released version)")
    ap.add_argument("--torch-steps", type=int, default=1000, help="steps torch is stepped to")
    args = ap.parse_args(argv)
    status = 0
    for family in FAMILIES:
        out: Path = args.out_dir / f"{family}@2.jsonl"
        if golden_lines.refuses(out, args.force):
            status = 2
            continue
        made = lines(family)
        for n, line in enumerate(made):
            problem = verify(family, line, args.torch_steps)
            if problem is not None:
                print(f"{family}@2 line {n} disagrees: {problem}", file=sys.stderr)
                return 1
        golden_lines.write(out, made)
        print(f"wrote {len(made)} lines to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
