"""Seeded random metric streams for the plateau@1 differential, property and golden tests.

``make_stream(seed, flavor)`` is a pure function of its arguments (``random.Random(seed)``, no
numpy, no clock), so a failing case is reproduced from its seed alone. A stream deliberately
contains what breaks naive re-implementations of torch's and keras' ReduceLROnPlateau:

* long plateaus (the same value repeated) and exact ties with the best value;
* values exactly on the improvement boundary (``best * (1 - threshold)``, ``best - threshold``,
  their ``max`` mode mirrors, ``best -/+ min_delta``), one ulp either side of it
  (``math.nextafter``), and the "mathematically equal" ``best - best * threshold`` that rounds
  differently from torch's ``best * (1 - threshold)``;
* for keras, values that differ from ``best`` in double but not in float32, and values on the
  float32 rounding midpoint below/above ``best`` (keras compares float32 tensors);
* negative values, zeros of both signs, subnormals;
* NaN, +inf and -inf (also as the very first evaluation);
* very large magnitudes (float32's max and beyond, ~1e38, 1e300) so float32 overflow is hit.

The generator follows the reference's notion of ``best`` only to aim its boundary values; it is
guidance, never the oracle: the tests compare against the real torch and keras classes.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass
from typing import Any

F32_MAX = 3.4028234663852886e38

FACTORS = (0.5, 0.1, 0.3333, 1 / 3, 0.2, 0.25, 0.9, 0.7, 0.95, 0.01)
THRESHOLDS = (0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 1e-8, 0.3)
MIN_DELTAS = (0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 1e-8, 0.5)
EPSES = (0.0, 1e-8, 1e-3, 1e-6, 0.01, 1e-12)
BASE_LRS = (0.1, 1e-3, 3e-4, 0.5, 1.0, 0.01, 1e-5, 0.3, 2e-3)
MIN_LRS = (0.0, 0, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 1e-8)
HUGE = (1e38, -1e38, F32_MAX, -F32_MAX, 3.5e38, -3.5e38, 1e300, -1e300, 1.7976931348623157e308)
SCALES = (1.0, 1e-3, 100.0, 1e6, -5.0, 0.5, -1e-3, 1e37)


@dataclass(frozen=True)
class Stream:
    seed: int
    flavor: str
    params: dict[str, Any]  # as a client would send them: some keys left to their defaults
    base_lrs: tuple[float, ...]
    values: tuple[float, ...]
    steps: tuple[int, ...]

    def reference_kwargs(self) -> dict[str, Any]:
        """The params as keyword arguments of the reference class (flavor dropped)."""
        return {k: v for k, v in self.params.items() if k != "flavor"}

    def describe(self) -> str:
        return (
            f"seed={self.seed} flavor={self.flavor} params={self.params!r} "
            f"base_lrs={self.base_lrs!r} values={list(self.values)!r}"
        )


def to_f32(x: float) -> float:
    try:
        return float(struct.unpack("<f", struct.pack("<f", x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def f32_neighbours(x: float) -> tuple[float, float]:
    """The float32 values just below and just above float32(x) (finite x)."""
    f = to_f32(x)
    if not math.isfinite(f):
        return f, f
    (bits,) = struct.unpack("<i", struct.pack("<f", f))
    if f == 0.0:
        tiny = struct.unpack("<f", struct.pack("<i", 1))[0]
        return -tiny, tiny

    def from_bits(b: int) -> float:
        try:
            return float(struct.unpack("<f", struct.pack("<i", b))[0])
        except struct.error:
            return math.copysign(math.inf, f)

    up, down = (bits + 1, bits - 1) if f > 0 else (bits - 1, bits + 1)
    return from_bits(down), from_bits(up)


def random_params(rng: random.Random, flavor: str, base_lrs: tuple[float, ...]) -> dict[str, Any]:
    n_groups = len(base_lrs)
    p: dict[str, Any] = {}
    if flavor == "keras" or rng.random() < 0.3:
        p["flavor"] = flavor
    omit = rng.random() < 0.15  # sometimes leave many params to their defaults

    def put(key: str, value: Any) -> None:
        if not (omit and rng.random() < 0.6):
            p[key] = value

    p["mode"] = rng.choice(("min", "max")) if rng.random() < 0.9 else "min"
    if rng.random() < 0.05:
        del p["mode"]
    if rng.random() < 0.2:
        put("factor", rng.uniform(0.01, 0.99))
    else:
        put("factor", rng.choice(FACTORS))
    put("patience", rng.randint(0, 5))
    put("cooldown", rng.choice((0, 0, 1, 2, 3)))
    if flavor == "torch":
        put("threshold_mode", rng.choice(("rel", "abs")))
        th = rng.uniform(0.0, 0.1) if rng.random() < 0.25 else rng.choice(THRESHOLDS)
        put("threshold", th)
        put("eps", rng.choice(EPSES))
        if rng.random() < 0.35:
            put("min_lr", [rng.choice(MIN_LRS) for _ in range(n_groups)])
        else:
            put("min_lr", rng.choice(MIN_LRS))
        if rng.random() < 0.1:
            # eps exactly equal to the first reduction of group 0: torch's `>` test matters
            lr, factor, floor = base_lrs[0], p.get("factor", 0.1), p.get("min_lr", 0.0)
            floor = floor[0] if isinstance(floor, list) else floor
            p["eps"] = max(lr - max(lr * factor, floor), 0.0)
    else:
        md = rng.uniform(0.0, 0.1) if rng.random() < 0.25 else rng.choice(MIN_DELTAS)
        put("min_delta", md)
        put("min_lr", rng.choice(MIN_LRS))
    return p


class _Guide:
    """Tracks (approximately) the reference's best value so boundary values can be aimed at it."""

    def __init__(self, flavor: str, params: dict[str, Any]) -> None:
        self.flavor = flavor
        self.mode = params.get("mode", "min")
        if flavor == "torch":
            self.delta = params.get("threshold", 1e-4)
            self.rel = params.get("threshold_mode", "rel") == "rel"
            self.best: float | None = math.inf if self.mode == "min" else -math.inf
        else:
            self.delta = params.get("min_delta", 1e-4)
            self.rel = False
            self.best = None

    def observe(self, a: float) -> None:
        b = self.best
        if b is None:
            self.best = a
            return
        if self.flavor == "torch":
            if self.mode == "min":
                better = a < (b * (1.0 - self.delta) if self.rel else b - self.delta)
            else:
                better = a > (b * (self.delta + 1.0) if self.rel else b + self.delta)
        elif self.mode == "min":
            better = to_f32(a + self.delta) < to_f32(b)
        else:
            better = to_f32(a - self.delta) > to_f32(b)
        if better:
            self.best = a

    def anchor(self, rng: random.Random, scale: float) -> float:
        b = self.best
        if b is None or not math.isfinite(b):
            return scale * rng.uniform(0.5, 2.0)
        return b

    def boundaries(self, b: float) -> list[float]:
        """Values exactly on / around the improvement boundary relative to best ``b``."""
        d = self.delta
        out: list[float] = []
        if self.flavor == "torch":
            if self.mode == "min":
                edges = [b * (1.0 - d), b - b * d] if self.rel else [b - d]
            else:
                edges = [b * (d + 1.0), b + b * d] if self.rel else [b + d]
        else:
            lo, hi = f32_neighbours(b)
            f = to_f32(b)
            if self.mode == "min":
                edges = [b - d, f - d, lo - d, (lo + f) / 2 - d]
            else:
                edges = [b + d, f + d, hi + d, (hi + f) / 2 + d]
            # equal in float32, different in double
            edges += [math.nextafter(b, -math.inf), math.nextafter(b, math.inf)]
        for e in edges:
            if math.isfinite(e):
                out += [e, math.nextafter(e, -math.inf), math.nextafter(e, math.inf)]
        return out or [b]


