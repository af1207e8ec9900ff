"""Draw the worked schedules of the README and docs/policies.md: ``python
docs/schedules/make.py [DIR]`` (DIR: where to write them, by default next to this file, over the
committed PNGs). Needs matplotlib
(``pip install '.[plot]'``).

Each ``<name>.json`` is a run spec exactly as ``PUT /v1/runs/{run_id}`` takes it (the README's
curl calls send these files); ``val_loss.txt`` is the validation loss the plots replay through
them, one evaluation every 250 training steps ("step value" lines, written here: a loss that
falls, then stalls at a level it never beats again). Each plot is what
``lrpilot plot SPEC --values val_loss.txt --steps 10000 -o PNG`` draws (the command a user runs
on their own spec, called here in this process), with matplotlib's default settings whatever a
local matplotlibrc says, so that tests/operations/test_readme_schedules.py can tell when a
committed PNG no longer matches what this script draws.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECS = (
    "warmup_then_plateau",
    "cosine_with_plateau_drops",
    "stall_then_linear_decay",
    "wsd_cooldown_on_a_plateau",
    "wsd_deepseek_steps",
    "inverse_sqrt_noam",
)
STEPS = 10_000
EVERY = 250


def val_loss(step: int) -> float:
    """Falls until step 4,000, then stalls: a level it never beats again, with a wobble above."""
    level = 0.42 + 1.6 * math.exp(-min(step, 4000) / 1000)
    return round(level + 0.002 * ((step // EVERY) % 3), 6)


def values_text() -> str:
    """``val_loss.txt``: the plotted loss as ``lrpilot plot --values`` reads it."""
    return "".join(f"{step} {val_loss(step)!r}\n" for step in range(EVERY, STEPS + 1, EVERY))


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    from lrpilot.cli.plot import plot

    out = Path((argv if argv is not None else sys.argv[1:] or [str(HERE)])[0])
    out.mkdir(parents=True, exist_ok=True)
    values = out / "val_loss.txt"
    values.write_text(values_text())
    matplotlib.use("Agg")
    matplotlib.rcdefaults()  # the defaults (DejaVu Sans, shipped with matplotlib), not a local rc
    for name in SPECS:
        plot(output=out / f"{name}.png", spec=HERE / f"{name}.json", steps=STEPS, values=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
