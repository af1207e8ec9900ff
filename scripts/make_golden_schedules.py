"""Write tests/golden/<family>@1.jsonl for the schedule families: frozen decisions and lrs.

One canonical-JSON line per case, in the golden format (tests/golden/README.md):
``{"policy", "params" (resolved), "base_lrs", "metric", "observations": [[step, value], ...],
"decisions": [{"lrs", "action", "reason", "state"}, ...], "lrs_at": [[step, [lrs]], ...]}``.
``lrs_at`` holds the lrs at a spread of training steps: 0, 1, each boundary of the schedule and
the steps either side of it, and large steps up to 2**62.

A released version's file must never change, so this script refuses to overwrite an existing
file unless --force (use it only for a version that has not been released). Before writing, every
lr in a file (each lrs_at entry and each decision) is checked against two references, and a file
is written only if all of them agree:

* torch's scheduler (keras' InverseTimeDecay for inverse_time, fed a float64 initial lr;
  transformers' get_inverse_sqrt_schedule, fairseq's or T5's formula or The Annotated
  Transformer's rate for inverse_sqrt, by its form; transformers'
  get_cosine_with_min_lr_schedule_with_warmup for cosine_with_min_lr, after the warmup when its
  shape is not linear) stepped to that step, for steps up to --torch-steps: within 1e-10
  relative;
* the exact value of the family's formula (mpmath, 200 bits), at every step: within 1e-12
  relative. Both plus 1e-15 times the largest lr, for lrs at zero.

    python scripts/make_golden_schedules.py [--out-dir tests/golden] [--family NAME ...]
        [--force] [--no-verify] [--torch-steps 5000]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import golden_lines

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden"
MAX_STEP = 2**62
NAN, INF = math.nan, math.inf
RANDOM_CASES = 7  # a family, after the hand-written ones

Case = tuple[dict[str, Any], tuple[float, ...]]

HAND_WRITTEN: dict[str, list[Case]] = {
    "constant": [
        ({}, (0.1,)),
        ({"factor": 0.5, "total_iters": 0}, (0.1, 0.01)),  # torch never undoes the factor
        ({"factor": 1.0, "total_iters": 10}, (0.3,)),
        ({"factor": 0.1, "total_iters": 1000}, (0.1, 0.01, 1e-4)),
        ({"factor": 1.0 / 3, "total_iters": MAX_STEP}, (1.0,)),
    ],
    "step": [
        ({"step_size": 30}, (0.1,)),
        ({"step_size": 1, "gamma": 0.5}, (0.1, 0.0)),
        ({"step_size": 7, "gamma": 1.5}, (0.1, 0.0)),  # growth: inf one day, 0 stays 0
        ({"step_size": MAX_STEP, "gamma": 0.1}, (1.0,)),
        ({"step_size": 1000, "gamma": 0.9}, (0.1, 0.03, 1e-5)),
    ],
    "multistep": [
        ({"milestones": [30, 80]}, (0.1,)),
        ({"milestones": [80, 30, 30, 0], "gamma": 0.5}, (0.1, 0.01)),  # unordered, repeated, 0
        ({"milestones": []}, (0.2,)),
        ({"milestones": [MAX_STEP - 1], "gamma": 0.1}, (1.0,)),
        ({"milestones": list(range(5, 1000, 10)), "gamma": 0.9}, (0.1, 0.002)),
    ],
    "exponential": [
        ({"gamma": 0.9}, (0.1,)),
        ({"gamma": 0.99999}, (0.1, 0.01)),
        ({"gamma": 1.0}, (0.05,)),
        ({"gamma": 1.0001}, (0.1, 0.0)),
        ({"gamma": 1e-10}, (1.0,)),
    ],
    "inverse_time": [
        ({"decay_steps": 1000.0, "decay_rate": 0.5}, (0.1,)),
        ({"decay_steps": 1000.0, "decay_rate": 0.5, "staircase": True}, (0.1, 0.01)),
        ({"decay_steps": 10.0, "decay_rate": 0.0}, (0.1,)),
        ({"decay_steps": 0.5, "decay_rate": 2.0, "staircase": True}, (0.3,)),
        ({"decay_steps": 1e-300, "decay_rate": 1.0}, (0.1,)),
    ],
    "linear": [
        ({}, (0.1,)),
        ({"start_factor": 0.01, "total_iters": 1000}, (0.1, 0.01)),
        ({"start_factor": 1.0, "end_factor": 0.0, "total_iters": 100}, (0.1,)),
        ({"start_factor": 0.5, "total_iters": 0}, (0.1,)),  # torch keeps start_factor
        ({"start_factor": 0.25, "end_factor": 0.75, "total_iters": 1}, (0.2, 0.02)),
    ],
    "cosine": [
        ({"T_max": 100}, (0.1,)),
        ({"T_max": 1, "eta_min": 0.001}, (0.1, 0.01)),
        ({"T_max": 10000, "eta_min": 1e-6}, (0.1,)),
        ({"T_max": MAX_STEP}, (1.0,)),
        ({"T_max": 50, "eta_min": 0.5}, (0.1, 0.5)),  # eta_min above a base lr: it rises
    ],
    "polynomial": [
        ({}, (0.1,)),
        ({"total_iters": 1000, "power": 2.0}, (0.1, 0.01)),
        ({"total_iters": 10**6, "power": 0.9}, (0.01,)),
        ({"total_iters": 100, "power": 0.0}, (0.1,)),
        ({"total_iters": 0}, (0.1,)),
    ],
    "cosine_restarts": [
        ({"T_0": 10}, (0.1,)),
        ({"T_0": 10, "T_mult": 2}, (0.1, 0.01)),
        ({"T_0": 1, "T_mult": 3, "eta_min": 1e-4}, (0.1,)),
        ({"T_0": 1000}, (0.05,)),
        ({"T_0": MAX_STEP, "T_mult": 2}, (1.0,)),
    ],
    "cyclic": [
        ({"base_lr": 0.001, "max_lr": 0.1}, (0.1,)),
        (
            {
                "base_lr": 0.001,
                "max_lr": 0.1,
                "step_size_up": 20,
                "step_size_down": 30,
                "mode": "triangular2",
            },
            (0.1, 0.01),
        ),
        (
            {
                "base_lr": 0.0,
                "max_lr": 1.0,
                "step_size_up": 10,
                "mode": "exp_range",
                "gamma": 0.999,
            },
            (0.1,),
        ),
        ({"base_lr": [0.001, 0.0001], "max_lr": [0.1, 0.01], "step_size_up": 5}, (0.1, 0.01)),
        ({"base_lr": 0.01, "max_lr": 0.05, "step_size_up": 7, "step_size_down": 0}, (0.1,)),
    ],
    "one_cycle": [
        ({"max_lr": 0.1, "total_steps": 100}, (0.1,)),
        ({"max_lr": 0.1, "total_steps": 100, "anneal_strategy": "linear"}, (0.1,)),
        ({"max_lr": [0.1, 0.01], "total_steps": 1000, "three_phase": True}, (0.1, 0.01)),
        ({"max_lr": 1.0, "total_steps": 50, "pct_start": 0.0}, (0.1,)),
        ({"max_lr": 1.0, "total_steps": 50, "pct_start": 1.0, "div_factor": 10.0}, (0.1,)),
        ({"max_lr": 0.5, "total_steps": 1}, (0.1,)),
    ],
    "inverse_sqrt": [
        ({"num_warmup_steps": 100}, (0.1,)),
        ({"num_warmup_steps": 0}, (0.1, 0.01)),  # timescale 10000, no warmup
        ({"num_warmup_steps": 50, "timescale": 300}, (0.1, 0.01)),
        ({"num_warmup_steps": 400, "timescale": 20}, (1.0,)),  # shift below 0
        ({"num_warmup_steps": 4000, "form": "noam", "d_model": 512}, (2.0,)),
        ({"num_warmup_steps": 1, "form": "noam", "d_model": 1}, (1.0, 0.5)),
        ({"num_warmup_steps": 4000, "form": "fairseq"}, (5e-4,)),
        ({"num_warmup_steps": 10, "form": "fairseq", "warmup_init_lr": 1e-7}, (5e-4, 1e-3)),
        ({"num_warmup_steps": MAX_STEP}, (1.0,)),
        ({"num_warmup_steps": 10000, "form": "t5"}, (1.0,)),
        ({"num_warmup_steps": 1, "form": "t5"}, (0.01, 0.001)),
    ],
    "cosine_with_min_lr": [
        ({"num_warmup_steps": 100, "num_training_steps": 1000, "min_lr_rate": 0.1}, (0.1,)),
        ({"num_warmup_steps": 0, "num_training_steps": 300, "min_lr_rate": 0.0}, (0.1, 0.01)),
        (
            {
                "num_warmup_steps": 50,
                "num_training_steps": 500,
                "min_lr_rate": 0.05,
                "num_cycles": 1.25,
                "warmup_type": "cosine",
            },
            (0.3,),
        ),
        (
            {
                "num_warmup_steps": 200,
                "num_training_steps": 2000,
                "min_lr_rate": 0.01,
                "warmup_type": "exponential",
            },
            (0.1, 0.001),
        ),
        (
            {
                "num_warmup_steps": 20,
                "num_training_steps": 20,
                "min_lr_rate": 0.5,
                "warmup_type": "1-sqrt",
            },
            (1.0,),
        ),
        ({"num_warmup_steps": 10, "num_training_steps": MAX_STEP, "min_lr_rate": 0.1}, (1.0,)),
    ],
}


def random_case(family: str, rng: random.Random) -> Case:
    n = rng.choice((1, 2, 3))
    base = tuple(10 ** rng.uniform(-4, 0) for _ in range(n))

    def lr_or_lrs(low: float, high: float) -> float | list[float]:
        if rng.random() < 0.5:
            return rng.uniform(low, high)
        return [rng.uniform(low, high) for _ in range(n)]

    params: dict[str, Any]
    if family == "constant":
        params = {"factor": rng.uniform(0.01, 1.0), "total_iters": rng.randint(0, 500)}
    elif family == "step":
        params = {"step_size": rng.randint(1, 200), "gamma": rng.uniform(0.05, 1.0)}
    elif family == "multistep":
        marks = [rng.randint(0, 2000) for _ in range(rng.randint(1, 8))]
        marks += rng.sample(marks, k=min(2, len(marks)))
        rng.shuffle(marks)
        params = {"milestones": marks, "gamma": rng.uniform(0.05, 1.0)}
    elif family == "exponential":
        params = {"gamma": rng.uniform(0.99, 1.0)}
    elif family == "inverse_time":
        params = {
            "decay_steps": rng.uniform(1.0, 500.0),
            "decay_rate": rng.uniform(0.0, 3.0),
            "staircase": rng.random() < 0.5,
        }
    elif family == "linear":
        params = {
            "start_factor": rng.uniform(0.001, 1.0),
            "end_factor": rng.uniform(0.0, 1.0),
            "total_iters": rng.randint(0, 2000),
        }
    elif family == "cosine":
        params = {"T_max": rng.randint(1, 3000), "eta_min": rng.choice((0.0, 1e-5))}
    elif family == "polynomial":
        params = {"total_iters": rng.randint(1, 3000), "power": rng.uniform(0.0, 4.0)}
    elif family == "cosine_restarts":
        params = {
            "T_0": rng.randint(1, 300),
            "T_mult": rng.choice((1, 2, 3)),
            "eta_min": rng.choice((0.0, 1e-6)),
        }
    elif family == "cyclic":
        params = {
            "base_lr": lr_or_lrs(1e-5, 1e-2),
            "max_lr": lr_or_lrs(1e-3, 1.0),
            "step_size_up": rng.randint(1, 500),
            "step_size_down": rng.choice((None, rng.randint(0, 500))),
            "mode": rng.choice(("triangular", "triangular2", "exp_range")),
            "gamma": rng.uniform(0.99, 1.0),
        }
    elif family == "one_cycle":
        while True:
            params = {
                "max_lr": lr_or_lrs(1e-3, 1.0),
                "total_steps": rng.randint(2, 3000),
                "pct_start": rng.uniform(0.0, 1.0),
                "anneal_strategy": rng.choice(("cos", "linear")),
                "div_factor": rng.uniform(1.0, 100.0),
                "final_div_factor": 10 ** rng.uniform(0.0, 5.0),
                "three_phase": rng.random() < 0.5,
            }
            if float(params["pct_start"] * params["total_steps"]) - 1 != 0.0:
                break
    elif family == "cosine_with_min_lr":
        w = rng.randint(0, 500)
        params = {
            "num_warmup_steps": w,
            "num_training_steps": w + rng.randint(1, 3000),
            "min_lr_rate": rng.choice((0.0, rng.uniform(0.0, 0.5))),
            "num_cycles": rng.choice((0.5, rng.uniform(0.0, 2.0))),
            "warmup_type": rng.choice(("linear", "linear", "cosine", "1-sqrt")),
        }
    elif family == "inverse_sqrt":
        form = rng.choice(("transformers", "fairseq", "noam", "t5"))
        params = {"num_warmup_steps": rng.randint(1, 2000), "form": form}
        if form == "transformers" and rng.random() < 0.5:
            params["timescale"] = rng.randint(1, 3000)
        if form == "fairseq" and rng.random() < 0.5:
            params["warmup_init_lr"] = rng.uniform(0.0, 1e-4)
        if form == "noam":
            params["d_model"] = rng.choice((64, 512, 1024, 4096))
    else:
        raise ValueError(family)
    return params, base


def boundaries(family: str, p: dict[str, Any]) -> list[int]:
    """The steps where the schedule turns, from resolved params."""
    if family in ("constant", "linear", "polynomial"):
        return [p["total_iters"]]
    if family == "step":
        return [p["step_size"] * i for i in (1, 2, 3, 10)]
    if family == "multistep":
        return sorted(set(p["milestones"]))[:20]
    if family == "inverse_time":
        return [math.ceil(p["decay_steps"] * i) for i in (1, 2, 3)]
    if family == "cosine":
        return [p["T_max"] // 2, p["T_max"], 2 * p["T_max"], 3 * p["T_max"]]
    if family == "cosine_restarts":
        out, start, length = [], 0, p["T_0"]
        for _ in range(5):
            start += length
            length *= p["T_mult"]
            out.append(start)
        return out
    if family == "cyclic":
        up = p["step_size_up"]
        down = up if p["step_size_down"] is None else p["step_size_down"]
        return [up, up + down, 2 * up + down, 2 * (up + down), 10 * (up + down)]
    if family == "one_cycle":
        t, pct = p["total_steps"], p["pct_start"]
        return [math.floor(pct * t) - 1, math.floor(2 * pct * t) - 2, t - 1, t]
    if family == "inverse_sqrt":
        return [p["num_warmup_steps"], p["timescale"] or 0]
    if family == "cosine_with_min_lr":
        w, t = p["num_warmup_steps"], p["num_training_steps"]
        return [w, (w + t) // 2, t, 2 * t - w]
    return []


LARGE = [10**6, 2**30, 2**31, 10**9 + 7, 2**53 + 1, 10**15, MAX_STEP - 1, MAX_STEP]


def probe_steps(family: str, params: dict[str, Any]) -> list[int]:
    steps = {0, 1, 2, 3, 5, 10, 99, 100, 101, 1000, 4095, 4096, 12345, 262143, 262144, *LARGE}
    for b in boundaries(family, params):
        steps.update((b - 1, b, b + 1))
    return sorted(s for s in steps if 0 <= s <= MAX_STEP)


def observation_steps(family: str, params: dict[str, Any], rng: random.Random) -> list[int]:
    near = [s for s in probe_steps(family, params) if s <= 5000]
    steps = set(rng.sample(near, k=min(len(near), 14)))
    steps.update(rng.randint(1, 3000) for _ in range(6))
    steps.update((10**6, 2**40))
    return sorted(steps)


def values(rng: random.Random, n: int) -> list[float]:
    out = []
    level = 2.0
    for _ in range(n):
        level *= rng.uniform(0.9, 1.02)
        out.append(rng.choice((level, level, level, NAN, INF, -1.0)))
    return out


def line_for(family: str, params: dict[str, Any], base: tuple[float, ...], seed: int) -> Any:
    from lrpilot.policies import get_policy

    rng = random.Random(f"{family}-observations-{seed}")
    doc = get_policy(family, 1).resolve(params, base).model_dump()
    steps = observation_steps(family, doc, rng)
    vals = values(rng, len(steps))
    # a schedule's lrs are a function of the step alone: from the initial state, as a fresh run
    return golden_lines.decide(
        f"{family}@1",
        params,
        base,
        zip(steps, vals, strict=True),
        "val_loss",
        lrs_at=probe_steps(family, doc),
        lrs_at_from_start=True,
    )


def lines(family: str) -> list[dict[str, Any]]:
    cases = list(HAND_WRITTEN[family])
    rng = random.Random(f"{family}-params")
    cases += [random_case(family, rng) for _ in range(RANDOM_CASES)]
    return [line_for(family, p, b, n) for n, (p, b) in enumerate(cases)]


# -- the references ---------------------------------------------------------------------------


def exact_lrs(family: str, p: dict[str, Any], base: list[float], k: int) -> list[Any]:
    """The family's formula in 200-bit arithmetic (torch's formulas; OneCycleLR's phase ends as
    torch computes them, in doubles; past total_steps, its last lrs)."""
    import mpmath

    mpmath.mp.prec = 200
    mpf, pi, cos = mpmath.mpf, mpmath.pi, mpmath.cos
    n = len(base)

    def per_group(v: Any) -> list[Any]:
        return [mpf(x) for x in v] if isinstance(v, list) else [mpf(v)] * n

    if family == "constant":
        t = p["total_iters"]
        f = mpf(p["factor"]) if t == 0 or k < t else mpf(1)
        return [mpf(b) * f for b in base]
    if family == "step":
        return [mpf(b) * mpf(p["gamma"]) ** (k // p["step_size"]) for b in base]
    if family == "multistep":
        count = sum(1 for m in p["milestones"] if m <= k)
        return [mpf(b) * mpf(p["gamma"]) ** count for b in base]
    if family == "exponential":
        return [mpf(b) * mpf(p["gamma"]) ** k for b in base]
    if family == "inverse_time":
        q = mpf(k) / mpf(p["decay_steps"])
        if p["staircase"]:
            q = mpmath.floor(q)
        return [mpf(b) / (1 + mpf(p["decay_rate"]) * q) for b in base]
    if family == "linear":
        t, s, e = p["total_iters"], mpf(p["start_factor"]), mpf(p["end_factor"])
        f = s if t == 0 else s + (e - s) * min(k, t) / t
        return [mpf(b) * f for b in base]
    if family == "cosine":
        t, eta = p["T_max"], mpf(p["eta_min"])
        a = k % (2 * t)
        return [eta + (mpf(b) - eta) * (1 + cos(pi * a / t)) / 2 for b in base]
    if family == "polynomial":
        t, power = p["total_iters"], mpf(p["power"])
        if t == 0:
            return [mpf(b) for b in base]
        x = mpf(t - min(k, t)) / t
        return [mpf(b) * (x**power if x else (mpf(1) if power == 0 else mpf(0))) for b in base]
    if family == "cosine_restarts":
        t0, mult, eta = p["T_0"], p["T_mult"], mpf(p["eta_min"])
        if mult == 1:
            cur, length = k % t0, t0
        else:
            cur, length = k, t0
            while cur >= length:
                cur -= length
                length *= mult
        return [eta + (mpf(b) - eta) * (1 + cos(pi * cur / length)) / 2 for b in base]
    if family == "cyclic":
        up = p["step_size_up"]
        down = up if p["step_size_down"] is None else p["step_size_down"]
        total = up + down
        cycle = 1 + k // total
        x = mpf(k % total) / total
        ratio = mpf(up) / total
        f = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if p["mode"] == "triangular":
            scale = mpf(1)
        elif p["mode"] == "triangular2":
            scale = 1 / mpf(2) ** (cycle - 1)
        else:
            scale = mpf(p["gamma"]) ** k
        lows, highs = per_group(p["base_lr"]), per_group(p["max_lr"])
        return [b + (m - b) * f * scale for b, m in zip(lows, highs, strict=True)]
    if family == "one_cycle":
        t, pct = p["total_steps"], p["pct_start"]
        k = min(k, t - 1)
        tops = per_group(p["max_lr"])
        initial = [m / mpf(p["div_factor"]) for m in tops]
        lows = [i / mpf(p["final_div_factor"]) for i in initial]
        if p["three_phase"]:
            phases = [
                (float(pct * t) - 1, initial, tops),
                (float(2 * pct * t) - 2, tops, initial),
                (t - 1, initial, lows),
            ]
        else:
            phases = [(float(pct * t) - 1, initial, tops), (t - 1, tops, lows)]
        start = 0.0
        for i, (end, firsts, lasts) in enumerate(phases):
            if k <= end or i == len(phases) - 1:
                frac = (k - mpf(start)) / (mpf(end) - mpf(start))
                if p["anneal_strategy"] == "cos":
                    return [
                        b + (a - b) / 2 * (cos(pi * frac) + 1)
                        for a, b in zip(firsts, lasts, strict=True)
                    ]
                return [(b - a) * frac + a for a, b in zip(firsts, lasts, strict=True)]
            start = end
    if family == "cosine_with_min_lr":
        w, t, m = p["num_warmup_steps"], p["num_training_steps"], mpf(p["min_lr_rate"])
        if k < w:
            kind = p["warmup_type"]
            f = golden_lines.exact_ramp(kind, mpf(k) / w, m if kind == "exponential" else mpf(0))
        else:
            x = mpf(k - w) / max(1, t - w)
            f = (1 + cos(2 * pi * mpf(p["num_cycles"]) * x)) / 2 * (1 - m) + m
        return [mpf(b) * f for b in base]
    if family == "inverse_sqrt":
        w = p["num_warmup_steps"]
        if p["form"] == "noam":
            j = mpf(max(k, 1))
            f = mpf(p["d_model"]) ** mpf(-0.5) * min(j ** mpf(-0.5), j * mpf(w) ** mpf(-1.5))
            return [mpf(b) * f for b in base]
        if p["form"] == "t5":
            return [mpf(b) / mpmath.sqrt(max(k, w)) for b in base]
        if p["form"] == "fairseq":
            init = mpf(p["warmup_init_lr"] or 0.0)
            if k < w:
                return [init + k * (mpf(b) - init) / w for b in base]
            return [mpf(b) * mpmath.sqrt(mpf(w) / k) for b in base]
        scale = p["timescale"] or (w or 10_000)
        f = mpf(k) / w if k < w else 1 / mpmath.sqrt(mpf(k + scale - w) / scale)
        return [mpf(b) * f for b in base]
    raise ValueError(family)


def torch_lrs(family: str, line: dict[str, Any], steps: list[int]) -> dict[int, list[float]]:
    """torch's group lrs at ``steps`` (ascending, each within torch's range)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.policies.test_schedules import TORCH_CLASS  # the one family -> torch class map

    base = line["base_lrs"]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(groups, lr=base[0], momentum=0.9)
    kwargs = dict(line["params"])
    if family in ("cyclic", "one_cycle"):
        kwargs["cycle_momentum"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = TORCH_CLASS[family](opt, **kwargs)
    return stepped(sched, opt, steps)


def stepped(sched: Any, opt: Any, steps: list[int], key: str = "lr") -> dict[int, list[float]]:
    """The groups' ``key`` (their lrs, or their momentum) of ``opt`` at ``steps`` (ascending),
    ``sched`` stepped there from step 0."""
    out: dict[int, list[float]] = {}
    wanted = set(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepped without an optimizer step: lrs only
        for k in range(max(steps) + 1):
            if k:
                sched.step()
            if k in wanted:
                out[k] = [float(g[key]) for g in opt.param_groups]
    return out


def cosine_with_min_lr_reference(line: dict[str, Any], steps: list[int]) -> dict[int, list[float]]:
    """transformers' get_cosine_with_min_lr_schedule_with_warmup, stepped: at every step with
    its linear warmup, after the warmup with another shape (transformers has only linear)."""
    import torch
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    p, base = line["params"], line["base_lrs"]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(groups, lr=base[0])
    w = p["num_warmup_steps"]
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, w, p["num_training_steps"], p["num_cycles"], min_lr_rate=p["min_lr_rate"]
    )
    out = stepped(sched, opt, steps)
    return {k: v for k, v in out.items() if p["warmup_type"] == "linear" or k >= w}


def inverse_sqrt_reference(line: dict[str, Any], steps: list[int]) -> dict[int, list[float]]:
    """The libraries' own lrs: transformers' get_inverse_sqrt_schedule (its LambdaLR stepped),
    The Annotated Transformer's rate through a LambdaLR (noam), fairseq's
    InverseSquareRootSchedule.step_update and T5's rsqrt, transcribed (fairseq and Mesh
    TensorFlow are not dependencies)."""
    import torch
    from transformers.optimization import get_inverse_sqrt_schedule

    p, base = line["params"], line["base_lrs"]
    w = p["num_warmup_steps"]
    if p["form"] == "t5":  # T5's rsqrt (Mesh TensorFlow, not a dependency), transcribed
        return {k: [lr * (1.0 / math.sqrt(max(k, w))) for lr in base] for k in steps}
    if p["form"] == "fairseq":
        init = p["warmup_init_lr"] or 0.0
        out: dict[int, list[float]] = {}
        for k in steps:
            lrs = []
            for lr in base:
                lr_step = (lr - init) / w
                decay_factor = lr * w**0.5
                lrs.append(init + k * lr_step if k < w else decay_factor * k**-0.5)
            out[k] = lrs
        return out
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base]
    opt = torch.optim.SGD(groups, lr=base[0])
    if p["form"] == "noam":
        d = p["d_model"]

        def rate(step: int) -> float:  # The Annotated Transformer's, factor 1: the base lrs
            if step == 0:
                step = 1
            return d ** (-0.5) * min(step ** (-0.5), step * w ** (-1.5))

        sched: Any = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    else:
        sched = get_inverse_sqrt_schedule(opt, w, p["timescale"])
    return stepped(sched, opt, steps)


