"""Checkpoints bound to the log (docs/client.md): a real torch model and optimizer, the real
service (one uvicorn for the module); a checkpoint is torch.save'd to bytes and loaded back with
torch.load(weights_only=True), as a job does.

A checkpoint loads into its own run; another run's, one saved on a branch a later resume
rewound, one whose entry is not in the run's chain and one whose optimizer lrs were edited are
refused with a `CheckpointMismatch` naming which (or a warning with on_mismatch="warn"); with
the service away the load goes on and the rewind is done once it is back.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lrpilot_client import CheckpointMismatch, Client
from lrpilot_client.integrations.torch import LrpilotScheduler
from tests.client.test_integrations_frameworks import (
    lightning_data,
    lightning_module,
    lightning_trainer,
    quiet_lightning,  # noqa: F401 (a fixture)
)
from tests.client.test_integrations_torch import model_and_optimizer, train_step
from tests.harness import LiveServer

LOGGER = "lrpilot_client.integrations"
PARAMS = {"patience": 1, "factor": 0.5}

pytestmark = pytest.mark.filterwarnings("ignore:.*weights_only.*:FutureWarning")


@pytest.fixture
def client(module_server: LiveServer) -> Iterator[Client]:
    with Client(module_server.url) as c:
        yield c


class Job:
    """One training process: a model, its optimizer and an LrpilotScheduler on `run_id`."""

    def __init__(self, client: Client, run_id: str, **options: Any) -> None:
        self.layers, self.opt = model_and_optimizer([0.1, torch.tensor(0.01, dtype=torch.float64)])
        self.sched = LrpilotScheduler(
            self.opt, client, run_id, params=PARAMS, metric="val_loss", ahead=50, **options
        )

    def train(self, to_step: int, value: float = 1.0) -> None:
        """Train up to `to_step`, posting `value` at every 10th step (a plateau: it reduces)."""
        while self.sched.last_epoch < to_step:
            train_step(self.layers, self.opt, self.sched.last_epoch)
            self.sched.step()
            if self.sched.last_epoch % 10 == 0:
                self.sched.observe(value)

    def save(self) -> bytes:
        out = io.BytesIO()
        torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}, out)
        return out.getvalue()

    def load(self, checkpoint: bytes, edit: Any = None) -> None:
        saved: dict[str, Any] = torch.load(io.BytesIO(checkpoint), weights_only=True)
        if edit is not None:
            edit(saved)
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.opt.param_groups]


def test_a_checkpoint_carries_its_entry_and_loads_into_its_own_run(client: Client) -> None:
    job = Job(client, "bound-own")
    job.train(30)
    checkpoint = job.save()
    state = torch.load(io.BytesIO(checkpoint), weights_only=True)["scheduler"]
    at_30 = next(d for d in client.iter_decisions("bound-own") if d.step == 30)
    bound = (state["run_id"], state["seq"], state["head_hash"])
    assert bound == ("bound-own", at_30.seq, at_30.hash)
    job.train(50)

    resumed = Job(client, "bound-own")
    resumed.load(checkpoint)  # the entry is live, the lrs restored are the ones decided
    assert resumed.sched.last_epoch == 30 and resumed.lrs() == [0.05, 0.005]
    assert client.verify("bound-own", head=resumed.sched.head_hash()).ok
    # after the rewind the head is the rewind entry, and a checkpoint now binds to it
    again = torch.load(io.BytesIO(resumed.save()), weights_only=True)["scheduler"]
    rewind = list(client.iter_decisions("bound-own", action="rewind"))[-1]
    assert (again["seq"], again["head_hash"]) == (rewind.seq, rewind.hash)


def test_another_runs_checkpoint_is_refused_or_warned(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    a = Job(client, "bound-a")
    a.train(20)
    checkpoint = a.save()
    b = Job(client, "bound-b")
    with pytest.raises(CheckpointMismatch, match=r"\(run\).*'bound-a'.*'bound-b'") as caught:
        b.load(checkpoint)
    assert caught.value.what == "run" and isinstance(caught.value, ValueError)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    warned = Job(client, "bound-b", on_mismatch="warn")
    warned.load(checkpoint)
    assert warned.sched.run_id == "bound-b" and warned.sched.last_epoch == 20
    assert any("checkpoint mismatch (run)" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_of_a_branch_since_rewound_is_refused(client: Client) -> None:
    job = Job(client, "bound-branch")
    job.train(20)
    early = job.save()
    job.train(40)
    late = job.save()  # saved under the entry of step 40
    Job(client, "bound-branch").load(early)  # a resume from step 20 supersedes 30 and 40

    with pytest.raises(CheckpointMismatch, match="since rewound") as caught:
        Job(client, "bound-branch").load(late)
    assert caught.value.what == "head"


def test_an_entry_not_in_the_runs_chain_is_refused(client: Client) -> None:
    job = Job(client, "bound-chain")
    job.train(20)
    checkpoint = job.save()

    def other_hash(saved: dict[str, Any]) -> None:
        saved["scheduler"]["head_hash"] = "0" * 64  # another run's entry of the same seq

    def past_the_end(saved: dict[str, Any]) -> None:
        saved["scheduler"]["seq"] = 99

    with pytest.raises(CheckpointMismatch, match=r"not in run 'bound-chain'.s chain.*has hash"):
        Job(client, "bound-chain").load(checkpoint, other_hash)
    with pytest.raises(CheckpointMismatch, match="has no entry 99"):
        Job(client, "bound-chain").load(checkpoint, past_the_end)


def test_an_edited_lr_is_refused_and_warned_then_the_runs_lrs_apply(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    job = Job(client, "bound-lrs")
    job.train(30)  # reduced at 30 (patience 1): [0.05, 0.005]
    checkpoint = job.save()

    def edited(saved: dict[str, Any]) -> None:
        saved["optimizer"]["param_groups"][0]["lr"] = 0.1

    with pytest.raises(CheckpointMismatch, match=r"\(lrs\).*\[0\.1, 0\.005\].*\[0\.05, 0\.005\]"):
        Job(client, "bound-lrs").load(checkpoint, edited)

    caplog.set_level(logging.WARNING, logger=LOGGER)
    warned = Job(client, "bound-lrs", on_mismatch="warn")
    warned.load(checkpoint, edited)
    assert warned.lrs() == [0.05, 0.005]  # the run's lrs, not the edited one
    assert any("checkpoint mismatch (lrs)" in r.getMessage() for r in caplog.records)


def test_with_the_service_away_the_load_warns_and_rewinds_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with (
        LiveServer(f"sqlite:///{tmp_path / 'away.db'}") as server,
        Client(server.url, retries=1, backoff=0.05, max_backoff=0.1) as client,
    ):
        job = Job(client, "bound-away")
        job.train(20)
        checkpoint = job.save()
        job.train(40)
        resumed = Job(client, "bound-away")  # (a scheduler is made with the service there)
        server.stop()
        resumed.load(checkpoint)  # no exception: warned, the last known rates applied
        messages = [r.getMessage() for r in caplog.records]
        assert any("was not checked against the log" in m for m in messages)
        assert any("not rewound to step 20 yet" in m for m in messages)
        assert resumed.sched.last_epoch == 20
        server.start()
        resumed.train(50, value=0.5)  # the due rewind first, then on
        gone = [d.step for d in client.iter_decisions("bound-away", superseded=True)]
        assert gone == [30, 40]
        assert client.verify("bound-away", head=resumed.sched.head_hash()).ok


# -- the callbacks' state ----------------------------------------------------------------------


def test_the_transformers_callbacks_state_is_saved_with_each_checkpoint_and_checked(
    client: Client, tmp_path: Path
) -> None:
    """The callback alone: the Trainer saves its own scheduler, so the callback's state (run,
    seq, head) goes beside each checkpoint; a resume from it loads it (a rewind), and a resume
    of another run's callback from it is refused, naming both runs."""
    from transformers import Trainer

    from lrpilot_client.integrations.transformers import STATE_FILE, LrpilotCallback
    from tests.client.test_integrations_frameworks import Tokens, hf_args, tiny_bert

    def train(run_id: str, resume: str | None = None) -> LrpilotCallback:
        callback = LrpilotCallback(client, run_id, params=PARAMS, metric="eval_loss")
        args = hf_args(tmp_path, max_steps=20, eval_steps=5, save_strategy="steps", save_steps=10,
                       lr_scheduler_type="constant")  # fmt: skip
        trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(40, 1),
                          eval_dataset=Tokens(16, 2), callbacks=[callback])  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return callback

    train("bound-hf")
    checkpoint = tmp_path / "checkpoint-10"
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    at_10 = client.lr_at("bound-hf", 10)
    assert (saved["run_id"], saved["last_epoch"]) == ("bound-hf", 10)
    entry = client.decisions("bound-hf", after=saved["seq"] - 1, limit=1).items[0]
    assert (saved["seq"], saved["head_hash"]) == (at_10.seq, entry.hash) and entry.step == 10

    train("bound-hf", str(checkpoint))  # its own run: loaded, the run rewound to step 10
    gone = [d.step for d in client.iter_decisions("bound-hf", superseded=True)]
    assert gone == [15, 20]

    with pytest.raises(CheckpointMismatch, match=r"\(run\).*'bound-hf'.*'bound-hf-other'"):
        train("bound-hf-other", str(checkpoint))


