"""``inverse_sqrt@1``: a warmup, then the lrs fall as the inverse square root of the step.

Four forms of one curve, each computed in its library's float operations (``math.sqrt`` is
IEEE's correctly rounded square root: the same bits on every machine):

* ``transformers`` (the default): transformers' ``get_inverse_sqrt_schedule(optimizer,
  num_warmup_steps, timescale=None)`` (big_vision's and T5's rsqrt with warmup). At step k, the
  base lrs times ``float(k) / float(num_warmup_steps)`` below ``num_warmup_steps``, then
  ``1.0 / sqrt((k + timescale - num_warmup_steps) / timescale)``; ``timescale`` null is
  ``num_warmup_steps``, or 10,000 when that is 0. Bit for bit transformers' LambdaLR.
* ``fairseq``: fairseq's ``inverse_sqrt`` scheduler (``--lr`` is the run's base lrs,
  ``--warmup-updates`` is ``num_warmup_steps``): ``warmup_init_lr + k * lr_step`` with
  ``lr_step = (lr - warmup_init_lr) / num_warmup_steps`` below ``num_warmup_steps``, then
  ``lr * sqrt(num_warmup_steps) * (1.0 / sqrt(k))``. fairseq writes ``k ** -0.5`` (libm's pow,
  not correctly rounded everywhere): the two differ by at most an ulp or two.
* ``t5``: T5's (Raffel et al. 2020, Mesh TensorFlow's ``rsqrt_decay``): the base lrs times
  ``1.0 / sqrt(max(k, num_warmup_steps))``: constant through the warmup (T5: 0.01 for 10,000
  steps), then the inverse square root.
* ``noam``: the Transformer paper's (Vaswani et al. 2017, as The Annotated Transformer runs it
  through LambdaLR): the base lrs are its ``factor``, times ``d_model ** -0.5 * min(k ** -0.5,
  k * num_warmup_steps ** -1.5)``, step 0 counted as step 1; the powers as ``1.0 / sqrt(x)``
  and ``1.0 / (w * sqrt(w))`` (the paper's ``**`` are libm's pow: within a few ulps).
"""

from __future__ import annotations

from math import sqrt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from lrpilot.policies.base import Loc
from lrpilot.policies.curve import Curve, MinLr, PositiveSteps, Schedule, ScheduleParams, Steps


class InverseSqrtParams(ScheduleParams):
    """transformers' get_inverse_sqrt_schedule's arguments, names and defaults; ``form`` picks
    fairseq's or the Transformer paper's (Noam) arithmetic of the same curve."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"num_warmup_steps": 4000},
                {"form": "noam", "num_warmup_steps": 4000, "d_model": 512},
                {"form": "fairseq", "num_warmup_steps": 4000, "warmup_init_lr": 1e-7},
                {"form": "t5", "num_warmup_steps": 10000},
            ]
        }
    )

    num_warmup_steps: Annotated[
        Steps, Field(description="steps of the linear warmup to the peak (the base lrs)")
    ]
    timescale: Annotated[
        PositiveSteps | None,
        Field(
            description="form transformers: the decay is 1 / sqrt((step + shift) / timescale), "
            "shift = timescale - num_warmup_steps (null: num_warmup_steps, or 10000 if that is 0)"
        ),
    ] = None
    form: Annotated[
        Literal["transformers", "fairseq", "noam", "t5"],
        Field(
            description="whose formula: transformers', fairseq's, the Transformer paper's (noam) "
            "or T5's (1 / sqrt(max(step, num_warmup_steps)))"
        ),
    ] = "transformers"
    warmup_init_lr: Annotated[
        MinLr | None, Field(description="form fairseq: the lr at step 0 (null: 0)")
    ] = None
    d_model: Annotated[
        PositiveSteps | None,
        Field(description="form noam: the model width; the lrs are base * d_model ** -0.5 * ..."),
    ] = None

    def _check(self, groups: int) -> list[tuple[Loc, str]]:
        errors: list[tuple[Loc, str]] = []
        form = self.form
        if self.timescale is not None and form != "transformers":
            errors.append((("timescale",), f"timescale is form transformers' (form is {form})"))
        if self.warmup_init_lr is not None and form != "fairseq":
            errors.append(
                (("warmup_init_lr",), f"warmup_init_lr is form fairseq's (form is {form})")
            )
        if form == "noam" and self.d_model is None:
            errors.append((("d_model",), "form noam needs d_model (the model width)"))
        if self.d_model is not None and form != "noam":
            errors.append((("d_model",), f"d_model is form noam's (form is {form})"))
        if form != "transformers" and self.num_warmup_steps == 0:
            errors.append(
                (
                    ("num_warmup_steps",),
                    f"form {form} needs num_warmup_steps >= 1 (its formula divides by it)",
                )
            )
        return errors

    def _curve(self, base: tuple[float, ...]) -> Curve:
        w = self.num_warmup_steps
        if self.form == "fairseq":
            init = self.warmup_init_lr or 0.0
            steps = tuple([(b - init) / w for b in base])
            decay = tuple([b * sqrt(w) for b in base])

            def fairseq(k: int) -> tuple[float, ...]:
                if k < w:
                    return tuple([init + k * s for s in steps])
                r = 1.0 / sqrt(k)
                return tuple([d * r for d in decay])

            return fairseq
        if self.form == "t5":

            def t5(k: int) -> tuple[float, ...]:
                f = 1.0 / sqrt(max(k, w))
                return tuple([b * f for b in base])

            return t5
        if self.form == "noam":
            assert self.d_model is not None  # _check
            width = 1.0 / sqrt(self.d_model)
            ramp = 1.0 / (w * sqrt(w))

            def noam(k: int) -> tuple[float, ...]:
                k = k or 1
                f = width * min(1.0 / sqrt(k), k * ramp)
                return tuple([b * f for b in base])

            return noam
        scale = self.timescale if self.timescale is not None else (w or 10_000)
        shift = scale - w
        warm = float(max(1, w))

        def transformers(k: int) -> tuple[float, ...]:
            f = float(k) / warm if k < w else 1.0 / sqrt((k + shift) / scale)
            return tuple([b * f for b in base])

        return transformers


INVERSE_SQRT = Schedule(
    "inverse_sqrt",
    InverseSqrtParams,
    "A warmup over num_warmup_steps (linear from 0), then the lrs fall as 1 / sqrt(step) "
    "(transformers' get_inverse_sqrt_schedule; form fairseq: fairseq's inverse_sqrt with "
    "warmup_init_lr; form noam: the Transformer paper's d_model ** -0.5 * "
    "min(step ** -0.5, step * warmup ** -1.5); form t5: T5's 1 / sqrt(max(step, warmup))).",
)
