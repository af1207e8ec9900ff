"""A run clocked in tokens (or samples), driven by the real `LrpilotScheduler` on a real torch
model against the real service (one uvicorn subprocess for the module).

The point of a tokens clock: a job whose batch size changes mid-run (8 sequences of 128 tokens a
step, then 16) gets, at every token position, the lr a job with one batch size gets there, while
the lr as a function of optimizer steps differs. Every lr compared is the one the optimizer held
when `optimizer.step()` ran (a step pre-hook), by equality.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lrpilot_client import Client
from lrpilot_client.errors import ValidationError
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.client.test_integrations_frameworks import (
    f32,
    hf_trained,
    keras_data,
    keras_model,
    keras_recorder,
    observations,
)
from tests.harness import LiveServer

pytestmark = pytest.mark.filterwarnings("ignore:.*weights_only.*:FutureWarning")

SEQ = 128  # tokens a sequence
TOTAL = 40 * 8 * SEQ  # the tokens of the whole run: 40 steps of 8 sequences
COSINE = {"T_max": TOTAL, "eta_min": 0.0}  # a horizon written in tokens


@pytest.fixture
def client(module_server: LiveServer) -> Iterator[Client]:
    with Client(module_server.url) as c:
        yield c


class Model(torch.nn.Module):
    """A tiny language model: embeddings, then a linear read-out of the next token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(64, 8)
        self.out = torch.nn.Linear(8, 64)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.out(self.embed(batch["input_ids"][:, :-1]))
        target = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].float()
        each = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        return (each * mask).sum() / mask.sum()


def batches(
    sizes: list[int], lengths: Callable[[int], int] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """One batch a step: `sizes[k]` sequences of SEQ tokens (each only `lengths(k)` long, the
    rest padding, when given)."""
    g = torch.Generator().manual_seed(1)
    for k, n in enumerate(sizes):
        mask = torch.ones(n, SEQ, dtype=torch.long)
        if lengths is not None:
            mask[:, lengths(k) :] = 0
        yield {"input_ids": torch.randint(0, 64, (n, SEQ), generator=g), "attention_mask": mask}


def train(
    client: Client, run_id: str, sizes: list[int], *, counted: str = "mask", **kwargs: Any
) -> tuple[list[tuple[int, int, float]], LrpilotScheduler]:
    """Train one step a batch; (step, tokens consumed before it, lr held) at each
    optimizer.step(). `counted` "mask": tokens_per_step is a callable counting the batch's
    attention mask; else kwargs give the count."""
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch: dict[str, torch.Tensor] = {}
    if counted == "mask":
        kwargs["tokens_per_step"] = lambda: batch["attention_mask"].sum().item()
    scheduler = LrpilotScheduler(optimizer, client, run_id, "cosine", params=COSINE, **kwargs)
    held: list[tuple[int, int, float]] = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kw: held.append(
            (scheduler.last_epoch, scheduler.position, opt.param_groups[0]["lr"])
        )
    )
    for batch in batches(sizes):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
        scheduler.step()
    return held, scheduler


def test_the_lr_is_a_function_of_tokens_through_a_batch_size_change(client: Client) -> None:
    # 20 steps of 8 sequences, then 10 of 16: the same 40,960 tokens as 40 steps of 8
    changed, sched = train(client, "tokens-changed", [8] * 20 + [16] * 10)
    constant, _ = train(
        client, "tokens-constant", [8] * 40, counted="number", tokens_per_step=8 * SEQ
    )
    assert sched.position == TOTAL and sched.last_epoch == 30
    assert client.get_run("tokens-changed").clock == "tokens"

    by_tokens = {tokens: lr for _, tokens, lr in constant}
    shared = [(tokens, lr) for _, tokens, lr in changed]
    assert len(shared) == 30 and all(tokens in by_tokens for tokens, _ in shared)
    assert [lr for _, lr in shared] == [by_tokens[tokens] for tokens, _ in shared]
    # ... and each is the service's lr at that token position
    assert [lr for _, lr in shared] == [client.lr_at("tokens-changed", t).lrs[0] for t, _ in shared]

    # as a function of steps they differ from the batch-size change on
    steps_changed = [lr for _, _, lr in changed]
    steps_constant = [lr for _, _, lr in constant[:30]]
    assert steps_changed[:21] == steps_constant[:21]
    assert all(a < b for a, b in zip(steps_changed[21:], steps_constant[21:], strict=True))
    # one request for the constant run's 40 steps; the callable's first block is read at
    # every token (its stride is not known before the first count), then 2, then `ahead`
    assert sched.fetches == 3


