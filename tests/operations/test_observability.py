"""A real server, logging JSON, scraped during a real run: its metrics agree with its request
log and with the runs' own decision logs; the log holds no secret (docs/operations.md,
"Metrics and logs")."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url

from lrpilot.settings import safe_url
from lrpilot.store.db import upgrade
from lrpilot_client import Client
from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer
from tests.helpers import bearer, make_token, run_spec

JSON_LOGS = ["--log-format", "json", "--log-level", "info", "--access-log"]
REQUEST_FIELDS = {
    "request_id", "method", "path", "route", "status", "duration_ms", "token", "project",
    "run_id", "client",
}  # fmt: skip
WAIT_S = 30.0  # only a hang takes this long


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a scrape: name -> sorted labels -> value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def log_lines(log: Path) -> list[dict[str, Any]]:
    """The server log's JSON lines (every line of it must be one)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scrape_counts_what_the_logs_say(backend: str, tmp_path: Path) -> None:
    url = empty_database(backend, tmp_path)  # the group commit differs: inline, threaded
    upgrade(url)
    secret = make_token(url, "p1", "admin", name="trainer")  # rewinds are an admin's
    with (
        LiveServer(url, args=JSON_LOGS) as server,
        httpx.Client(base_url=server.url, headers=bearer(secret), timeout=WAIT_S) as c,
    ):
        assert c.put("/v1/runs/plain", json=run_spec({"patience": 1})).status_code == 201
        values = [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8]
        for step, value in enumerate(values, start=1):
            assert c.post(
                "/v1/runs/plain/observations", json={"step": step, "value": value}
            ).is_success
        assert c.post("/v1/runs/plain/rewind", json={"to_step": 3}).is_success
        for step in (4, 5):
            assert c.post(
                "/v1/runs/plain/observations", json={"step": step, "value": 0.7}
            ).is_success

        # an aggregated step: rank 0 waits for rank 1, a leader-mode reader waits for both
        agg = run_spec() | {"aggregate": {"timeout_s": WAIT_S, "on_timeout": "decide"}}
        assert c.put("/v1/runs/agg", json=agg).status_code == 201
        answers: list[httpx.Response] = []
        waiting = [
            threading.Thread(target=lambda: answers.append(c.post(
                "/v1/runs/agg/observations",
                json={"step": 1, "value": 1.0, "rank": 0, "world_size": 2},
            ))),
            threading.Thread(
                target=lambda: answers.append(c.get("/v1/runs/agg/lr?step=1&wait=30"))
            ),
        ]  # fmt: skip
        for thread in waiting:
            thread.start()

        def both_wait() -> bool:
            now = samples(c.get("/metrics").text)
            return (
                now["lrpilot_aggregated_ranks_waiting"][()] == 1
                and now["lrpilot_aggregated_steps_waiting"][()] == 1
                and now["lrpilot_longpoll_waiters"][()] == 1
            )

        until(both_wait, "the rank and the reader never showed as waiting")
        last = {"step": 1, "value": 0.5, "rank": 1, "world_size": 2}
        assert c.post("/v1/runs/agg/observations", json=last).is_success
        for thread in waiting:
            thread.join(WAIT_S)
        assert [a.status_code for a in answers] == [200, 200]

        # a step whose other rank never comes: decided at its deadline
        late = run_spec() | {"aggregate": {"timeout_s": 0.2, "on_timeout": "decide"}}
        assert c.put("/v1/runs/late", json=late).status_code == 201
        alone = {"step": 1, "value": 1.0, "rank": 0, "world_size": 2}
        assert c.post("/v1/runs/late/observations", json=alone).is_success

        refused = c.get("/v1/runs", headers=bearer("lrp_not-a-token"))
        assert refused.status_code == 401
        bundles = {run: c.get(f"/v1/runs/{run}/export").text for run in ("plain", "agg", "late")}

        scrape = c.get("/metrics", headers={"X-Request-ID": "scrape-1"})
        assert scrape.status_code == 200
        assert scrape.headers["x-request-id"] == "scrape-1"
        until(lambda: '"scrape-1"' in server.log.read_text(), "the scrape's line never came")
        lines = log_lines(server.log)
        with Client(server.url) as client:  # the Python client scrapes too (after the count)
            assert client.metrics().startswith("# HELP lrpilot_requests_total")
    got = samples(scrape.text)

    # every request before the scrape: one line each, with its fields, and counted
    requests = [line for line in lines if line["logger"] == "lrpilot.access"]
    assert requests[-1]["request_id"] == "scrape-1"
    requests = requests[:-1]
    for line in requests:
        assert line.keys() >= REQUEST_FIELDS, line
    logged = Counter((r["method"], r["route"], str(r["status"])) for r in requests)
    counted = {
        (dict(k)["method"], dict(k)["route"], dict(k)["status"]): v
        for k, v in got["lrpilot_requests_total"].items()
    }
    assert counted == logged
    observations = sum(
        n for (method, route, _), n in logged.items() if route.endswith("/observations")
    )
    assert observations == len(values) + 2 + 3
    durations = got["lrpilot_request_duration_seconds_count"]
    assert sum(durations.values()) == len(requests)
    assert not any(key[1].startswith("/v1/runs/plain") for key in logged)  # templates only

    # who asked, which run, and never a secret
    posted = [r for r in requests if r["route"] == "/v1/runs/{run_id}/observations"]
    assert {(r["token"], r["project"]) for r in posted} == {("trainer", "p1")}
    assert {r["run_id"] for r in posted} == {"plain", "agg", "late"}
    (failed,) = [r for r in requests if r["status"] == 401]
    assert failed["token"] is None and failed["route"] == "/v1/runs"
    text = server.log.read_text()
    assert secret not in text and "lrp_not-a-token" not in text
    assert len({r["request_id"] for r in requests}) == len(requests)

    # the decisions: as many of each action as the runs' logs hold
    entries: Counter[tuple[str, str]] = Counter()
    for bundle in bundles.values():
        for line in bundle.splitlines()[1:-1]:
            entries["plateau@1", json.loads(line)["action"]] += 1
    decisions = {
        (dict(k)["policy"], dict(k)["action"]): v for k, v in got["lrpilot_decisions_total"].items()
    }
    assert decisions == dict(entries)
    assert entries["plateau@1", "rewind"] == 1

    assert got["lrpilot_aggregated_steps_timed_out_total"][()] == 1
    assert got["lrpilot_aggregated_ranks_waiting"][()] == 0
    assert got["lrpilot_longpoll_waiters"][()] == 0
    assert got["lrpilot_auth_failures_total"] == {(("reason", "unknown"), ("status", "401")): 1}
    # every observation went through one batch, and so did the timed-out step's decision
    assert got["lrpilot_commit_batch_size_sum"][()] == observations + 1
    assert got["lrpilot_export_bytes_total"][()] == sum(len(b.encode()) for b in bundles.values())
    assert got["lrpilot_db_retries_total"][()] == 0

    # the startup line says what an operator checks first
    (start,) = [
        line
        for line in lines
        if line["message"].startswith("lrpilot ") and "starting" in line["message"]
    ]
    assert start["auth"] == "tokens" and start["database"] == safe_url(url)
    password = make_url(url).password
    assert password is None or str(password) not in text  # PostgreSQL's: never logged
    assert start["version"] and start["max_body_bytes"] > 0
