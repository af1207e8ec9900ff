"""The ranks of a distributed job as they really post: duplicates, retries and out-of-order
arrivals, from separate OS processes, against real servers (one SQLite server, one PostgreSQL
server, two replicas on one PostgreSQL). However the reports arrive, the run ends with exactly
one decision a step, contiguous seqs, a chain that verifies (through the service and offline,
from its export), and every process saw the same bytes for a step's decision.

The client processes, the servers and the databases are test_races.py's (``ProcessFleet``,
``servers``, ``database``, ``TOPOLOGIES``). Each workload is planned up front from a seeded
random generator, and each worker records what it sent and when (``time.monotonic`` is one
clock for every process on the machine), so the tests check that the duplicates, the abandoned
requests and the late arrivals really happened, not only that nothing broke.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from lrpilot.audit.verify import check_bundle
from lrpilot.canonical import float_token
from tests.harness import LiveServer
from tests.helpers import plateau_stream, raw_items, run_spec, strict_json
from tests.operations.test_races import TOPOLOGIES, ProcessFleet, database, logs, servers

# one thing a worker did: (kind, step, sent_at, answered_at, status, body); kind is "report"
# (a rank's report, or a leader-mode post), "duplicate" (the same, sent concurrently), "twin"
# (the same report from another process), "late" (a decided step's report sent again),
# "abandoned" (given up client-side while the step waited), "answered" (meant to be abandoned,
# but it was answered: the tests fail on it)
Event = tuple[str, int, float, float, int | None, str | None]


def _send(http: httpx.Client, path: str, kind: str, step: int, body: dict[str, Any]) -> Event:
    sent = time.monotonic()
    r = http.post(path, json=body)
    return (kind, step, sent, time.monotonic(), r.status_code, r.text)


def _send_together(
    clients: list[httpx.Client], path: str, jobs: list[tuple[str, int, dict[str, Any]]]
) -> list[Event]:
    """``jobs`` (kind, step, body) in flight at once, each on its own client (connection)."""
    if len(jobs) == 1:
        return [_send(clients[0], path, *jobs[0])]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [
            pool.submit(_send, clients[i], path, kind, step, body)
            for i, (kind, step, body) in enumerate(jobs)
        ]
        return [f.result() for f in futures]


def _clients(urls: list[str]) -> list[httpx.Client]:
    """One client a job: job 0 on the process's own replica, the others on the next one (a
    retry behind a load balancer lands anywhere)."""
    return [httpx.Client(base_url=urls[min(i, 1) % len(urls)], timeout=60) for i in range(3)]


def _by_step(answers: list[list[Event]]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = defaultdict(list)
    for events in answers:
        for event in events:
            out[event[1]].append(event)
    return out


def _decision_log(url: str, run_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's decisions, parsed and as the service wrote each one."""
    r = httpx.get(f"{url}/v1/runs/{run_id}/decisions", params={"limit": 1000}, timeout=30)
    assert r.status_code == 200, r.text
    page = strict_json(r.text)
    assert page["next"] is None, page["next"]
    return page["items"], raw_items(r.text)


def _check_log(
    url: str,
    run_id: str,
    by_step: dict[int, list[Event]],
    steps: list[int],
    fleet: list[LiveServer],
) -> tuple[list[dict[str, Any]], list[str]]:
    """One decision a step, contiguous seqs, every answer for a step the logged decision's
    bytes, and a chain that verifies through the service and offline from its export."""
    items, raw = _decision_log(url, run_id)
    assert [d["step"] for d in items] == steps, "exactly one decision a step, in step order"
    assert [d["seq"] for d in items] == list(range(1, len(steps) + 1)), "seqs contiguous from 1"
    assert [d["prev_hash"] for d in items[1:]] == [d["hash"] for d in items[:-1]]
    for step, text in zip(steps, raw, strict=True):
        seen = Counter(body for kind, _, _, _, _, body in by_step[step] if kind != "abandoned")
        assert list(seen) == [text], (
            f"step {step}: the processes got {len(seen)} different bodies, not the logged "
            f"decision's bytes:\n{text}\n{list(seen)}\n{logs(fleet)}"
        )

    verified = httpx.post(f"{url}/v1/runs/{run_id}/verify", json={}, timeout=60)
    assert verified.status_code == 200, f"{verified.text}\n{_tails(fleet)}"
    report = strict_json(verified.text)
    assert report["ok"] is True, report
    assert report["count"] == len(steps) and report["head_hash"] == items[-1]["hash"], report

    bundle = httpx.get(f"{url}/v1/runs/{run_id}/export", timeout=60)
    assert bundle.status_code == 200, f"{bundle.text}\n{_tails(fleet)}"
    lines = [line.encode() for line in bundle.text.splitlines()]
    checked = check_bundle(lambda: lines, head=items[-1]["hash"])
    assert checked.ok, checked.report.mismatch
    assert checked.report.count == len(steps)
    return items, raw


