"""Write the README's three worked schedules as PNGs: ``python docs/schedules/make.py [DIR]``
(DIR: where to write them, by default next to this file).

Each ``<name>.json`` is a run spec exactly as ``PUT /v1/runs/{run_id}`` takes it (the README's
curl calls send these files); ``val_loss.txt`` is the validation loss the plots replay through
them, one evaluation every 250 training steps ("step value" lines, written here: a loss that
falls, then stalls at a level it never beats again). The plots come from
``lrpilot plot``, the command a user runs on their own spec.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECS = ("warmup_then_plateau", "cosine_with_plateau_drops", "stall_then_linear_decay")
STEPS = 10_000
EVERY = 250


def val_loss(step: int) -> float:
    """Falls until step 4,000, then stalls: a level it never beats again, with a wobble above."""
    level = 0.42 + 1.6 * math.exp(-min(step, 4000) / 1000)
    return round(level + 0.002 * ((step // EVERY) % 3), 6)


def main(argv: list[str] | None = None) -> int:
    out = Path((argv if argv is not None else sys.argv[1:] or [str(HERE)])[0])
    out.mkdir(parents=True, exist_ok=True)
    values = out / "val_loss.txt"
    values.write_text(
        "".join(f"{step} {val_loss(step)!r}\n" for step in range(EVERY, STEPS + 1, EVERY))
    )
    for name in SPECS:
        subprocess.run(
            [
                sys.executable, "-m", "lrpilot.cli", "plot", str(HERE / f"{name}.json"),
                "--values", str(values), "--steps", str(STEPS), "-o", str(out / f"{name}.png"),
            ],
            check=True,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
