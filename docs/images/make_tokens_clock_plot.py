"""The figure of docs/schedules.md's "Clocks" and the README: ``python
docs/images/make_tokens_clock_plot.py [DIR]`` (DIR: where to write tokens_clock.png, by default
next to this file).

Starts the real service on a temporary SQLite file (open mode, loopback) and trains a tiny
next-token model with real torch twice, each through `LrpilotScheduler` on a run clocked in
tokens (wsd@1: warmup, stable, decay, its phases written in tokens): once with 8 sequences of
128 tokens a step for 40 steps, once with 8 for 20 steps and 16 after (the same 40,960 tokens,
in 30 steps), the tokens of each step counted from the batch's attention mask. It plots the lr
each optimizer step used against the tokens consumed before it (the two runs are one curve) and
against the optimizer step (they differ). Needs torch and matplotlib.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEQ = 128  # tokens a sequence
WSD = {  # in tokens: 4,096 of warmup, stable to 24,576, then a cosine decay to 40,960
    "num_warmup_steps": 4096,
    "num_stable_steps": 20480,
    "num_decay_steps": 16384,
    "decay_type": "cosine",
}
RUNS = {  # run id: the sequences of each step
    "tokens-8": [8] * 40,
    "tokens-8-then-16": [8] * 20 + [16] * 10,
}


def train(url: str, run_id: str, sizes: list[int]) -> list[tuple[int, int, float]]:
    """(optimizer step, tokens consumed before it, lr it used), one a step."""
    import torch

    from lrpilot_client import Client
    from lrpilot_client.integrations.torch import LrpilotScheduler

    torch.manual_seed(0)
    vocab = 32
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch: dict[str, Any] = {}
    used: list[tuple[int, int, float]] = []
    with Client(url) as client:
        scheduler = LrpilotScheduler(
            optimizer, client, run_id, "wsd", params=WSD,
            tokens_per_step=lambda: int(batch["attention_mask"].sum()),
        )  # fmt: skip
        g = torch.Generator().manual_seed(1)
        for n in sizes:
            ids = torch.randint(0, vocab, (n, SEQ), generator=g)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            used.append((scheduler.last_epoch, scheduler.position, optimizer.param_groups[0]["lr"]))
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, vocab), ids[:, 1:].reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return used


def draw(curves: dict[str, list[tuple[int, int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_tokens, by_steps) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    styles = {
        "tokens-8": {"color": "tab:blue", "linewidth": 3, "label": "8 x 128 tokens a step"},
        "tokens-8-then-16": {
            "color": "tab:orange", "marker": "o", "markersize": 3, "linewidth": 1,
            "linestyle": "--", "label": "8, then 16 x 128 from step 20",
        },
    }  # fmt: skip
    for run_id, used in curves.items():
        by_tokens.plot([t for _, t, _ in used], [lr for _, _, lr in used], **styles[run_id])
        by_steps.plot([s for s, _, _ in used], [lr for _, _, lr in used], **styles[run_id])
    by_tokens.set_xlabel("tokens")
    by_tokens.set_title("lr against tokens: one schedule")
    by_steps.set_xlabel("optimizer step")
    by_steps.set_title("lr against steps: the batch-size change")
    by_steps.axvline(20, color="grey", linestyle=":", linewidth=1)
    for ax in (by_tokens, by_steps):
        ax.set_ylabel("lr")
        ax.legend(loc="lower left")
    fig.suptitle('wsd@1 on a run clocked in tokens (clock: "tokens")')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0]) if args else HERE
    out.mkdir(parents=True, exist_ok=True)
    for where in (REPO, REPO / "service", REPO / "clients" / "python"):
        if str(where) not in sys.path:
            sys.path.insert(0, str(where))
    from tests.harness import LiveServer

    with (
        tempfile.TemporaryDirectory() as tmp,
        LiveServer(f"sqlite:///{Path(tmp) / 'tokens.db'}") as server,
    ):
        curves = {run_id: train(server.url, run_id, sizes) for run_id, sizes in RUNS.items()}
    constant = {tokens: lr for _, tokens, lr in curves["tokens-8"]}
    assert all(constant[t] == lr for _, t, lr in curves["tokens-8-then-16"]), "the clock bent"
    draw(curves, out / "tokens_clock.png")
    print(f"wrote {out / 'tokens_clock.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
