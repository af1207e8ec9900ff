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
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictFloat, StrictInt
from pydantic_core import PydanticCustomError

from lrpilot.policies.base import Frozen, Loc
from lrpilot.policies.text import fmt, fmt_change, fmt_lrs, plural

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
# A list has one per param group: longer than the most groups a run has, it is refused before
# its values are checked (it could only fail the count check after them).
_PerGroup = Annotated[list[StrictFloat], Field(max_length=1024)]  # spec.MAX_PARAM_GROUPS
MinLr = Annotated[StrictFloat | _PerGroup, AfterValidator(_finite_lrs("min_lr", False))]
Lr = Annotated[StrictFloat | _PerGroup, AfterValidator(_finite_lrs("lr", True))]
Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class TorchPlateauArgs(Frozen):
    """torch.optim.lr_scheduler.ReduceLROnPlateau's arguments, names, defaults and order: the
    params of plateau@1 flavor torch, and the first params of plateau@2."""

    mode: Literal["min", "max"] = "min"
    factor: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Count = 10
    threshold: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: Count = 0
    min_lr: MinLr = 0.0
    eps: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 1e-8

    def torch_errors(self, groups: int) -> list[tuple[Loc, str]]:
        """The rules across these args, and against the number of param groups."""
        errors: list[tuple[Loc, str]] = []
        # torch's rel threshold in mode min compares with best * (1 - threshold)
        if self.threshold_mode == "rel" and self.mode == "min" and self.threshold >= 1.0:
            errors.append(
                (
                    ("threshold",),
                    f"threshold must be < 1 with threshold_mode 'rel' and mode 'min' "
                    f"(best * (1 - threshold) must stay positive), got {self.threshold!r}",
                )
            )
        return errors + group_count_errors(("min_lr",), self.min_lr, groups)

    # What torch's rule says of an evaluation after the comparison, in the words of every
    # version that runs the rule.

    def patience_text(
        self, improved: bool, cooldown: int, bad: int, lrs: tuple[float, ...], response: str
    ) -> str:
        """The cooldown left, the count of bad evaluations against patience and, on a plateau
        (``bad > patience``), ``response``: what the policy did; else the lrs held.
        ``cooldown`` is the counter before the evaluation, ``bad`` the count as compared."""
        text = ""
        if cooldown > 0:
            text += f", in cooldown ({plural(cooldown - 1, 'evaluation')} left)"
        if bad > self.patience:
            return text + f" for {plural(bad, 'evaluation')} > patience {self.patience}{response}"
        if not improved and cooldown == 0:
            text += f" for {plural(bad, 'evaluation')} (patience {self.patience})"
        return text + f": {fmt_lrs(lrs)} held"

    def reduction_text(
        self, reduced: bool, before: tuple[float, ...], lrs: tuple[float, ...]
    ) -> str:
        """A reduction: the lrs before and after, and the cooldown that follows; or, when no lr
        moved, that none would change by more than eps."""
        if not reduced:
            return f", but no lr would change by more than eps {fmt(self.eps)}: {fmt_lrs(lrs)} held"
        if self.cooldown:
            return f": {fmt_change(before, lrs)}, then cooldown {self.cooldown}"
        return f": {fmt_change(before, lrs)}"


_F32 = struct.Struct("<f")
_pack_f32, _unpack_f32 = _F32.pack, _F32.unpack


def to_f32(x: float) -> float:
    """The nearest float32 (ties to even), as a float32 tensor or variable rounds a double."""
    try:
        f: float = _unpack_f32(_pack_f32(x))[0]  # struct's "f" unpacks to a Python float
    except OverflowError:  # rounds beyond float32's largest finite value
        return math.copysign(math.inf, x)
    return f


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
