"""Races as distributed jobs and deployments make them, against real servers and databases.

Every client is its own OS process (a rank of a training job is one), released by a barrier so
the requests land together; replicas are separate ``lrpilot serve`` processes on one database.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from lrpilot.canonical import float_token
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import run_spec, strict_json

postgres = pytest.mark.postgres
# fork: a worker is up in milliseconds, so the barrier, not process start-up, decides when the
# requests leave (the workers only run module-level functions and their own httpx clients).
CTX = multiprocessing.get_context("fork")


# ---------------------------------------------------------------------------------------------
# client processes


class ProcessFleet:
    """``fn(barrier, *args)`` in one OS process per args tuple; results in args order.

    ``barrier`` has one party per process, so a worker that waits on it before each request
    makes every process send that request at (nearly) the same moment.
    """

    def __init__(self, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> None:
        self.barrier = CTX.Barrier(len(args))
        self.queue: Any = CTX.Queue()
        self.procs = [
            CTX.Process(target=_call, args=(fn, i, self.barrier, self.queue, a), daemon=True)
            for i, a in enumerate(args)
        ]

    def start(self) -> ProcessFleet:
        for proc in self.procs:
            proc.start()
        return self

    def results(self, timeout: float = 300.0) -> list[Any]:
        """Every worker's return value; a worker that raised fails the test with its traceback."""
        out: dict[int, tuple[bool, Any]] = {}
        try:
            for _ in self.procs:
                index, ok, value = self.queue.get(timeout=timeout)
                out[index] = (ok, value)
        finally:
            for proc in self.procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
        failed = [value for ok, value in out.values() if not ok]
        assert not failed, "a client process failed:\n" + "\n".join(failed)
        return [out[i][1] for i in range(len(self.procs))]


def _call(
    fn: Callable[..., Any], index: int, barrier: Any, queue: Any, args: tuple[Any, ...]
) -> None:
    try:
        queue.put((index, True, fn(barrier, *args)))
    except BaseException:
        queue.put((index, False, f"client {index}: {traceback.format_exc()}"))


def _put_runs(barrier: Any, url: str, rounds: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """One rank's PUTs, each sent with every other rank's."""
    answers = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for run_id, spec in rounds:
            barrier.wait(timeout=120)
            r = http.put(f"/v1/runs/{run_id}", json=spec)
            answers.append((r.status_code, r.text))
    return answers


def _post_steps(barrier: Any, url: str, run_id: str, values: list[float]) -> list[Any]:
    """One rank of a job: every rank posts the same steps with the same value, in step order."""
    answers = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for step, value in enumerate(values, start=1):
            barrier.wait(timeout=120)
            body = {"step": step, "value": float_token(value)}  # NaN as strict JSON allows it
            r = http.post(f"/v1/runs/{run_id}/observations", json=body)
            answers.append((r.status_code, r.text))
    return answers


# ---------------------------------------------------------------------------------------------
# servers


@contextlib.contextmanager
def servers(url: str, count: int) -> Iterator[list[LiveServer]]:
    """``count`` replicas of ``lrpilot serve`` on one database, started at the same moment."""
    fleet = [LiveServer(url) for _ in range(count)]
    try:
        # Threads only launch and poll: each server is its own process, migrating on its own.
        with ThreadPoolExecutor(count) as pool:
            started = list(pool.map(lambda s: _try_start(s), fleet))
        failures = [f for f in started if f]
        assert not failures, f"{len(failures)} of {count} servers did not come up:\n" + "\n".join(
            failures
        )
        yield fleet
    finally:
        for server in fleet:
            server.stop()


def _try_start(server: LiveServer) -> str:
    try:
        server.start(timeout=90)
    except RuntimeError as exc:
        return str(exc)
    return ""


def database(backend: str, tmp_path: Path) -> str:
    """An empty (never migrated) database: the servers migrate it."""
    return empty_database(backend, tmp_path)


def logs(fleet: list[LiveServer]) -> str:
    return "\n".join(f"--- {s.url}\n{s.log_tail()}" for s in fleet)


# ---------------------------------------------------------------------------------------------
# (a) many ranks create one run


RANKS = 16
ROUNDS = 3  # fresh run ids, raced again: one round can miss the window by luck

TOPOLOGIES = [
    pytest.param("sqlite", 1, id="sqlite-one-server"),
    pytest.param("postgres", 1, id="postgres-one-server", marks=postgres),
    pytest.param("postgres", 2, id="postgres-two-replicas", marks=postgres),
]


@pytest.mark.parametrize(("backend", "replicas"), TOPOLOGIES)
def test_ranks_creating_one_run_all_get_it_exactly_one_201(
    backend: str, replicas: int, tmp_path: Path
) -> None:
    spec = run_spec({"patience": 2}, labels={"job": "race"})
    rounds = [(f"same-{i}", spec) for i in range(ROUNDS)]
    with servers(database(backend, tmp_path), replicas) as fleet:
        args = [(fleet[rank % replicas].url, rounds) for rank in range(RANKS)]
        answers = ProcessFleet(_put_runs, args).start().results()
        for r, (run_id, _) in enumerate(rounds):
            got = [answers[rank][r] for rank in range(RANKS)]
            statuses = Counter(status for status, _ in got)
            assert set(statuses) <= {200, 201}, f"{run_id}: {statuses}\n{got}\n{logs(fleet)}"
            assert statuses[201] == 1, f"{run_id}: {statuses} (exactly one rank creates it)"
            runs = {json.dumps(strict_json(text), sort_keys=True) for _, text in got}
            assert len(runs) == 1, f"{run_id}: ranks got different runs: {runs}"
            assert strict_json(got[0][1])["run_id"] == run_id


@pytest.mark.parametrize(("backend", "replicas"), TOPOLOGIES)
def test_ranks_creating_one_run_with_two_specs_losers_get_409_never_5xx(
    backend: str, replicas: int, tmp_path: Path
) -> None:
    specs = [run_spec(base_lrs=[0.1]), run_spec(base_lrs=[0.2])]
    with servers(database(backend, tmp_path), replicas) as fleet:
        args = [
            (fleet[rank % replicas].url, [(f"split-{i}", specs[rank % 2]) for i in range(ROUNDS)])
            for rank in range(RANKS)
        ]
        answers = ProcessFleet(_put_runs, args).start().results()
        for i in range(ROUNDS):
            got = [answers[rank][i] for rank in range(RANKS)]
            statuses = Counter(status for status, _ in got)
            assert set(statuses) <= {200, 201, 409}, f"split-{i}: {statuses}\n{got}\n{logs(fleet)}"
            assert statuses[201] == 1, f"split-{i}: {statuses}"
            winner = next(rank for rank, (status, _) in enumerate(got) if status == 201)
            won = strict_json(got[winner][1])
            for rank, (status, text) in enumerate(got):
                same_spec = rank % 2 == winner % 2
                if same_spec:
                    assert status in (200, 201), f"split-{i} rank {rank}: {status} {text}"
                    assert strict_json(text) == won
                else:
                    assert status == 409, f"split-{i} rank {rank} (other spec): {status} {text}"
                    assert "detail" in strict_json(text)


# ---------------------------------------------------------------------------------------------
# (b) replicas started together on an empty database


SERVES = 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_serves_started_together_on_an_empty_database_all_come_up(
    backend: str, tmp_path: Path
) -> None:
    for attempt in range(2):  # twice: the window between "no schema" and "migrated" is short
        (tmp_path / str(attempt)).mkdir()
        url = database(backend, tmp_path / str(attempt))
        with servers(url, SERVES) as fleet:
            # one database: a run made through one replica is seen through every other
            r = httpx.put(f"{fleet[0].url}/v1/runs/seen-{attempt}", json=run_spec(), timeout=30)
            assert r.status_code == 201, r.text
            for server in fleet[1:]:
                seen = httpx.get(f"{server.url}/v1/runs/seen-{attempt}", timeout=30)
                assert seen.status_code == 200, seen.text


# ---------------------------------------------------------------------------------------------
# (c) ranks of one job post the same steps through several replicas


STEPS = 12
# improves, stalls past patience 2 (a reduce), improves, stalls again, a NaN: every action path
VALUES = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, float("nan"), 0.7]