def keras_inverse_time(line: dict[str, Any], steps: list[int]) -> dict[int, list[float]]:
    import torch

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    p = line["params"]
    out: dict[int, list[float]] = {k: [] for k in steps}
    for b in line["base_lrs"]:
        schedule = keras.optimizers.schedules.InverseTimeDecay(
            torch.tensor(b, dtype=torch.float64), p["decay_steps"], p["decay_rate"], p["staircase"]
        )
        for k in steps:
            out[k].append(float(schedule(k)))
    return out


def verify(family: str, line: dict[str, Any], torch_steps: int) -> list[str]:
    """What disagrees with a reference (empty when everything agrees)."""
    from lrpilot.canonical import parse_float

    problems = []
    base = [parse_float(x) for x in line["base_lrs"]]
    ours: dict[int, list[float]] = {k: [parse_float(x) for x in lrs] for k, lrs in line["lrs_at"]}
    for (k, _), d in zip(line["observations"], line["decisions"], strict=True):
        ours.setdefault(k, [parse_float(x) for x in d["lrs"]])
        if [parse_float(x) for x in d["lrs"]] != ours[k]:
            problems.append(f"decision at step {k} is not lrs_at({k})")
    p = line["params"]
    largest = max(
        [abs(x) for x in base]
        + [abs(x) for key in ("max_lr", "base_lr") if key in p for x in _as_list(p[key])]
    )
    floor = 1e-15 * largest

    def check(what: str, k: int, got: list[float], want: list[Any], rel: float) -> None:
        for g, (a, b) in enumerate(zip(got, want, strict=True)):
            b_float = float(b)
            if math.isinf(b_float) or math.isinf(a):
                if a != b_float:
                    problems.append(f"{what} step {k} group {g}: {a!r} != {b_float!r}")
                continue
            if abs(a - b) > rel * abs(b) + floor:
                problems.append(f"{what} step {k} group {g}: ours {a!r}, {what} {b_float!r}")

    for k, got in ours.items():
        check("exact", k, got, exact_lrs(family, p, base, k), 1e-12)
    limit = torch_steps
    if family == "one_cycle":
        limit = min(limit, p["total_steps"] - 1)  # torch raises past total_steps
    near = sorted(k for k in ours if k <= limit)
    if near:
        if family == "inverse_time":
            reference = keras_inverse_time(line, near)
        elif family == "inverse_sqrt":
            reference = inverse_sqrt_reference(line, near)
        elif family == "cosine_with_min_lr":
            reference = cosine_with_min_lr_reference(line, near)
        else:
            reference = torch_lrs(family, line, near)
        for k in (k for k in near if k in reference):
            what = {"inverse_time": "keras"}.get(family, "torch")
            what = "library" if family in ("inverse_sqrt", "cosine_with_min_lr") else what
            check(what, k, ours[k], reference[k], 1e-10)
    return problems