SPECIAL = (math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, -5e-324, 1e-40, -1e-40, 1e-45)


def random_values(rng: random.Random, guide: _Guide, n: int) -> list[float]:
    scale = rng.choice(SCALES)
    values: list[float] = []
    if rng.random() < 0.1:
        values.append(rng.choice((math.nan, math.inf, -math.inf)))
        guide.observe(values[-1])
    plateau_left = 0
    while len(values) < n:
        last = values[-1] if values else scale
        if plateau_left > 0:
            plateau_left -= 1
            v = last
        else:
            kind = rng.choices(
                (
                    "plateau",
                    "tie",
                    "boundary",
                    "improve",
                    "worse",
                    "noise",
                    "special",
                    "huge",
                    "negative",
                ),
                weights=(10, 8, 25, 12, 10, 12, 6, 4, 4),
            )[0]
            b = guide.anchor(rng, scale)
            better = -1.0 if guide.mode == "min" else 1.0
            if kind == "plateau":
                plateau_left = rng.randint(2, 15)
                v = last
            elif kind == "tie":
                v = b
            elif kind == "boundary":
                v = rng.choice(guide.boundaries(b))
            elif kind == "improve":
                v = b + better * abs(b if b else scale) * rng.choice((0.5, 0.1, 0.01, 1e-3, 1e-5))
            elif kind == "worse":
                v = b - better * abs(b if b else scale) * rng.choice((0.5, 0.1, 0.01, 1e-4))
            elif kind == "noise":
                v = b + abs(scale) * rng.gauss(0.0, 0.05)
            elif kind == "special":
                v = rng.choice(SPECIAL)
            elif kind == "huge":
                v = rng.choice(HUGE)
            else:
                v = -abs(scale) * rng.uniform(0.0, 10.0)
        values.append(v)
        guide.observe(v)
    return values


def make_stream(seed: int, flavor: str = "torch", n: int | None = None) -> Stream:
    """The stream for ``seed``: params, base_lrs, 20..120 metric values and their steps."""
    rng = random.Random(f"plateau-{flavor}-{seed}")
    n_groups = 1 if flavor == "keras" else rng.choice((1, 1, 2, 3, 4))
    base_lrs = tuple(rng.choice(BASE_LRS) for _ in range(n_groups))
    params = random_params(rng, flavor, base_lrs)
    length = n if n is not None else rng.randint(20, 120)
    values = random_values(rng, _Guide(flavor, params), length)
    stride = rng.choice((1, 10, 100, 1000))
    start = rng.choice((0, 1, stride))
    steps = tuple(start + i * stride for i in range(length))
    return Stream(seed, flavor, params, base_lrs, tuple(values), steps)
