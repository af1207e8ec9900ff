"""The callbacks acknowledge the lrs they applied (docs/agreement.md): a real two-process
Lightning DDP job (tests/client/lightning_rank_job.py: gloo on 127.0.0.1) and a two-process
Keras job (tests/client/keras_rank_job.py), in leader mode, each rank posting the same synced
metric with its acknowledgement, against a real uvicorn on SQLite and PostgreSQL. The Lightning
callback takes each process's rank from the Trainer; the Keras one is given `as_rank`."""

from __future__ import annotations

import socket
import struct
from typing import Any

import httpx

from tests.domain.test_agreement import check_agreement, ranks, servers
from tests.harness import LiveServer
from tests.helpers import run_spec

__all__ = ["servers"]  # (the fixture, shared with tests/domain/test_agreement.py)


def runs(servers: list[LiveServer], groups: int = 1) -> list[dict[str, Any]]:
    """The runs "agree" and "drift" (leader mode: not aggregated; `groups` param groups) on each
    server, as jobs in which rank 1 of "drift" doubles its lr from step 20 on, behind the
    callback's back."""
    jobs = []
    for server in servers:
        spec = run_spec({"patience": 1}, [0.1] * groups)
        for run in ("agree", "drift"):
            r = httpx.put(f"{server.url}/v1/runs/{run}", json=spec)
            assert r.status_code == 201, r.text
        jobs += [{"url": server.url, "run": "agree", "tamper": None},
                 {"url": server.url, "run": "drift", "tamper": [20, 1]}]  # fmt: skip
    return jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_lightning_rank_applying_other_lrs_is_flagged_and_the_others_agree(
    servers: list[LiveServer],
) -> None:
    jobs = runs(servers)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    answers = ranks(2, jobs, "tests.client.lightning_rank_job", env)
    assert {tuple(a["as_rank"]) for a in answers} == {(0, 2), (1, 2)}  # from the Trainer
    first = sorted((a["run"], a["rank"], a["step"]) for a in answers if a["url"] == servers[0].url)
    assert first == [
        (run, rank, step) for run in ("agree", "drift") for rank in (0, 1) for step in (10, 20, 30)
    ]
    for server in servers:
        check_agreement(server.url, [a for a in answers if a["url"] == server.url], leader=True)


def f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def test_a_keras_rank_applying_other_lrs_is_flagged_and_the_others_agree(
    servers: list[LiveServer],
) -> None:
    env = {"KERAS_BACKEND": "torch", "MASTER_PORT": str(free_port())}
    answers = ranks(2, runs(servers), "tests.client.keras_rank_job", env)
    for server in servers:
        # keras holds its lr in float32: rank 1 trained step 20 with twice the run's lr so held
        mine = [a for a in answers if a["url"] == server.url]
        check_agreement(server.url, mine, lambda x: 2 * f32(x), leader=True)


def test_a_transformers_rank_applying_other_lrs_is_flagged_and_the_others_agree(
    servers: list[LiveServer],
) -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    # (the Trainer's optimizer has two groups: with and without weight decay)
    answers = ranks(2, runs(servers, groups=2), "tests.client.hf_rank_job", env)
    assert {tuple(a["as_rank"]) for a in answers} == {(0, 2), (1, 2)}  # from the arguments
    for server in servers:
        check_agreement(server.url, [a for a in answers if a["url"] == server.url], leader=True)
