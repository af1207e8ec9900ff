"""The README's fine-tune with a policy per param group: ``python docs/images/make_groups_plot.py
[DIR]`` (DIR: where to write groups_finetune.png, by default next to this file). Needs
matplotlib (``pip install '.[plot]'``).

Starts the real service (``lrpilot serve``) on a temporary SQLite file, creates the run of
``groups_finetune.json`` (the run spec the README shows: the backbone on a cosine with a floor
after a long warmup, the head on a short warmup then plateau control, one ``groups@1`` policy),
posts docs/schedules' validation loss (an evaluation every 250 steps: it falls, then stalls), and
draws both groups' lrs at every training step as the service serves them (``GET /lrs``), with
the loss and a mark where the head's lr was reduced, using matplotlib's default settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPEC = HERE / "groups_finetune.json"
RUN_ID = "vit-finetune"
MAX_COUNT = 10_000  # the lrs one GET /lrs answers


def schedules() -> Any:
    """docs/schedules/make.py: the worked schedules' validation loss, steps and evaluations."""
    where = str(REPO / "docs" / "schedules")
    if where not in sys.path:
        sys.path.insert(0, where)
    import make  # type: ignore[import-not-found]

    return make


def run(url: str) -> tuple[list[list[float]], list[dict[str, Any]]]:
    """The run made on the service at ``url``: its lrs at every step, and its decisions."""
    import httpx

    make = schedules()
    with httpx.Client(base_url=url, timeout=30) as api:
        api.put(f"/v1/runs/{RUN_ID}", json=json.loads(SPEC.read_text())).raise_for_status()
        for step in range(make.EVERY, make.STEPS + 1, make.EVERY):
            body = {"step": step, "value": make.val_loss(step)}
            api.post(f"/v1/runs/{RUN_ID}/observations", json=body).raise_for_status()
        lrs: list[list[float]] = []
        while len(lrs) <= make.STEPS:
            count = min(MAX_COUNT, make.STEPS + 1 - len(lrs))
            page = api.get(f"/v1/runs/{RUN_ID}/lrs", params={"from": len(lrs), "count": count})
            lrs += page.raise_for_status().json()["lrs"]
        decisions = api.get(f"/v1/runs/{RUN_ID}/decisions").raise_for_status().json()["items"]
    return lrs, decisions


def draw(lrs: list[list[float]], decisions: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcdefaults()  # the defaults, not a local matplotlibrc
    import matplotlib.pyplot as plt

    make = schedules()
    names = [g["name"] for g in json.loads(SPEC.read_text())["policy"]["params"]["groups"]]
    steps = list(range(len(lrs)))
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    for g, name in enumerate(names):
        ax.plot(steps, [row[g] for row in lrs], label=f"{name} lr", linewidth=1.8)
    ax.set_yscale("log")
    ax.set_ylim(1e-6, 5e-3)  # the backbone's warmup starts at 0: below the axis
    ax.set_xlabel("training step")
    ax.set_ylabel("lr")
    for d in decisions:
        if d["action"] == "reduce":
            ax.axvline(d["step"], color="tab:purple", alpha=0.35, linewidth=1)
    loss = ax.twinx()
    evaluations = list(range(make.EVERY, make.STEPS + 1, make.EVERY))
    loss.plot(evaluations, [make.val_loss(s) for s in evaluations], "o", markersize=2.5,
              color="tab:gray", label="val_loss")  # fmt: skip
    loss.set_ylabel("val_loss")
    handles = ax.get_legend_handles_labels()[0] + loss.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper right")
    ax.set_title(
        "groups@1: backbone on cosine_with_min_lr (warmup 1000), head on warmup then\n"
        "plateau@1 (patience 3, factor 0.5); purple: the head's reductions",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    out = Path((argv if argv is not None else sys.argv[1:] or [str(HERE)])[0])
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))  # the tests' harness runs the service
    from tests.harness import sqlite_server

    with sqlite_server("groups") as server:
        lrs, decisions = run(server.url)
    png = out / "groups_finetune.png"
    draw(lrs, decisions, png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
