"""The client when the service is away (issue 8): a training loop never sees the outage.

Everything here runs against the real service under uvicorn (`LiveServer`), never a mock of it.
The service goes away in two real ways: the server process is killed with SIGKILL (and started
again on the same database file), or an sqlite3 connection holds the database's write lock so
that every write is answered 503 with `Retry-After: 1` (as in operations/test_adversarial.py).
To see which requests the client made, some tests give it `Recording`: httpx's own network
transport, noting each request before sending it.

The rule under test: in "buffer" mode an observation that cannot be sent is buffered and
answered provisionally with the last decided rates; the buffered observations go out in order
once the service answers, and the run's decision log ends up equal to that of a run that never
saw the outage.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lrpilot_client import (
    AsyncClient,
    Client,
    ConflictError,
    Decision,
    LrpilotError,
    PendingObservation,
    ServiceUnavailableError,
)
from tests.harness import DatabaseLock, LiveServer, free_port
from tests.helpers import strict_json

PARAMS = {"patience": 2, "factor": 0.5}
BASE_LRS = [0.1, 0.01]
# What must be equal between the log of a run that saw an outage and one that did not (not
# created_at, hash or client: those differ between any two runs).
COMPARED = ("seq", "step", "value", "lrs", "previous_lrs", "action", "reason", "state")
DB_TIMEOUT_S = 0.3  # a locked database is answered 503 after this (the lock tests' server)
RETRY_AFTER_S = 1.0  # what the service's 503s say


def value_at(step: int) -> float:
    """The validation loss a job sees at `step`: improving spells and plateaus, so that plateau
    reduces the rates again and again (before, during and after the outages below)."""
    rng = random.Random(f"resilience:{step}")
    return round(1.0 / (1 + step // 8) + rng.choice([0.0, 0.0, 0.01, 0.03]), 6)


def decision_log(url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's whole log, as GET /v1/runs/{id}/decisions serves it."""
    items: list[dict[str, Any]] = []
    after: int | None = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        while after is not None:
            r = http.get(f"/v1/runs/{run_id}/decisions", params={"after": after, "limit": 1000})
            assert r.status_code == 200, r.text
            page = strict_json(r.text)
            items += page["items"]
            after = page["next"]
    return items


def comparable(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: d[key] for key in COMPARED} for d in log]


def reference_log(url: str, run_id: str, steps: range) -> list[dict[str, Any]]:
    """The log of a run of the same spec fed the same stream, with no outage."""
    with Client(url, on_unavailable="raise") as c:
        c.create_run(run_id, params=PARAMS, base_lrs=BASE_LRS)
        for step in steps:
            c.observe(run_id, step, value_at(step))
    return decision_log(url, run_id)


def quick(url: str, **options: Any) -> Client:
    """A buffering client with short waits (an outage is noticed in a fraction of a second)."""
    settings: dict[str, Any] = {"timeout": 5.0, "retries": 2, "backoff": 0.05, "max_backoff": 0.2}
    return Client(url, **{**settings, "rng": random.Random(0), **options})