def _check_refusals(
    fleet: list[LiveServer], run_id: str, decided: dict[str, Any], change: dict[str, Any], raw: str
) -> None:
    """What stays refused after the races (409, the log unchanged): another value for the
    decided step of ``decided`` (a post of it), and a step below the last decided one that was
    never decided; ``decided`` itself is still its decision, ``raw``."""
    url = fleet[-1].url
    before = _decision_log(url, run_id)[1]
    path = f"{url}/v1/runs/{run_id}/observations"
    other = httpx.post(path, json={**decided, **change}, timeout=30)
    assert other.status_code == 409, other.text
    assert "detail" in strict_json(other.text)
    skipped = httpx.post(path, json={**decided, "step": decided["step"] + 5}, timeout=30)
    assert skipped.status_code == 409, skipped.text
    assert "never decided" in strict_json(skipped.text)["detail"], skipped.text
    again = httpx.post(path, json=decided, timeout=30)
    assert again.status_code == 200 and again.text == raw, again.text
    assert _decision_log(fleet[0].url, run_id)[1] == before, "the log changed"


def _simulated(url: str, spec: dict[str, Any], steps: list[int], values: list[Any]) -> list[Any]:
    """(action, lrs) a step, as /v1/simulate decides the stream: what the run must have done."""
    r = httpx.post(
        f"{url}/v1/simulate",
        json={
            "policy": spec["policy"],
            "base_lrs": spec["base_lrs"],
            "values": values,
            "steps": steps,
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return [(d["action"], d["lrs"]) for d in strict_json(r.text)["items"]]


def _tails(fleet: list[LiveServer]) -> str:
    """The servers' logs, long enough for a traceback."""
    return "\n".join(f"--- {s.url}\n{s.log_tail(120)}" for s in fleet)


def _no_server_error(answers: list[list[Event]], fleet: list[LiveServer]) -> None:
    errors = [e for events in answers for e in events if e[4] is not None and e[4] >= 500]
    assert not errors, f"{len(errors)} answers were 5xx: {errors[:3]}\n{logs(fleet)}"


# ---------------------------------------------------------------------------------------------
# aggregated mode: every rank reports its own value; one decision a step from the weighted mean


AGG_RANKS = 8
AGG_STEPS = 10  # len(AGG_LEVELS)
TWINS = (0, 5)  # ranks whose reports a second process sends too (a rank retried from elsewhere)
ABANDON_S = 0.3  # how long a retrying rank waits before it gives its request up
AGG_JITTER_S = 0.25  # reports of a step arrive in a random rank order within this window
# each step's level, every rank's value a few percent off it: improves, stalls past patience 1
# (a reduce), improves, stalls again
AGG_LEVELS = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.7]


def _report(step: int, rank: int, value: float, weight: float) -> dict[str, Any]:
    return {"step": step, "value": value, "rank": rank, "world_size": AGG_RANKS, "weight": weight}


def _aggregated_rank(
    barrier: Any,
    urls: list[str],
    run_id: str,
    me: int,
    rank: int,
    weight: float,
    plan: list[dict[str, Any]],
    final_late: int,
) -> list[Event]:
    """Rank ``rank`` (process ``me``; a twin when ``me != rank``) through every step of
    ``plan``: an abandoned request and its retry when it is the step's retrier, a random
    pause, its report (sent twice at once on some steps), and on some steps the report of a
    step decided two steps ago sent again alongside."""
    path = f"/v1/runs/{run_id}/observations"
    events: list[Event] = []
    clients = _clients(urls)
    try:
        for st in plan:
            mine = _report(st["step"], rank, st["values"][rank], weight)
            barrier.wait(timeout=120)
            if st["retrier"] == me:
                # alone with its report (the others wait at the barrier): the step cannot be
                # decided, so the answer cannot come before the client gives up
                sent = time.monotonic()
                try:
                    r = clients[1].post(
                        path, json=mine, timeout=httpx.Timeout(ABANDON_S, connect=10)
                    )
                    events.append(
                        ("answered", st["step"], sent, time.monotonic(), r.status_code, r.text)
                    )
                except httpx.ReadTimeout:
                    events.append(("abandoned", st["step"], sent, time.monotonic(), None, None))
            if st["retrier"] is not None:
                barrier.wait(timeout=120)
            time.sleep(st["jitter"][me])
            jobs = [("report" if me == rank else "twin", st["step"], mine)]
            if st["doubled"][me]:
                jobs.append(("duplicate", st["step"], mine))
            late = st["late"][me]
            if late is not None:  # two steps back or more: the step after it is decided too
                old = plan[late]
                jobs.append(
                    ("late", old["step"], _report(old["step"], rank, old["values"][rank], weight))
                )
            events += _send_together(clients, path, jobs)
        old = plan[final_late]
        body = _report(old["step"], rank, old["values"][rank], weight)
        events += _send_together(clients[1:], path, [("late", old["step"], body)])
    finally:
        for http in clients:
            http.close()
    return events


def _aggregated_plan(seed: int) -> tuple[list[float], list[dict[str, Any]], list[int]]:
    """Weights, the steps (values, retrier, pauses, doubled and late sends), final late steps."""
    rng = random.Random(seed)
    procs = AGG_RANKS + len(TWINS)
    weights = [rng.uniform(1.0, 500.0) for _ in range(AGG_RANKS)]
    plan = []
    for k, level in enumerate(AGG_LEVELS):
        plan.append(
            {
                "step": 10 * (k + 1),
                "values": [level * (1 + rng.uniform(-0.03, 0.03)) for _ in range(AGG_RANKS)],
                "retrier": k % AGG_RANKS if k % 2 == 0 else None,  # every other step, a rank
                "jitter": [rng.uniform(0.0, AGG_JITTER_S) for _ in range(procs)],
                "doubled": [rng.random() < 0.3 for _ in range(procs)],
                "late": [
                    rng.randrange(k - 1) if k >= 2 and rng.random() < 0.3 else None
                    for _ in range(procs)
                ],
            }
        )
    final_late = [rng.randrange(AGG_STEPS) for _ in range(procs)]
    return weights, plan, final_late


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    """sum(w * v) / sum(w) in rank order, plain float arithmetic (not the service's code)."""
    total, weight_sum = 0.0, 0.0
    for v, w in zip(values, weights, strict=True):
        total += w * v
        weight_sum += w
    return total / weight_sum


@pytest.mark.parametrize(("backend", "replicas"), TOPOLOGIES)
def test_ranks_reporting_with_duplicates_retries_and_late_arrivals_get_one_decision_a_step(
    backend: str, replicas: int, tmp_path: Path
) -> None:
    run_id = "agg-ranks"
    weights, plan, final_late = _aggregated_plan(seed=8)
    steps = [st["step"] for st in plan]
    spec = run_spec({"patience": 1}, base_lrs=[0.1, 0.01])
    spec["aggregate"] = {"timeout_s": 30, "on_timeout": "decide"}
    with servers(database(backend, tmp_path), replicas) as fleet:
        created = httpx.put(f"{fleet[0].url}/v1/runs/{run_id}", json=spec, timeout=30)
        assert created.status_code == 201, created.text
        urls = [s.url for s in fleet]
        ranks = [*range(AGG_RANKS), *TWINS]  # process i is rank ranks[i]
        args = [
            (
                urls[i % replicas :] + urls[: i % replicas],
                run_id,
                i,
                rank,
                weights[rank],
                plan,
                final_late[i],
            )
            for i, rank in enumerate(ranks)
        ]
        started = time.monotonic()
        answers = ProcessFleet(_aggregated_rank, args).start().results(timeout=60)
        took = time.monotonic() - started

        _no_server_error(answers, fleet)
        every = [e for events in answers for e in events]
        not_ok = [e for e in every if e[0] != "abandoned" and e[4] != 200]
        assert not not_ok, f"{len(not_ok)} reports were refused: {not_ok[:3]}\n{logs(fleet)}"
        by_step = _by_step(answers)
        items, raw = _check_log(fleet[-1].url, run_id, by_step, steps, fleet)

        means = []
        for st, decision in zip(plan, items, strict=True):
            mean = _weighted_mean(st["values"], weights)
            means.append(mean)
            assert decision["value"] == mean, f"step {st['step']}: {decision['value']} != {mean}"
            assert decision["ranks"] == [
                {"rank": r, "value": st["values"][r], "weight": weights[r]}
                for r in range(AGG_RANKS)
            ], f"step {st['step']}: every rank once, in rank order, with its own report"
            assert "missing_ranks" not in decision, decision
        # the policy saw the means: the run decided what a simulation of the means decides
        expected = _simulated(fleet[0].url, spec, steps, means)
        assert [(d["action"], d["lrs"]) for d in items] == expected
        assert "reduce" in {d["action"] for d in items}, "the stream should make it reduce"
        st = plan[3]
        decided = _report(st["step"], 2, st["values"][2], weights[2])
        _check_refusals(fleet, run_id, decided, {"value": st["values"][2] * 2}, raw[3])

    # the workload did what it says
    kinds = Counter(e[0] for e in every)
    retried = sum(st["retrier"] is not None for st in plan)
    assert kinds["answered"] == 0, "a request meant to be abandoned was answered"
    assert kinds["abandoned"] == retried == AGG_STEPS // 2, kinds
    assert kinds["report"] == AGG_RANKS * AGG_STEPS, kinds
    assert kinds["twin"] == len(TWINS) * AGG_STEPS, kinds
    assert kinds["duplicate"] == sum(sum(st["doubled"]) for st in plan) > AGG_STEPS, kinds
    planned_late = sum(x is not None for st in plan for x in st["late"]) + len(ranks)
    assert kinds["late"] == planned_late > AGG_STEPS, kinds
    assert len(every) > 2 * AGG_RANKS * AGG_STEPS, "far more requests than distinct reports"
    # out of order: a step's reports left in another order than the ranks'
    shuffled = 0
    for step in steps:
        first = sorted(
            (sent, i)
            for i, events in enumerate(answers)
            for kind, s, sent, *_ in events
            if s == step and kind == "report"
        )
        shuffled += [i for _, i in first] != list(range(AGG_RANKS))
    assert shuffled >= AGG_STEPS - 1, f"only {shuffled} steps' reports arrived out of rank order"
    # late: every late report left once the step after it was decided (some process had it)
    answered = {s: min(e[3] for e in by_step[s] if e[0] != "abandoned") for s in steps}
    for kind, step, sent, *_ in every:
        if kind == "late" and step != steps[-1]:
            assert sent > answered[steps[steps.index(step) + 1]], (step, sent)
    print(f"\n{backend} x{replicas}: {len(every)} requests in {took:.1f} s, {kinds}")


# ---------------------------------------------------------------------------------------------
# leader mode: several processes post each step's observation (the same value), at their own
# pace, with concurrent re-sends and late re-sends of decided steps


LEADERS = 8
LEADER_STEPS = 12


def _leader_poster(
    barrier: Any, urls: list[str], run_id: str, plan: list[dict[str, Any]], values: list[Any]
) -> list[Event]:
    """One process: every step in order, each after a pause and only once it has the previous
    step's decision (a step comes after the one before it), some sent twice at once, some with
    the post of an older step again alongside."""
    path = f"/v1/runs/{run_id}/observations"
    events: list[Event] = []
    clients = _clients(urls)
    try:
        barrier.wait(timeout=120)
        for k, st in enumerate(plan):
            time.sleep(st["pause"])
            body = {"step": st["step"], "value": values[k]}
            jobs = [("report", st["step"], body)]
            if st["doubled"]:
                jobs.append(("duplicate", st["step"], body))
            if st["late"] is not None:
                old = plan[st["late"]]["step"]
                jobs.append(("late", old, {"step": old, "value": values[st["late"]]}))
            got = _send_together(clients, path, jobs)
            events += got
            if got[0][4] != 200:  # refused: the steps after it would not mean anything
                break
    finally:
        for http in clients:
            http.close()
    return events


def _leader_plans(seed: int) -> list[list[dict[str, Any]]]:
    """A plan for each process: process p pauses longer than p - 1 before each post, so the
    fast ones decide the steps and the slow ones post steps after later steps were decided."""
    rng = random.Random(seed)
    plans = []
    for p in range(LEADERS):
        plan = []
        for k in range(LEADER_STEPS):
            plan.append(
                {
                    "step": 10 * (k + 1),
                    "pause": 0.012 * p + rng.uniform(0.0, 0.03),
                    "doubled": rng.random() < 0.35,
                    "late": rng.randrange(k - 1) if k >= 2 and rng.random() < 0.35 else None,
                }
            )
        plans.append(plan)
    return plans


@pytest.mark.parametrize(("backend", "replicas"), TOPOLOGIES)
def test_processes_posting_each_step_with_retries_and_late_arrivals_get_one_decision_a_step(
    backend: str, replicas: int, tmp_path: Path
) -> None:
    run_id = "leaders"
    plans = _leader_plans(seed=12)
    steps = [st["step"] for st in plans[0]]
    stream = [value for _, value in plateau_stream(LEADER_STEPS, seed=3)]
    stream[7] = float("nan")  # a NaN: a retry of it is the same value
    values = [float_token(v) for v in stream]
    spec = run_spec({"patience": 1}, base_lrs=[0.1, 0.01])
    with servers(database(backend, tmp_path), replicas) as fleet:
        created = httpx.put(f"{fleet[0].url}/v1/runs/{run_id}", json=spec, timeout=30)
        assert created.status_code == 201, created.text
        urls = [s.url for s in fleet]
        args = [
            (urls[p % replicas :] + urls[: p % replicas], run_id, plans[p], values)
            for p in range(LEADERS)
        ]
        started = time.monotonic()
        answers = ProcessFleet(_leader_poster, args).start().results(timeout=60)
        took = time.monotonic() - started

        _no_server_error(answers, fleet)
        every = [e for events in answers for e in events]
        not_ok = [e for e in every if e[4] != 200]
        assert not not_ok, f"{len(not_ok)} posts were refused: {not_ok[:3]}\n{logs(fleet)}"
        by_step = _by_step(answers)
        items, raw = _check_log(fleet[-1].url, run_id, by_step, steps, fleet)
        assert [d["value"] for d in items] == values  # the NaN as strict JSON writes it
        expected = _simulated(fleet[0].url, spec, steps, values)
        assert [(d["action"], d["lrs"]) for d in items] == expected
        assert "reduce" in {d["action"] for d in items}, "the stream should make it reduce"

        decided = {"step": steps[3], "value": values[3]}
        _check_refusals(fleet, run_id, decided, {"value": 0.123}, raw[3])

    kinds = Counter(e[0] for e in every)
    assert kinds["report"] == LEADERS * LEADER_STEPS, kinds
    assert kinds["duplicate"] == sum(st["doubled"] for plan in plans for st in plan), kinds
    assert kinds["duplicate"] > LEADER_STEPS, kinds
    assert kinds["late"] == sum(st["late"] is not None for p in plans for st in p) > LEADER_STEPS
    # out of order: posts of a step that left once a later step was decided (some process had
    # that decision) - the slow processes' posts, as well as the late re-sends
    decided_at = {s: min(e[3] for e in by_step[s]) for s in steps}
    after_later = sum(
        1
        for kind, step, sent, *_ in every
        if kind in ("report", "duplicate")
        and step != steps[-1]
        and sent > decided_at[steps[steps.index(step) + 1]]
    )
    assert after_later >= LEADER_STEPS * 2, f"only {after_later} posts arrived out of order"
    print(f"\n{backend} x{replicas}: {took:.1f} s, {kinds}, {after_later} posts out of order")
