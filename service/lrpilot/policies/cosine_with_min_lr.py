"""``cosine_with_min_lr@1``: a warmup, then a cosine down to a floor given as a ratio of the peak.

transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (its ``cosine_with_min_lr``
scheduler type), its argument names and defaults, and its values in its float operations: at
step k the base lrs times ``float(k) / float(num_warmup_steps)`` below ``num_warmup_steps``,
then ``0.5 * (1 + cos(2 pi num_cycles p)) * (1 - min_lr_rate) + min_lr_rate`` with ``p =
(k - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)``. The cosine is
``cos(pi num_cycles p) ** 2``, its angle reduced in integers (``num_cycles`` is a ratio of
integers exactly) and the cosine a fixed polynomial (``lrpilot.policies.arith``): within a few
ulps of transformers' libm cos in the horizon, and past ``num_training_steps``, where the
cosine goes on as transformers' does, exact to the last digits at any step where transformers'
rounded angle drifts. ``warmup_type`` adds the warmup shapes of ``wsd@1`` (linear, the default,
is transformers'): cosine, 1-sqrt from 0, or exponential from ``min_lr_rate``.

transformers also takes ``min_lr`` and divides it by the optimizer's default lr; a run has one
base lr per param group, so lrpilot takes the ratio only (``min_lr_rate``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StrictFloat

from lrpilot.policies.arith import cos2_turns_ratio
from lrpilot.policies.base import Horizon, Loc
from lrpilot.policies.curve import (
    Curve,
    PositiveSteps,
    Schedule,
    ScheduleParams,
    Steps,
    WarmupType,
    warmup_ramp,
)


class CosineWithMinLrParams(ScheduleParams):
    """transformers' get_cosine_with_min_lr_schedule_with_warmup's arguments, names and
    defaults (min_lr_rate, not min_lr), and the warmup's shape."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"num_warmup_steps": 500, "num_training_steps": 10000, "min_lr_rate": 0.1},
                {
                    "num_warmup_steps": 2000,
                    "num_training_steps": 100000,
                    "min_lr_rate": 0.05,
                    "warmup_type": "cosine",
                },
            ]
        }
    )

    num_warmup_steps: Annotated[Steps, Field(description="steps of the warmup to the base lrs")]
    num_training_steps: Annotated[
        PositiveSteps, Field(description="the cosine ends at min_lr_rate at this step")
    ]
    num_cycles: Annotated[
        StrictFloat,
        Field(ge=0.0, allow_inf_nan=False, description="waves of the cosine (0.5: a half-cosine)"),
    ] = 0.5
    min_lr_rate: Annotated[
        StrictFloat, Field(ge=0.0, le=1.0, description="the floor, a ratio of the base lrs")
    ]
    warmup_type: Annotated[
        WarmupType,
        Field(description="linear from 0 (transformers'), cosine, 1-sqrt, or exponential"),
    ] = "linear"

    def declared_horizon(self) -> Horizon | None:
        return Horizon("num_training_steps", self.num_warmup_steps, self.num_training_steps)

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        errors: list[tuple[Loc, str]] = []
        if self.warmup_type == "exponential" and self.min_lr_rate == 0.0:
            errors.append(
                (
                    ("warmup_type",),
                    "warmup_type exponential starts at min_lr_rate: it needs min_lr_rate > 0",
                )
            )
        if self.num_warmup_steps > self.num_training_steps:
            errors.append(
                (
                    ("num_warmup_steps",),
                    f"the warmup ({self.num_warmup_steps} steps) would end after "
                    f"num_training_steps {self.num_training_steps}",
                )
            )
        return errors

    def _curve(self, base: tuple[float, ...]) -> Curve:
        w, m, cycles = self.num_warmup_steps, self.min_lr_rate, self.num_cycles
        kind = self.warmup_type
        ramp = warmup_ramp(kind, m if kind == "exponential" else 0.0)
        warm = float(max(1, w))
        # cos(pi * num_cycles * (k - w) / span) ** 2, num_cycles = turns / per exactly: the angle
        # in integers, so a step far past the horizon keeps every digit
        turns, per = cycles.as_integer_ratio()
        d = per * max(1, self.num_training_steps - w)
        keep = 1 - m

        def curve(k: int) -> tuple[float, ...]:
            if k < w:
                f = ramp(float(k) / warm)
            else:
                f = max(0.0, cos2_turns_ratio(turns * (k - w), d) * keep + m)
            return tuple([b * f for b in base])

        return curve


COSINE_WITH_MIN_LR = Schedule(
    "cosine_with_min_lr",
    CosineWithMinLrParams,
    "A warmup (linear, cosine, 1-sqrt or exponential), then a cosine from the base lrs down to "
    "min_lr_rate times them at num_training_steps (transformers' "
    "get_cosine_with_min_lr_schedule_with_warmup).",
)
