"""Write tests/golden/wsd@1.jsonl: frozen decisions and lrs of warmup-stable-decay.

One canonical-JSON line per stream (tests/golden/README.md), each with ``lrs_at`` (from the
state in force at each step: a plateau may have started the decay) at step 0, 1, each phase's
boundaries and the steps either side, and large steps up to 2**62. Streams: transformers'
grid (every warmup and decay shape it has, min_lr_ratio, num_cycles, the horizon or the stable
steps), the shapes and starts lrpilot adds (exponential, step drops, decay_start_fraction, no
planned decay) and plateau triggers (min and max, rel and abs, NaN and infinities), with
seeded random ones.

Before writing, every lr of every line is checked against two references, and the file is
written only if all agree:

* transformers' get_wsd_schedule (its LambdaLR's lr_lambda times the base lrs, what
  ``scheduler.step()`` sets), for every line whose params transformers takes: the same float
  for linear and 1-sqrt shapes, within 8 ulps of the base lr for a cosine (libm's cos);
* the documented formula in 200-bit arithmetic (mpmath), the plateau trigger rerun by hand
  on the observations: within 1e-12 relative plus 1e-15 times the base lr.

    python scripts/make_golden_wsd.py [--out tests/golden/wsd@1.jsonl] [--force] [--no-verify]
"""

from __future__ import annotations

import math
import random
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import golden_lines

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "wsd@1.jsonl"
MAX_STEP = 2**62
NAN, INF = math.nan, math.inf
SHARED = ("linear", "cosine", "1-sqrt")  # the shapes transformers has

Case = tuple[dict[str, Any], tuple[float, ...], list[float] | None]


def tf(**p: Any) -> dict[str, Any]:
    return p


HAND_WRITTEN: list[Case] = [
    (tf(num_warmup_steps=100, num_decay_steps=200, num_training_steps=1000), (0.1,), None),
    (
        tf(num_warmup_steps=10, num_decay_steps=50, num_stable_steps=40, warmup_type="cosine"),
        (0.1, 0.01),
        None,
    ),
    (
        tf(
            num_warmup_steps=30,
            num_decay_steps=60,
            num_training_steps=200,
            warmup_type="1-sqrt",
            decay_type="1-sqrt",
            min_lr_ratio=0.1,
        ),
        (0.3,),
        None,
    ),
    (
        tf(
            num_warmup_steps=0,
            num_decay_steps=100,
            num_training_steps=300,
            decay_type="cosine",
            num_cycles=1.25,
            min_lr_ratio=0.05,
        ),
        (0.1, 0.02),
        None,
    ),
    (tf(num_warmup_steps=5, num_decay_steps=0, num_training_steps=50), (0.1,), None),
    (
        tf(
            num_warmup_steps=20,
            num_training_steps=400,
            decay_start_fraction=0.8,
            decay_type="step",
            drop_at=[0.0, 0.5],
        ),
        (0.1,),
        None,
    ),
    (
        tf(
            num_warmup_steps=50,
            num_stable_steps=100,
            num_decay_steps=100,
            warmup_type="exponential",
            decay_type="exponential",
            min_lr_ratio=0.01,
        ),
        (0.1, 0.001),
        None,
    ),
    (tf(num_warmup_steps=10), (0.1,), None),  # stable until a decay is decided
    (
        tf(num_warmup_steps=10, num_decay_steps=100, plateau={"patience": 2}),
        (0.1,),
        [3.0, 2.0, 1.5, 1.4, 1.4, 1.4, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6],
    ),
    (
        tf(
            num_warmup_steps=0,
            num_decay_steps=50,
            num_training_steps=1000,
            decay_type="linear",
            plateau={"mode": "max", "patience": 1, "threshold": 0.01, "threshold_mode": "abs"},
        ),
        (0.1, 0.05),
        [0.5, 0.6, NAN, 0.605, 0.61, 0.7, 0.7, 0.71, 0.9, 0.95, 1.0, 1.0, 1.0, 1.0, 1.0],
    ),
    (
        tf(
            num_warmup_steps=5,
            num_decay_steps=30,
            num_stable_steps=10**6,
            decay_type="1-sqrt",
            min_lr_ratio=0.1,
            plateau={"patience": 0},
        ),
        (1.0,),
        [INF, 2.0, 1.0, NAN, -INF, 5.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -1.0, -2.0],
    ),
]


