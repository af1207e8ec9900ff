"""SIGKILL the real server under load, again and again: no acknowledged decision is ever lost.

Several client processes drive many runs the way a training job's client does: steps in order,
each request retried (same step, same value) on a connection error or a 503 until it gets its
200. Meanwhile the server process is killed with SIGKILL at seeded random moments and restarted
on the same database. Afterwards every decision a client was answered 200 for must be in the
decision log byte for byte, and every run's hash chain must verify.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lrpilot.canonical import canonical_json
from lrpilot.entries import verify_chain
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import run_spec, strict_json
from tests.operations.test_races import CTX, ProcessFleet

CLIENTS = 4
RUNS_PER_CLIENT = 5
# Each kill costs a server start (~4 s of CI): eight seeded moments still cut requests in every
# phase (the retried count checks that kills met requests), as twelve did.
KILLS = 8
# Reproducible kill moments; set LRPILOT_KILL_SEED to replay another schedule.
SEED = int(os.environ.get("LRPILOT_KILL_SEED", "20261126"))
# Up to this long after a server is ready before it is killed: short enough that kills land in
# every phase of a request (parsing, waiting for the lock, committing, answering).
MAX_DELAY_S = 0.6
# A client gives up on a request it could not get answered for this long (the server is down
# only while it restarts).
GIVE_UP_S = 60.0


def value_at(run_id: str, step: int) -> float:
    """The metric a run reports at a step: the same on every retry, with plateaus and reductions."""
    rng = random.Random(f"{run_id}:{step}")
    return round(1.0 / (1 + step // 4) + rng.choice([0.0, 0.0, 0.01, 0.05]), 6)


def _send(
    http: httpx.Client, method: str, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, int]:
    """A request as a resilient client sends it: retried until it is answered, 503 included.

    Also returns how many attempts failed (refused, cut off by a kill, 503).
    """
    deadline = time.monotonic() + GIVE_UP_S
    failed = 0
    while True:
        try:
            r = http.request(method, path, json=body)
        except httpx.TransportError:  # refused while down, reset by the kill, timed out
            r = None
        if r is not None and r.status_code != 503:
            if r.status_code not in (200, 201):
                raise AssertionError(f"{method} {path} {body}: {r.status_code} {r.text}")
            return r, failed
        failed += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {path}: no answer for {GIVE_UP_S} s")
        time.sleep(0.02)


def _client(
    barrier: Any, url: str, run_ids: list[str], stop: Any
) -> tuple[list[tuple[str, int, bytes]], int]:
    """One client process: its runs, step by step.

    Returns every acknowledged decision and the number of requests that had to be retried.
    """
    acks: list[tuple[str, int, bytes]] = []
    retried = 0
    with httpx.Client(base_url=url, timeout=10) as http:
        for run_id in run_ids:
            spec = run_spec({"patience": 2, "cooldown": 1})
            retried += _send(http, "PUT", f"/v1/runs/{run_id}", spec)[1] > 0
        barrier.wait(timeout=120)
        step = 0
        while not stop.is_set():
            step += 1
            for run_id in run_ids:
                body = {"step": step, "value": value_at(run_id, step)}
                r, failed = _send(http, "POST", f"/v1/runs/{run_id}/observations", body)
                acks.append((run_id, step, r.content))
                retried += failed > 0
    return acks, retried


def decision_log(server: LiveServer, run_id: str) -> tuple[list[dict[str, Any]], bytes]:
    """A run's whole decision log, parsed, and every page's raw bytes (what the server sent)."""
    items: list[dict[str, Any]] = []
    raw = b""
    after: int | None = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while after is not None:
            r = http.get(f"/v1/runs/{run_id}/decisions", params={"after": after, "limit": 1000})
            assert r.status_code == 200, r.text
            page = strict_json(r.text)
            items += page["items"]
            raw += r.content
            after = page["next"]
    return items, raw


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_decisions_survive_sigkill_under_load(backend: str, tmp_path: Path) -> None:
    url = empty_database(backend, tmp_path)
    rng = random.Random(SEED)
    run_ids = [[f"kill-{c}-{r}" for r in range(RUNS_PER_CLIENT)] for c in range(CLIENTS)]
    server = LiveServer(url).start()
    stop = CTX.Event()
    fleet = ProcessFleet(_client, [(server.url, ids, stop) for ids in run_ids]).start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.0, MAX_DELAY_S))
            server.kill()
            server.start(timeout=60)
        time.sleep(0.3)  # the clients' retries after the last restart get their answers
        stop.set()
        results = fleet.results(timeout=120)
        acks = [ack for client_acks, _ in results for ack in client_acks]
        retried = sum(r for _, r in results)
    finally:
        stop.set()
        server.stop()

    server.start(timeout=60)  # a clean start on what the kills left
    try:
        by_run: dict[str, list[tuple[int, bytes]]] = {}
        for run_id, step, body in acks:
            by_run.setdefault(run_id, []).append((step, body))
        checked = 0
        for run_id in (i for ids in run_ids for i in ids):
            items, raw = decision_log(server, run_id)
            report = verify_chain(items)
            assert report.ok, f"{run_id}: chain broken at {report.first_break} ({backend})"
            by_seq = {d["seq"]: d for d in items}
            assert [d["step"] for d in items] == sorted({d["step"] for d in items}), run_id
            for step, body in by_run.get(run_id, []):
                decision = strict_json(body)
                stored = by_seq.get(decision["seq"])
                assert stored is not None, (
                    f"{run_id} step {step}: acknowledged seq {decision['seq']} lost after "
                    f"{KILLS} kills ({backend}, {len(acks)} acknowledged decisions)"
                )
                assert canonical_json(stored).encode() == body, f"{run_id} step {step} differs"
                assert body in raw, f"{run_id} step {step}: not served byte for byte"
                checked += 1
            run = httpx.get(f"{server.url}/v1/runs/{run_id}", timeout=30)
            assert strict_json(run.text)["last_seq"] == len(items), run_id
    finally:
        server.stop()

    runs = CLIENTS * RUNS_PER_CLIENT
    print(
        f"\nkill test ({backend}): {KILLS} SIGKILLs survived, {checked} acknowledged decisions "
        f"checked byte for byte across {runs} runs, every chain verified; {retried} requests "
        f"were cut off or refused by a kill and retried (seed {SEED})"
    )
    assert retried >= KILLS, f"{backend}: only {retried} requests met a kill: not under load"
    assert checked == len(acks) > KILLS * CLIENTS, (
        f"{backend}: checked {checked} of {len(acks)} acknowledged decisions over {KILLS} kills"
    )
