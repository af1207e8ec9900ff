"""Primitives that released policy versions share: param types, float32 rounding, per-group
values and the param checks several families make.

These are frozen. A released version's decisions, reasons, states and error messages are
built from them, and released versions never change (tests/golden/ replays them byte for
byte): changing anything here changes every version that uses it. A new behaviour is a new
primitive beside the old one, used by a new version. No version owns this module, and no
version imports another version's module: what two versions share stands here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field, StrictFloat, StrictInt
from pydantic_core import PydanticCustomError

from lrpilot.policies.base import Loc

LrValues = float | list[float]


def _finite_lrs(error_type: str, positive: bool) -> Callable[[LrValues], LrValues]:
    """A check of one lr or one per param group: finite, and > 0 (positive) or >= 0."""
    message = (
        f"must be a finite number {'>' if positive else '>='} 0, or a non-empty list of them "
        "(one per param group)"
    )

    def check(v: LrValues) -> LrValues:
        values = v if isinstance(v, list) else [v]
        if not values or not all(
            math.isfinite(x) and (x > 0.0 if positive else x >= 0.0) for x in values
        ):
            raise PydanticCustomError(error_type, message)
        return v

    return check


# Strict floats: true and "0.2" are refused, JSON ints are taken (as floats).
MinLr = Annotated[StrictFloat | list[StrictFloat], AfterValidator(_finite_lrs("min_lr", False))]
Lr = Annotated[StrictFloat | list[StrictFloat], AfterValidator(_finite_lrs("lr", True))]
Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


_F32 = struct.Struct("<f")
_pack_f32, _unpack_f32 = _F32.pack, _F32.unpack


def to_f32(x: float) -> float:
    """The nearest float32 (ties to even), as a float32 tensor or variable rounds a double."""
    try:
        f: float = _unpack_f32(_pack_f32(x))[0]  # struct's "f" unpacks to a Python float
    except OverflowError:  # rounds beyond float32's largest finite value
        return math.copysign(math.inf, x)
    return f


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def per_group(v: LrValues, n: int) -> tuple[float, ...]:
    """One value for each of ``n`` param groups: the list as given, or the one value n times."""
    return tuple(v) if isinstance(v, list) else (v,) * n


def group_count_errors(loc: Loc, v: LrValues, n: int) -> list[tuple[Loc, str]]:
    """A list of per-group values must give one value for each of the ``n`` param groups."""
    if isinstance(v, list) and len(v) != n:
        name = ".".join(map(str, loc))
        return [
            (
                loc,
                f"{name} has {len(v)} values but there are {n} param groups (base_lrs): "
                "give one value, or one per param group",
            )
        ]
    return []


def torch_threshold_errors(
    mode: str, threshold_mode: str, threshold: float
) -> list[tuple[Loc, str]]:
    """torch's rel threshold in mode min compares with best * (1 - threshold): below 1 only."""
    if threshold_mode == "rel" and mode == "min" and threshold >= 1.0:
        return [
            (
                ("threshold",),
                f"threshold must be < 1 with threshold_mode 'rel' and mode 'min' "
                f"(best * (1 - threshold) must stay positive), got {threshold!r}",
            )
        ]
    return []
