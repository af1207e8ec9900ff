"""A cooldown on demand and a retime through the clients (sync and async) and `lrpilot
cooldown` / `lrpilot retime`, against a real service: the entry comes back as a model, refusals
as a ConflictError or one line."""

from __future__ import annotations

import asyncio

import pytest

from lrpilot_client import AsyncClient, Client, ConflictError, Cooled, Retimed, ValidationError
from tests.harness import LiveServer
from tests.helpers import lrpilot_cli, one_line


def test_cooldown_sync_async_and_cli(live_server: LiveServer) -> None:
    with Client(live_server.url) as lrpilot:
        for run_id in ("a", "b", "c"):
            lrpilot.create_run(run_id, "wsd", 1, {"num_warmup_steps": 0}, [0.1])
            lrpilot.observe(run_id, 10, 1.0)
        done = lrpilot.cooldown("a", 100, 50, shape="linear", reason="out of budget")
        assert isinstance(done, Cooled) and done.lrs == (0.1,) and done.decision is not None
        assert done.decision.action == "start_cooldown" and done.decision.step == 10
        assert done.decision.cooldown == {
            "at_step": 100, "steps": 50, "shape": "linear", "why": "out of budget"
        }  # fmt: skip
        assert lrpilot.lr_at("a", 125).lrs == (0.05,)
        with pytest.raises(ConflictError, match="no stable phase left"):
            lrpilot.cooldown("a", 120, 10)
        with pytest.raises(ValidationError):
            lrpilot.cooldown("a", 200, 0)
        plot = lrpilot.plot("a")
        assert (
            next(e.cooldown for e in plot.events if e.action == "start_cooldown")["at_step"] == 100
        )

    async def asynchronous() -> Cooled:
        async with AsyncClient(live_server.url) as ac:
            return await ac.cooldown("b", 60, 20, "1-sqrt")

    cooled = asyncio.run(asynchronous()).decision
    assert cooled is not None and cooled.cooldown is not None
    assert cooled.cooldown["shape"] == "1-sqrt"

    done = lrpilot_cli("cooldown", "c", "--at-step", "40", "--steps", "10", "--reason", "why not",
                       "--url", live_server.url)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "the decay starts at step 40 and lasts 10 steps" in one_line(done.output)
    again = lrpilot_cli("cooldown", "c", "--at-step", "5", "--steps", "10",
                        "--url", live_server.url)  # fmt: skip
    assert again.exit_code == 1
    assert "cooldown 'c' failed (409)" in one_line(again.output)
    assert "step 5 is already decided" in one_line(again.output)


def test_retime_sync_async_simulate_and_cli(live_server: LiveServer) -> None:
    with Client(live_server.url) as lrpilot:
        for run_id in ("a", "b", "c"):
            lrpilot.create_run(run_id, "cosine", 1, {"T_max": 1000}, [0.1])
            lrpilot.observe(run_id, 100, 1.0)
        what_if = lrpilot.simulate(
            run_id="a", retime={"at_step": 50, "horizon": 2000, "mode": "keep_fraction"}
        )
        assert what_if.differing == 1
        before = lrpilot.lr_at("a", 500).lrs
        done = lrpilot.retime("a", 500, 2000, "keep_fraction")
        assert isinstance(done, Retimed) and done.decision is not None
        assert done.decision.action == "retime"
        assert done.decision.retime == {"at_step": 500, "horizon": 2000, "mode": "keep_fraction"}
        assert lrpilot.lr_at("a", 500).lrs == before
        with pytest.raises(ConflictError, match="already decided"):
            lrpilot.retime("a", 100, 2000)

    async def asynchronous() -> Retimed:
        async with AsyncClient(live_server.url) as ac:
            return await ac.retime("b", 600, 900)

    retimed = asyncio.run(asynchronous()).decision
    assert retimed is not None and retimed.retime == {
        "at_step": 600, "horizon": 900, "mode": "keep_lr"
    }  # fmt: skip
    done = lrpilot_cli("retime", "c", "--at-step", "200", "--horizon", "3000",
                       "--mode", "keep_fraction", "--url", live_server.url)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "from step 200 the schedule ends (T_max) at step 3000" in one_line(done.output)
    again = lrpilot_cli("retime", "c", "--at-step", "50", "--horizon", "3000",
                        "--url", live_server.url)  # fmt: skip
    assert again.exit_code == 1 and "retime 'c' failed (409)" in one_line(again.output)
