"""examples/ddp_digits.py, a real 2-process DistributedDataParallel training (gloo, CPU), against
the real service in aggregated mode: both ranks train with the same lr at every step, that lr is
the decision's, every decision counts both ranks with their weights, the model learns, and it
prints what the README shows (test_readme leaves that block to this test: one run of it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import REPO_DIR, LiveServer
from tests.operations.test_readme import console_commands, ddp_block

EXAMPLE = REPO_DIR / "examples" / "ddp_digits.py"
RUN_ID = "ddp-test"
EPOCHS = 16  # the example's default: its plateau@1 run reduces the lr at epochs 10 and 15


def run_example(server: LiveServer, out: Path) -> tuple[list[dict[str, Any]], str]:
    """Run the example as a user does; return the records its ranks wrote (rank 0 first) and
    what it printed (for the failure messages: the client warns there if it went provisional)."""
    env = {**os.environ, "LRPILOT_URL": server.url, "LRPILOT_RUN_ID": RUN_ID}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", str(EPOCHS), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == EPOCHS, done.stdout  # rank 0 prints each epoch
    records = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return records, done.stdout + done.stderr


def test_both_ranks_train_with_the_decided_lrs(live_server: LiveServer, tmp_path: Path) -> None:
    records, printed = run_example(live_server, tmp_path)
    rank0, rank1 = records
    readme_shows(printed.splitlines()[:EPOCHS])
    log = httpx.get(f"{live_server.url}/v1/runs/{RUN_ID}/decisions?limit=1000").json()["items"]

    # (1) the ranks' lrs are identical at every training step (exactly: the same floats)
    lrs = rank0["step_lrs"]
    assert len(lrs) > 0
    assert rank1["step_lrs"] == lrs, printed

    # (2) the model learned: the aggregated validation loss fell; both ranks saw the same value
    evaluations = rank0["evaluations"]
    assert len(evaluations) == EPOCHS
    val_losses = [e["val_loss"] for e in evaluations]
    assert [e["val_loss"] for e in rank1["evaluations"]] == val_losses, printed
    assert evaluations[-1]["val_loss"] < evaluations[0]["val_loss"]

    # (3) one decision an evaluation, each from both ranks' local losses weighted by shard size
    assert [d["step"] for d in log] == [e["step"] for e in evaluations], printed
    assert any(d["action"] == "reduce" for d in log), "the example never reached a plateau"
    for i, d in enumerate(log):
        ranks = sorted(d["ranks"], key=lambda r: r["rank"])
        reports = [(rec["evaluations"][i]["local_val_loss"], rec["val_size"]) for rec in records]
        assert [(r["rank"], r["value"], r["weight"]) for r in ranks] == [
            (rank, value, weight) for rank, (value, weight) in enumerate(reports)
        ]
        assert not d.get("missing_ranks"), (d, printed)
        mean = sum(v * w for v, w in reports) / sum(w for _, w in reports)
        assert d["value"] == pytest.approx(mean, rel=1e-12)
        assert d["value"] == evaluations[i]["val_loss"]

    # the lr changed at least once, and every step after a decision used that decision's lr
    assert any(d["action"] == "reduce" and d["lrs"] != d["previous_lrs"] for d in log), log
    assert set(lrs[: log[0]["step"]]) == {log[0]["previous_lrs"][0]}  # the base lr, until then
    for d, following in pairwise(log):
        assert set(lrs[d["step"] : following["step"]]) == {d["lrs"][0]}, d
    assert len(lrs) == log[-1]["step"]  # the last evaluation ends the training


LOSS = re.compile(r"\d+\.\d+")


def readme_shows(printed: list[str]) -> None:
    """The README's lines of the example's output are what it printed: the same epochs, steps,
    actions and lrs; the losses to the README's 4 decimals, give or take 2 in the third (the
    example is seeded, but float sums may round otherwise on another CPU)."""
    (shown,) = [lines for command, lines in console_commands(ddp_block().body) if "ddp" in command]
    by_epoch = {line.split()[1]: line for line in printed}
    for want in (line for line in shown if line != "..."):
        got = by_epoch.get(want.split()[1], "(no such epoch)")
        assert LOSS.sub("#", got) == LOSS.sub("#", want), f"README: {want}\nprinted: {got}"
        for a, b in zip(LOSS.findall(want), LOSS.findall(got), strict=True):
            assert abs(float(a) - float(b)) <= 0.002, f"README: {want}\nprinted: {got}"