def _as_list(v: Any) -> list[float]:
    return v if isinstance(v, list) else [v]


FAMILIES = (
    "constant",
    "step",
    "multistep",
    "exponential",
    "inverse_time",
    "linear",
    "cosine",
    "polynomial",
    "cosine_restarts",
    "cyclic",
    "one_cycle",
    "inverse_sqrt",
    "cosine_with_min_lr",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--family", action="append", choices=FAMILIES, help="default: all")
    ap.add_argument("--force", action="store_true", help="overwrite (never for a released version)")
    ap.add_argument("--no-verify", action="store_true", help="skip the reference cross-checks")
    ap.add_argument("--torch-steps", type=int, default=5000, help="steps torch is stepped to")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "service"))

    status = 0
    for family in args.family or FAMILIES:
        out: Path = args.out_dir / f"{family}@1.jsonl"
        if golden_lines.refuses(out, args.force):
            status = 2
            continue
        made = lines(family)
        if not args.no_verify:
            problems = [
                f"line {n}: {problem}"
                for n, line in enumerate(made)
                for problem in verify(family, line, args.torch_steps)
            ]
            if problems:
                print(f"{family}: {len(problems)} disagreements, not written", file=sys.stderr)
                for problem in problems[:20]:
                    print(f"  {problem}", file=sys.stderr)
                status = 1
                continue
        golden_lines.write(out, made)
        probes = sum(len(line["lrs_at"]) for line in made)
        print(f"wrote {len(made)} lines ({probes} lrs_at steps) to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