def test_variable_lengths_observe_and_resume_at_the_position(client: Client) -> None:
    lengths = [SEQ - 7 * k % 50 for k in range(12)]  # padded batches: varying real tokens
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch: dict[str, torch.Tensor] = {}
    spec = ("tokens-variable", "plateau")
    params = {"patience": 0, "factor": 0.5}
    kwargs: dict[str, Any] = {"tokens_per_step": lambda: batch["attention_mask"].sum().item()}
    scheduler = LrpilotScheduler(optimizer, client, *spec, params=params, **kwargs)
    positions, saved = [], {}
    for k, batch in enumerate(batches([4] * 12, lambda k: lengths[k])):
        positions.append(scheduler.position)
        optimizer.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if k % 3 == 2:
            assert scheduler.observe(1.0).step == scheduler.position  # the tokens consumed
        if k == 5:
            saved = scheduler.state_dict()
    assert positions == [4 * sum(lengths[:k]) for k in range(12)]
    assert scheduler.position == 4 * sum(lengths)
    assert [d.step for d in client.decisions("tokens-variable").items] == [
        4 * sum(lengths[: k + 1]) for k in (2, 5, 8, 11)
    ]
    assert scheduler.fetches <= 2 * 12 + 4  # one small block a step, never `ahead` rates a step

    # a new process resumes from the checkpoint: the position goes on from where it was
    assert saved["clock"] == "tokens" and saved["position"] == 4 * sum(lengths[:6])
    optimizer = torch.optim.SGD(Model().parameters(), lr=0.5)
    again = LrpilotScheduler(optimizer, client, *spec, params=params, **kwargs)
    again.load_state_dict(saved)
    assert (again.last_epoch, again.position) == (6, saved["position"])
    live = client.decisions("tokens-variable", superseded=False).items
    assert [d.step for d in live if d.action != "rewind"] == [
        4 * sum(lengths[: k + 1]) for k in (2, 5)
    ]  # the evaluations after the checkpoint are superseded
    assert (
        optimizer.param_groups[0]["lr"] == client.lr_at("tokens-variable", saved["position"]).lrs[0]
    )
    # a callable's tokens are not known from the step alone
    with pytest.raises(ValueError, match=r"callable tokens_per_step.*state_dict"):
        again.resume(6)


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (0, "got 0"),
        (-3, "got -3"),
        (1.5, "got 1.5"),
        (True, "got True"),
        ("128", "got '128'"),
    ],
)
def test_a_count_that_is_not_a_positive_integer_is_refused(
    client: Client, count: Any, message: str
) -> None:
    optimizer = torch.optim.SGD(Model().parameters(), lr=0.5)
    with pytest.raises(ValueError, match=f"tokens_per_step must be a positive integer.*{message}"):
        LrpilotScheduler(
            optimizer, client, "tokens-count", "cosine", params=COSINE, tokens_per_step=count
        )
    scheduler = LrpilotScheduler(
        optimizer, client, "tokens-count", "cosine", params=COSINE, tokens_per_step=lambda: count
    )
    with pytest.raises(ValueError, match=f"tokens_per_step \\(the callable\\) must be .*{message}"):
        scheduler.step()
    assert scheduler.position == 0  # nothing counted


def test_a_clock_mismatch_is_a_clear_error(client: Client) -> None:
    optimizer = torch.optim.SGD(Model().parameters(), lr=0.5)
    LrpilotScheduler(
        optimizer, client, "clock-tokens", "cosine", params=COSINE, tokens_per_step=1024
    )
    LrpilotScheduler(optimizer, client, "clock-steps", "cosine", params=COSINE)
    with pytest.raises(
        ValueError,
        match="run 'clock-tokens' counts tokens, and "
        "neither samples_per_step nor tokens_per_step was given: give tokens_per_step, or use",
    ):
        LrpilotScheduler(optimizer, client, "clock-tokens", "cosine", params=COSINE)
    with pytest.raises(ValueError, match="counts tokens, and samples_per_step was given"):
        LrpilotScheduler(optimizer, client, "clock-tokens", None, samples_per_step=8)
    with pytest.raises(
        ValueError,
        match="run 'clock-steps' counts steps, and tokens_per_step was given: give no "
        "samples_per_step or tokens_per_step, or use another run_id",
    ):
        LrpilotScheduler(
            optimizer, client, "clock-steps", "cosine", params=COSINE, tokens_per_step=8
        )
    with pytest.raises(ValueError, match="give samples_per_step or tokens_per_step"):
        LrpilotScheduler(optimizer, client, "clock-x", samples_per_step=8, tokens_per_step=8)
    scheduler = LrpilotScheduler(optimizer, client, "clock-steps", "cosine", params=COSINE)
    tokens = LrpilotScheduler(optimizer, client, "clock-tokens", None, tokens_per_step=1024)
    with pytest.raises(
        ValueError, match="the checkpoint's scheduler counted steps, this one counts tokens"
    ):
        tokens.load_state_dict(scheduler.state_dict() | {"root_run_id": "clock-tokens"})
    with pytest.raises(ValidationError):  # the service's 422: a clock it does not know
        client.create_run("clock-bad", "cosine", params=COSINE, base_lrs=[0.1], clock="epochs")