class Recording(httpx.HTTPTransport):
    """httpx's network transport, noting (method, path, JSON body) of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        return super().handle_request(request)

    def posted_steps(self, run_id: str, since: int = 0) -> list[int]:
        key = ("POST", f"/v1/runs/{run_id}/observations")
        return [body["step"] for method, path, body in self.sent[since:] if (method, path) == key]


@pytest.fixture(scope="module")
def lockable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    """One server for the tests that lock its SQLite file (each uses its own runs)."""
    db = tmp_path_factory.mktemp("lockable") / "lrpilot.db"
    server = LiveServer(f"sqlite:///{db}", env={"LRPILOT_DB_TIMEOUT_S": str(DB_TIMEOUT_S)})
    server.start()
    yield server, db
    server.stop()


def start_run(client: Client, run_id: str, steps: range) -> Decision:
    """Create the run and observe `steps`; the last decision."""
    client.create_run(run_id, params=PARAMS, base_lrs=BASE_LRS)
    decisions = [client.observe(run_id, step, value_at(step)) for step in steps]
    assert not any(d.provisional for d in decisions)
    return decisions[-1]


def sleep_past_retry_after(failed_at: float) -> None:
    """Wait until the Retry-After of a 503 answered by `failed_at` has passed."""
    time.sleep(max(0.0, failed_at + RETRY_AFTER_S + 0.1 - time.monotonic()))


# --- the required one: SIGKILL mid-run -----------------------------------------------------

STEPS = 60
KILL_AT = 25  # the server is SIGKILLed before this step is observed ...
RESTART_AT = 35  # ... and started again (same port, same database file) before this one


def test_training_goes_on_through_a_sigkill_and_the_log_is_as_without_it(tmp_path: Path) -> None:
    server = LiveServer(f"sqlite:///{tmp_path / 'killed.db'}").start()
    param_groups = [{"lr": lr} for lr in BASE_LRS]  # what a torch optimizer would hold
    used: list[tuple[int, bool, tuple[float, ...]]] = []  # step, provisional, the lrs used
    raised: list[tuple[int, BaseException]] = []
    try:
        with quick(server.url) as lrpilot:
            lrpilot.create_run("job", params=PARAMS, base_lrs=BASE_LRS)
            for step in range(STEPS):
                if step == KILL_AT:
                    server.kill()
                if step == RESTART_AT:
                    server.start()
                # ... one step of training with the lrs in param_groups, then evaluate ...
                try:
                    decision = lrpilot.observe("job", step=step, value=value_at(step))
                except LrpilotError as exc:  # must never happen: the check is below
                    raised.append((step, exc))
                    continue
                for group, lr in zip(param_groups, decision.lrs, strict=True):
                    group["lr"] = lr
                used.append((step, decision.provisional, decision.lrs))

                if step == KILL_AT + 3:  # the reads answer the last known rates meanwhile
                    held = next(lrs for _, p, lrs in reversed(used) if not p)
                    started = time.monotonic()
                    assert lrpilot.offline
                    assert lrpilot.lrs("job") == list(held)
                    assert lrpilot.lr("job") == held[0]
                    in_force = lrpilot.lrs_in_force("job", step)
                    assert in_force.provisional and in_force.lrs == held
                    ahead = lrpilot.lrs_ahead("job", step, 5)
                    assert ahead.provisional and ahead.lrs == (held,) * 5
                    assert ahead.certain_through is None
                    # (a generous bound: a read that waited on the dead service would wait
                    # out the client's timeout, 5 s, and its retries)
                    assert time.monotonic() - started < 5.0
                    assert [p.step for p in lrpilot.pending] == list(range(KILL_AT, step + 1))

            assert lrpilot.flush(timeout=15) == 0
            assert lrpilot.pending == () and not lrpilot.offline
            head = lrpilot.head_hash("job")

        assert not raised, f"observe raised into the training loop: {raised}"
        got = decision_log(server.url, "job")
        want = reference_log(server.url, "uninterrupted", range(STEPS))
    finally:
        server.stop()

    # The log is the log of a run that never saw the outage: every step once, in order.
    assert [d["step"] for d in got] == list(range(STEPS))
    assert comparable(got) == comparable(want)
    assert got[-1]["hash"] == head

    # While the service was down the job kept the rates last decided, step after step ...
    down = [step for step, provisional, _ in used if provisional]
    assert set(range(KILL_AT, RESTART_AT)) <= set(down)
    last_decided: tuple[float, ...] | None = None
    for step, provisional, lrs in used:
        if provisional:
            assert lrs == last_decided, f"step {step}: used {lrs}, last decided {last_decided}"
        else:
            last_decided = lrs
    # ... although the service decided reductions for some of those steps once it had them,
    reductions = [d["step"] for d in want if d["action"] == "reduce"]
    assert any(KILL_AT <= s < RESTART_AT for s in reductions)
    assert any(s < KILL_AT for s in reductions) and any(s >= RESTART_AT for s in reductions)
    # ... and once it was back, every answer was the service's, with its rates for that step.
    decided = {d["step"]: tuple(d["lrs"]) for d in want}
    assert not used[-1][1]
    for step, provisional, lrs in used:
        if not provisional:
            assert lrs == decided[step], step
    assert param_groups == [{"lr": lr} for lr in want[-1]["lrs"]]


def test_async_client_goes_on_through_a_sigkill(tmp_path: Path) -> None:
    server = LiveServer(f"sqlite:///{tmp_path / 'killed-async.db'}").start()
    steps, kill_at, restart_at = range(24), 10, 15

    async def train() -> list[Decision]:
        async with AsyncClient(
            server.url, timeout=5.0, retries=2, backoff=0.05, max_backoff=0.2
        ) as lrpilot:
            await lrpilot.create_run("async-job", params=PARAMS, base_lrs=BASE_LRS)
            decisions = []
            for step in steps:
                if step == kill_at:
                    server.kill()
                if step == restart_at:
                    server.start()
                decisions.append(await lrpilot.observe("async-job", step, value_at(step)))
                if step == kill_at + 1:
                    assert lrpilot.offline
                    assert await lrpilot.lrs("async-job") == list(decisions[kill_at - 1].lrs)
                    assert (await lrpilot.lrs_in_force("async-job")).provisional
            assert await lrpilot.flush(timeout=15) == 0
            assert lrpilot.pending == ()
            return decisions

    try:
        decisions = asyncio.run(train())
        got = decision_log(server.url, "async-job")
        want = reference_log(server.url, "async-uninterrupted", steps)
    finally:
        server.stop()
    assert comparable(got) == comparable(want)
    held = decisions[kill_at - 1].lrs
    assert all(d.provisional for d in decisions[kill_at:restart_at])
    assert all(d.lrs == held and d.action == "hold" for d in decisions if d.provisional)
    assert not decisions[-1].provisional


def test_async_client_has_the_api_of_client() -> None:
    def api(cls: type) -> dict[str, list[str]]:
        names = {n for n in dir(cls) if not n.startswith("_") and n != "aclose"}
        out = {}
        for name in names:
            member = inspect.getattr_static(cls, name)
            if isinstance(member, property):
                out[name] = ["property"]
            elif callable(member):
                out[name] = list(inspect.signature(member).parameters)
        return out

    assert api(AsyncClient) == api(Client)
    assert {"flush", "pending", "dropped", "offline", "on_unavailable"} <= set(api(Client))
    for name in ("observe", "flush", "lrs", "lr", "lrs_in_force", "lrs_ahead", "close"):
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


# --- Retry-After, and the "raise" mode -----------------------------------------------------


def test_retry_after_is_honoured_in_both_modes(lockable: tuple[LiveServer, Path]) -> None:
    server, db = lockable
    rec = Recording()
    # max_backoff 5 s: this client would sleep through a Retry-After of 1 s in "raise" mode
    with quick(server.url, transport=rec, max_backoff=5.0) as lrpilot:
        last = start_run(lrpilot, "retry-after", range(3))
        with DatabaseLock(db) as lock:
            # "raise" mode: each retry waits at least the 503's Retry-After, then it raises as
            # it always did.
            with Client(
                server.url, on_unavailable="raise", retries=2, backoff=0.01, max_backoff=2.0
            ) as strict:
                started = time.monotonic()
                with pytest.raises(ServiceUnavailableError) as info:
                    strict.observe("retry-after", 3, value_at(3))
                took = time.monotonic() - started
            assert info.value.status_code == 503 and info.value.attempts == 3
            assert info.value.retry_after == RETRY_AFTER_S
            assert took >= 2 * RETRY_AFTER_S
            # A Retry-After beyond max_backoff: it gives up at once rather than retry sooner.
            impatient = Client(
                server.url, on_unavailable="raise", retries=5, backoff=0.01, max_backoff=0.5
            )
            with impatient, pytest.raises(ServiceUnavailableError) as info:
                impatient.observe("retry-after", 3, value_at(3))
            assert info.value.attempts == 1 and info.value.retry_after == RETRY_AFTER_S

            # "buffer" mode: one request, answered 503: provisional at once, no wait in the call.
            before = len(rec.sent)
            started = time.monotonic()
            d3 = lrpilot.observe("retry-after", 3, value_at(3))
            failed_at = time.monotonic()
            assert failed_at - started < DB_TIMEOUT_S + RETRY_AFTER_S  # not waited out
            assert d3.provisional and d3.action == "hold" and d3.lrs == last.lrs
            assert d3.seq == 0 and d3.hash == "" and "lrpilot unreachable" in d3.reason
            assert rec.posted_steps("retry-after", before) == [3]
            # Until Retry-After has passed no call makes a request (counted below), nor waits,
            d4 = lrpilot.observe("retry-after", 4, value_at(4))
            assert lrpilot.lrs("retry-after") == list(last.lrs)
            lock.release()
        # even with the service writable again and the backoff (0.05 s) long past.
        time.sleep(0.25)
        d5 = lrpilot.observe("retry-after", 5, value_at(5))
        # no call waited out Retry-After (nor could the count below pass without it)
        assert time.monotonic() - failed_at < RETRY_AFTER_S - 0.1
        assert d4.provisional and d5.provisional
        assert len(rec.sent) == before + 1, rec.sent[before:]
        sleep_past_retry_after(failed_at)
        d6 = lrpilot.observe("retry-after", 6, value_at(6))
        assert not d6.provisional and d6.seq == 7
        assert rec.posted_steps("retry-after", before) == [3, 3, 4, 5, 6]
    assert [d["step"] for d in decision_log(server.url, "retry-after")] == list(range(7))


# --- order, and the outbox's rules ---------------------------------------------------------


def test_buffered_observations_go_out_in_order_once_each(
    lockable: tuple[LiveServer, Path],
) -> None:
    server, db = lockable
    rec = Recording()
    with quick(server.url, transport=rec) as lrpilot:
        start_run(lrpilot, "ordered", range(2))
        before = len(rec.sent)
        with DatabaseLock(db):
            for step in range(2, 9):
                assert lrpilot.observe("ordered", step, value_at(step)).provisional
                if step == 5:  # the job retries a step: buffered once
                    assert lrpilot.observe("ordered", step, value_at(step)).provisional
            failed_at = time.monotonic()
        assert [p.step for p in lrpilot.pending] == list(range(2, 9))
        assert all(isinstance(p, PendingObservation) for p in lrpilot.pending)
        sleep_past_retry_after(failed_at)
        assert lrpilot.flush(timeout=10) == 0
        head = lrpilot.head_hash("ordered")
    posted = rec.posted_steps("ordered", before)
    assert posted[0] == 2 and posted[1:] == list(range(2, 9)), posted  # a try, then in order
    log = decision_log(server.url, "ordered")
    assert [d["step"] for d in log] == list(range(9))  # every step once
    assert log[-1]["hash"] == head
    assert comparable(log) == comparable(reference_log(server.url, "ordered-ref", range(9)))


def test_a_full_outbox_drops_new_observations_and_keeps_the_order(
    lockable: tuple[LiveServer, Path],
) -> None:
    server, db = lockable
    with quick(server.url, outbox_size=3) as lrpilot:
        start_run(lrpilot, "full", range(1))
        with DatabaseLock(db):
            answers = [lrpilot.observe("full", step, value_at(step)) for step in range(1, 6)]
            failed_at = time.monotonic()
        assert all(d.provisional for d in answers)
        assert "dropped" in answers[3].reason and "dropped" in answers[4].reason
        assert "buffered" in answers[2].reason
        assert [p.step for p in lrpilot.pending] == [1, 2, 3] and lrpilot.dropped == 2
        sleep_past_retry_after(failed_at)
        assert lrpilot.flush(timeout=10) == 0
        assert not lrpilot.observe("full", 6, value_at(6)).provisional
    assert [d["step"] for d in decision_log(server.url, "full")] == [0, 1, 2, 3, 6]


def test_the_outbox_file_survives_the_process(
    lockable: tuple[LiveServer, Path], tmp_path: Path
) -> None:
    server, db = lockable
    outbox = tmp_path / "outbox.jsonl"
    crashed = {"host": "node-7", "process": 1234}
    with quick(server.url, outbox_path=outbox, identity=crashed, close_timeout=0) as first:
        start_run(first, "persisted", range(1))
        with DatabaseLock(db):
            for step in range(1, 4):
                assert first.observe("persisted", step, value_at(step)).provisional
    # close_timeout=0: the process exits without waiting; its observations stay in the file.
    assert len(outbox.read_text().splitlines()) == 3
    with outbox.open("a") as f:
        f.write('{"run_id": "persisted", "st')  # a crash in the middle of a write

    with quick(server.url, outbox_path=outbox) as second:
        assert [(p.run_id, p.step) for p in second.pending] == [("persisted", s) for s in (1, 2, 3)]
        assert all(p.client == crashed for p in second.pending)
        assert second.flush(timeout=10) == 0
    assert not outbox.exists()
    log = decision_log(server.url, "persisted")
    assert [d["step"] for d in log] == [0, 1, 2, 3]
    assert [d["client"] for d in log[1:]] == [crashed] * 3  # sent as the first process made them


def test_a_refused_buffered_observation_is_raised_by_the_next_call(
    lockable: tuple[LiveServer, Path],
) -> None:
    server, db = lockable
    with quick(server.url) as lrpilot:
        start_run(lrpilot, "refused", range(1))
        with DatabaseLock(db):
            assert lrpilot.observe("refused", 1, 0.5).provisional
            failed_at = time.monotonic()
            # a rewind must not overtake a buffered observation of its run
            with pytest.raises(ServiceUnavailableError, match="buffered"):
                lrpilot.rewind("refused", 0)
        with Client(server.url, on_unavailable="raise") as other:  # another writer got there first
            other.observe("refused", 1, 0.9)
        sleep_past_retry_after(failed_at)
        with pytest.raises(ConflictError) as info:
            lrpilot.observe("refused", 2, 0.4)
        assert info.value.status_code == 409
        assert info.value.observation is not None and info.value.observation.step == 1
        assert "buffered observation" in str(info.value)
        # The refused one left the outbox; the call that raised did not take its own: call again.
        assert lrpilot.pending == ()
        decision = lrpilot.observe("refused", 2, 0.4)
        assert not decision.provisional and decision.step == 2
    log = decision_log(server.url, "refused")
    assert [(d["step"], d["value"]) for d in log] == [(0, value_at(0)), (1, 0.9), (2, 0.4)]


def test_close_sends_what_is_buffered_and_is_bounded(lockable: tuple[LiveServer, Path]) -> None:
    server, db = lockable
    with quick(server.url) as lrpilot:
        start_run(lrpilot, "closing", range(1))
        with DatabaseLock(db):
            assert lrpilot.observe("closing", 1, value_at(1)).provisional
    # leaving the block closed the client: it waited out Retry-After and sent step 1
    assert [d["step"] for d in decision_log(server.url, "closing")] == [0, 1]

    with quick(server.url, close_timeout=0.5) as lrpilot:
        start_run(lrpilot, "closing-down", range(1))
        with DatabaseLock(db):
            assert lrpilot.observe("closing-down", 1, value_at(1)).provisional
            started = time.monotonic()
            lrpilot.close()  # the service stays locked: close gives up after close_timeout
            # (generous: without close_timeout, close would wait as long as the lock is held)
            assert time.monotonic() - started < 10.0


def test_nothing_known_of_a_run_means_no_stand_in() -> None:
    with quick(f"http://127.0.0.1:{free_port()}") as lrpilot:
        with pytest.raises(ServiceUnavailableError) as info:
            lrpilot.observe("never-seen", 1, 1.0)
        assert info.value.attempts == 3 and "no rates" in str(info.value)
        assert lrpilot.pending == ()  # raised: not taken
        with pytest.raises(ServiceUnavailableError):
            lrpilot.lrs("never-seen")
        with pytest.raises(ServiceUnavailableError):
            lrpilot.get_run("never-seen")  # no stand-in for the other calls either