def test_the_lightning_callbacks_state_in_a_checkpoint_is_checked(
    client: Client,
    tmp_path: Path,
    quiet_lightning: None,  # noqa: F811 (the fixture)
) -> None:
    """Lightning keeps the callback's state (run, seq, head) in its checkpoints: a fit of
    another run's callback from one is refused, naming both runs."""
    import lightning.pytorch as pl

    from lrpilot_client.integrations.lightning import LrpilotCallback

    def fit(run_id: str, ckpt: str | None = None) -> None:
        callback = LrpilotCallback(client, run_id, params=PARAMS)
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
        trainer = lightning_trainer(tmp_path, [callback, saver], epochs=2)
        trainer.fit(lightning_module(), lightning_data(64, 1), lightning_data(32, 2),
                    ckpt_path=ckpt)  # fmt: skip

    fit("bound-pl")
    ckpt = tmp_path / "epoch=0-step=8.ckpt"
    state = next(v for k, v in torch.load(ckpt, weights_only=False)["callbacks"].items()
                 if "LrpilotCallback" in k)  # fmt: skip
    assert (state["run_id"], state["last_epoch"], state["seq"]) == ("bound-pl", 8, 1)
    with pytest.raises(CheckpointMismatch, match=r"\(run\).*'bound-pl'.*'bound-pl-other'"):
        fit("bound-pl-other", str(ckpt))