def test_samples_clock_with_a_constant_count_resumes_from_the_step(client: Client) -> None:
    optimizer = torch.optim.SGD(Model().parameters(), lr=0.5)
    scheduler = LrpilotScheduler(
        optimizer, client, "samples-run", "cosine", params={"T_max": 640}, samples_per_step=32
    )
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert (scheduler.last_epoch, scheduler.position) == (5, 160)
    assert scheduler.observe(0.5).step == 160
    assert repr(scheduler).startswith("LrpilotScheduler(run_id='samples-run', step=5, samples=160")
    # the callbacks resume from a trainer's global step: a constant count gives the position
    scheduler.resume(3, observed_step=scheduler.position_of(3))
    assert (scheduler.last_epoch, scheduler.position) == (3, 96)
    assert optimizer.param_groups[0]["lr"] == client.lr_at("samples-run", 96).lrs[0]
    scheduler.step_to(4)
    assert scheduler.position == 128
    scheduler.set_per_step(64)  # the batch doubled
    scheduler.step()
    assert (scheduler.last_epoch, scheduler.position) == (5, 192)
    with pytest.raises(ValueError, match="samples_per_step must be a positive integer"):
        scheduler.set_per_step(0)
    steps = LrpilotScheduler(optimizer, client, "steps-run", "cosine", params={"T_max": 10})
    with pytest.raises(ValueError, match="counts steps: samples or tokens per step do not apply"):
        steps.set_per_step(8)


# -- the callbacks ------------------------------------------------------------------------------


def test_transformers_callback_counts_tokens(client: Client, tmp_path: Path) -> None:
    from lrpilot_client.integrations.transformers import LrpilotCallback

    per_step = 4 * 8  # 4 sequences of 8 tokens a step
    callback = LrpilotCallback(
        client, "hf-tokens", policy="cosine", params={"T_max": 30 * per_step},
        metric="eval_loss", tokens_per_step=per_step,
    )  # fmt: skip
    _, used = hf_trained(tmp_path, callback)
    assert client.get_run("hf-tokens").clock == "tokens"
    assert [s for s, _ in used] == list(range(30))
    for step, lrs in used:  # each step's lr is the run's at the tokens consumed before it
        assert lrs == list(client.lrs("hf-tokens", step * per_step)), f"step {step}"
    assert [s for s, _ in observations(client, "hf-tokens")] == [320, 640, 960]


def test_keras_callback_counts_samples(client: Client) -> None:
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    from lrpilot_client.integrations.keras import LrpilotCallback

    x, y = keras_data(64, 1)
    model = keras_model()
    callback = LrpilotCallback(
        client, "keras-samples", policy="cosine", params={"T_max": 640}, samples_per_step=16
    )
    recorder, used = keras_recorder()
    model.fit(x, y, batch_size=16, epochs=3, validation_data=keras_data(32, 2), verbose=0,
              callbacks=[callback, recorder])  # fmt: skip
    assert [s for s, _ in used] == list(range(12))  # 4 steps of 16 samples an epoch
    for step, lr in used:
        assert lr == f32(client.lr("keras-samples", 16 * step)), f"step {step}"
    assert [s for s, _ in observations(client, "keras-samples")] == [64, 128, 192]
    assert callback.position == 192
    mismatched = LrpilotCallback(client, "keras-samples", policy=None)  # no samples_per_step
    with pytest.raises(ValueError, match="counts samples, and neither"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[mismatched])