RANK_TOPOLOGIES = [
    pytest.param("sqlite", 1, id="sqlite-one-server"),
    pytest.param("postgres", 2, id="postgres-two-replicas", marks=postgres),
]


@pytest.mark.parametrize(("backend", "replicas"), RANK_TOPOLOGIES)
def test_ranks_posting_the_same_steps_all_get_the_one_decision_per_step(
    backend: str, replicas: int, tmp_path: Path
) -> None:
    assert len(VALUES) == STEPS
    run_id = "ranks"
    with servers(database(backend, tmp_path), replicas) as fleet:
        created = httpx.put(
            f"{fleet[0].url}/v1/runs/{run_id}", json=run_spec({"patience": 2}), timeout=30
        )
        assert created.status_code == 201, created.text
        args = [(fleet[rank % replicas].url, run_id, VALUES) for rank in range(RANKS)]
        answers = ProcessFleet(_post_steps, args).start().results()

        for step in range(1, STEPS + 1):
            got = [answers[rank][step - 1] for rank in range(RANKS)]
            statuses = Counter(status for status, _ in got)
            assert set(statuses) == {200}, f"step {step}: {statuses}\n{got}\n{logs(fleet)}"
            decisions = [strict_json(text) for _, text in got]
            keys = {(d["seq"], d["hash"]) for d in decisions}
            assert len(keys) == 1, f"step {step}: ranks got different decisions {keys}"
            assert all(d == decisions[0] for d in decisions), f"step {step}: decisions differ"

        log = httpx.get(
            f"{fleet[-1].url}/v1/runs/{run_id}/decisions", params={"limit": 1000}, timeout=30
        )
        assert log.status_code == 200, log.text
        items = strict_json(log.text)["items"]
        assert [d["step"] for d in items] == list(range(1, STEPS + 1)), "one decision a step"
        assert [d["seq"] for d in items] == list(range(1, STEPS + 1)), "seqs contiguous from 1"
        served = {d["step"]: d for d in items}
        for step in range(1, STEPS + 1):
            assert strict_json(answers[0][step - 1][1]) == served[step]
