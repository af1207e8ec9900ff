"""Write tests/golden/plateau@1.jsonl: frozen decision logs for the released policy plateau@1.

One canonical-JSON line per stream:
``{"policy", "params" (resolved), "base_lrs", "metric", "observations": [[step, value], ...],
"decisions": [{"lrs", "action", "reason", "state"}, ...]}``; non-finite floats are written as
"NaN" / "Infinity" / "-Infinity".

A released version's file must never change, so this script refuses to overwrite an existing
file unless --force (use it only for a version that has not been released). Before writing, every
stream is replayed through the reference implementation (torch's ReduceLROnPlateau for flavor
torch, keras' for flavor keras): a file is only written if the policy agrees with it exactly.

    python scripts/make_golden.py [--out tests/golden/plateau@1.jsonl] [--force] [--no-verify]
"""

from __future__ import annotations

import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import golden_lines

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "plateau@1.jsonl"
NAN, INF = math.nan, math.inf

# Random streams (tests/streams.py) and hand-written ones that pin NaN / inf / float32 edges.
TORCH_SEEDS = range(1000, 1016)
KERAS_SEEDS = range(1000, 1012)
HAND_WRITTEN: list[tuple[dict[str, Any], tuple[float, ...], list[float]]] = [
    # torch: NaN never improves, counts as bad
    ({"patience": 1, "factor": 0.5}, (0.1,), [1.0, NAN, NAN, 0.5, NAN, NAN, NAN, 0.25]),
    # torch: NaN first, best stays +inf, then a number improves
    ({"patience": 2, "cooldown": 1}, (0.1, 1e-3), [NAN, NAN, 3.0, NAN, NAN, NAN, NAN, 2.0]),
    # torch: +inf never improves on the initial best in min mode; -inf becomes best and sticks
    ({"patience": 0, "factor": 0.5, "eps": 0.0}, (0.5,), [INF, INF, -INF, -INF, -1e308, 0.0]),
    # torch max mode: +inf sticks, best * (1 + t) overflows
    (
        {"mode": "max", "patience": 0, "threshold": 0.1, "min_lr": [0.01, 0.0]},
        (1.0, 0.3),
        [1.7e308, 1.79e308, INF, INF, NAN, -INF],
    ),
    # torch: exact rel boundary, one ulp below, negative best quirk, eps blocks tiny groups
    (
        {"patience": 0, "threshold": 0.1, "factor": 0.5, "eps": 1e-3},
        (0.1, 1e-3, 0.5),
        [1.0, 0.9, math.nextafter(0.9, -INF), -1.0, -0.95, -0.5, -0.5],
    ),
    # torch abs mode with cooldown and per-group floors, all defaults otherwise
    (
        {
            "threshold_mode": "abs",
            "threshold": 0.01,
            "cooldown": 2,
            "patience": 1,
            "min_lr": [1e-4, 0.05, 0.0, 1e-6],
        },
        (0.1, 0.1, 3e-4, 1e-5),
        [1.0, 0.995, 0.99, 0.99, 0.98, 0.98, 0.98, 0.98, 0.98, 0.98, 0.98, 0.98, 0.98, 0.98],
    ),
    # torch defaults (patience 10): a long plateau
    ({}, (0.1,), [0.5] * 40),
    # keras: NaN as the first evaluation becomes best; nothing improves on it
    ({"flavor": "keras", "patience": 1, "factor": 0.5}, (0.5,), [NAN, 1.0, 0.0, -INF, NAN]),
    # keras: NaN later never improves; -inf sticks; beyond float32 compares as infinity
    (
        {"flavor": "keras", "patience": 2, "cooldown": 1, "min_delta": 0.0},
        (1e-3,),
        [1.0, NAN, NAN, NAN, -3.5e38, -1e300, -INF, -INF, -INF, INF],
    ),
    # keras max mode: float32 ties that differ in double, 1e38 and 1e300
    (
        {"flavor": "keras", "mode": "max", "patience": 0, "min_delta": 0.0, "min_lr": 1e-4},
        (3e-4,),
        [0.1, math.nextafter(0.1, INF), 1e38, 3.4028234663852886e38, 1e300, INF, NAN],
    ),
    # keras: stops at float32(min_lr), wait keeps growing
    (
        {"flavor": "keras", "patience": 0, "factor": 0.1, "min_lr": 1e-3},
        (3e-3,),
        [1.0, 1.0, 1.0, 1.0, 0.5, 0.5],
    ),
    # keras defaults (patience 10): a long plateau
    ({"flavor": "keras"}, (0.1,), [0.5] * 40),
]


def streams() -> list[golden_lines.Stream]:
    sys.path.insert(0, str(ROOT))
    from tests.streams import make_stream

    out = []
    for seed in TORCH_SEEDS:
        s = make_stream(seed, "torch", n=20 + seed * 7 % 41)
        out.append((s.params, s.base_lrs, list(s.steps), list(s.values)))
    for seed in KERAS_SEEDS:
        s = make_stream(seed, "keras", n=20 + seed * 7 % 41)
        out.append((s.params, s.base_lrs, list(s.steps), list(s.values)))
    for params, base_lrs, values in HAND_WRITTEN:
        out.append((params, base_lrs, [100 * (i + 1) for i in range(len(values))], values))
    return out


def reference_lrs(line: dict[str, Any]) -> list[list[float]]:
    """The lrs the reference implementation gives after every observation."""
    params = {k: v for k, v in line["params"].items() if k != "flavor"}
    values = [v for _, v in line["observations"]]
    if line["params"]["flavor"] == "torch":
        import torch

        groups = [
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in line["base_lrs"]
        ]
        opt = torch.optim.SGD(groups, lr=line["base_lrs"][0])
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **params)
        out = []
        for v in values:
            sched.step(v)
            out.append([g["lr"] for g in opt.param_groups])
        return out
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=line["base_lrs"][0]), loss="mse")
    cb = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", **params)
    cb.set_model(model)
    cb.on_train_begin()
    out = []
    for i, v in enumerate(values):
        cb.on_epoch_end(i, {"val_loss": v})
        out.append([float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))])
    return out


def main(argv: list[str] | None = None) -> int:
    check = golden_lines.lrs_check(reference_lrs)
    skip = "skip the torch/keras cross-check"
    lines = partial(golden_lines.decided, "plateau@1", "val_loss", streams)
    return golden_lines.generate(argv, __doc__, DEFAULT_OUT, lines, check, no_verify_help=skip)


if __name__ == "__main__":
    sys.exit(main())