def random_case(rng: random.Random) -> Case:
    n = rng.choice((1, 2, 3))
    base = tuple(10 ** rng.uniform(-4, 0) for _ in range(n))
    w, d = rng.randint(0, 300), rng.randint(0, 600)
    p: dict[str, Any] = {
        "num_warmup_steps": w,
        "num_decay_steps": d,
        "warmup_type": rng.choice(SHARED),
        "decay_type": rng.choice(SHARED),
        "min_lr_ratio": rng.choice((0.0, rng.uniform(0.0, 0.5))),
        "num_cycles": rng.choice((0.5, rng.uniform(0.0, 3.0))),
    }
    if rng.random() < 0.5:
        p["num_training_steps"] = w + d + rng.randint(0, 2000)
    else:
        p["num_stable_steps"] = rng.randint(0, 2000)
    return p, base, None


def phase_steps(p: dict[str, Any]) -> list[int]:
    w, t = p["num_warmup_steps"], p["num_training_steps"]
    out = [w]
    if p["num_stable_steps"] is not None:
        start: int | None = w + p["num_stable_steps"]
    elif p["decay_start_fraction"] is not None:
        start = math.floor(Fraction(p["decay_start_fraction"]) * t)
    elif t is not None:
        start = t - p["num_decay_steps"]
    else:
        start = None
    if start is not None:
        d = p["num_decay_steps"] if p["num_decay_steps"] is not None else t - start
        out += [start, start + d // 2, start + d]
    return out


LARGE = [10**6, 2**31, 2**53 + 1, MAX_STEP - 1, MAX_STEP]


def probe_steps(p: dict[str, Any], observed: list[int]) -> list[int]:
    steps = {0, 1, 2, 3, 10, 99, 100, 101, 1000, 4095, *LARGE, *observed}
    for b in phase_steps(p):
        steps.update((b - 1, b, b + 1))
    return sorted(s for s in steps if 0 <= s <= MAX_STEP)


def stream(n: int, case: Case) -> tuple[dict[str, Any], tuple[float, ...], list[int], list[float]]:
    params, base, values = case
    rng = random.Random(f"wsd-observations-{n}")
    if values is not None:  # a plateau stream: one evaluation every 7 steps from step 7
        return params, base, [7 * (i + 1) for i in range(len(values))], values
    w = params["num_warmup_steps"]
    steps = sorted({rng.randint(0, w + 3000) for _ in range(14)} | {0, w, 10**6})
    level, vals = 2.0, []
    for _ in steps:
        level *= rng.uniform(0.9, 1.02)
        vals.append(rng.choice((level, level, level, NAN, INF)))
    return params, base, steps, vals


def cases() -> list[Case]:
    rng = random.Random("wsd-params")
    return HAND_WRITTEN + [random_case(rng) for _ in range(8)]


def lines() -> list[dict[str, Any]]:
    out = []
    for n, case in enumerate(cases()):
        params, base, steps, vals = stream(n, case)
        from lrpilot.policies import get_policy

        resolved = get_policy("wsd", 1).resolve(params, base).model_dump()
        out.append(
            golden_lines.decide(
                "wsd@1",
                params,
                base,
                zip(steps, vals, strict=True),
                "val_loss",
                lrs_at=probe_steps(resolved, steps),
            )
        )
    return out


# -- the references ---------------------------------------------------------------------------


def decided_start(p: dict[str, Any], line: dict[str, Any]) -> list[tuple[int, int | None]]:
    """(from step, decay start) in force: the planned start, then the plateau's, rerun."""
    planned = phase_steps(p)[1] if len(phase_steps(p)) > 1 else None
    out: list[tuple[int, int | None]] = [(0, planned)]
    rule = p["plateau"]
    if rule is None:
        return out
    best = -INF if rule["mode"] == "max" else INF
    bad, t = 0, rule["threshold"]
    for step, raw in line["observations"]:
        v = float(raw)
        if step < p["num_warmup_steps"] or (planned is not None and step >= planned):
            continue
        if rule["mode"] == "min":
            better = v < (best * (1 - t) if rule["threshold_mode"] == "rel" else best - t)
        else:
            better = v > (best * (t + 1) if rule["threshold_mode"] == "rel" else best + t)
        best, bad = (v, 0) if better else (best, bad + 1)
        if bad > rule["patience"]:
            out.append((step, step))
            break
    return out


def exact(p: dict[str, Any], base: list[float], k: int, start: int | None) -> list[Any]:
    import mpmath

    mpmath.mp.prec = 200
    mpf, pi = mpmath.mpf, mpmath.pi
    w, m = p["num_warmup_steps"], mpf(p["min_lr_ratio"])
    if k < w:
        f = golden_lines.exact_ramp(p["warmup_type"], mpf(k) / w, m)
    elif start is None or k < start:
        f = mpf(1)
    else:
        d = p["num_decay_steps"]
        if d is None:
            d = p["num_training_steps"] - start
        if k >= start + d:
            f = m
        else:
            x = mpf(k - start) / max(1, d)
            kind = p["decay_type"]
            if kind == "exponential":
                f = m**x
            elif kind == "step":
                f = mpf(p["drop_factor"]) ** sum(1 for a in p["drop_at"] if a <= x)
            else:
                cycles = mpf(p["num_cycles"])
                f = {
                    "linear": 1 - x,
                    "cosine": (1 + mpmath.cos(2 * pi * cycles * x)) / 2,
                    "1-sqrt": 1 - mpmath.sqrt(x),
                }[kind]
                f = f * (1 - m) + m
    return [mpf(b) * f for b in base]


def transformers_lrs(
    p: dict[str, Any], base: list[float], steps: list[int]
) -> dict[int, list[float]]:
    import torch
    from transformers.optimization import get_wsd_schedule

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(groups, lr=base[0])
    sched = get_wsd_schedule(
        opt,
        p["num_warmup_steps"],
        p["num_decay_steps"],
        p["num_training_steps"],
        p["num_stable_steps"],
        p["warmup_type"],
        p["decay_type"],
        p["min_lr_ratio"],
        p["num_cycles"],
    )
    # LambdaLR's lr at step k: base_lr * lr_lambda(k)
    return {
        k: [b * f(k) for b, f in zip(sched.base_lrs, sched.lr_lambdas, strict=True)] for k in steps
    }


def shared_with_transformers(p: dict[str, Any]) -> bool:
    return (
        p["plateau"] is None
        and p["decay_start_fraction"] is None
        and p["num_decay_steps"] is not None
        and (p["num_training_steps"] is not None or p["num_stable_steps"] is not None)
        and p["warmup_type"] in SHARED
        and p["decay_type"] in SHARED
    )


def check(line: dict[str, Any]) -> str | None:
    from lrpilot.canonical import parse_float

    p = line["params"]
    base = [parse_float(x) for x in line["base_lrs"]]
    ours = {k: [parse_float(x) for x in lrs] for k, lrs in line["lrs_at"]}
    for (k, _), d in zip(line["observations"], line["decisions"], strict=True):
        if [parse_float(x) for x in d["lrs"]] != ours[k]:
            return f"decision at step {k} is not lrs_at({k})"
    starts = decided_start(p, line)
    for k, got in ours.items():
        start = [s for when, s in starts if when <= k][-1]
        for g, (a, b) in enumerate(zip(got, exact(p, base, k, start), strict=True)):
            if abs(a - b) > 1e-12 * abs(b) + 1e-15 * base[g]:
                return f"step {k} group {g}: ours {a!r}, exact {float(b)!r}"
    if shared_with_transformers(p):
        theirs = transformers_lrs(p, base, sorted(ours))
        exact_shapes = p["warmup_type"] != "cosine" and p["decay_type"] != "cosine"
        for k, got in ours.items():
            for g, (a, b) in enumerate(zip(got, theirs[k], strict=True)):
                if a != b if exact_shapes else abs(a - b) > 8 * 2.0**-52 * base[g]:
                    return f"step {k} group {g}: ours {a!r}, transformers {b!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    return golden_lines.generate(
        argv,
        __doc__,
        DEFAULT_OUT,
        lines,
        check,
        against="transformers' get_wsd_schedule and the formula in 200 bits",
        no_verify_help="skip the reference cross-checks",
    )


if __name__ == "__main__":
    sys.exit(main())
