"""The everyday commands (issue 15): ``lrpilot runs``, ``show``, ``decisions`` and ``watch``
against a real service (uvicorn on SQLite) that holds tokens, as tables and as ``--json``.

Most run in this process (typer's CliRunner: an unhandled exception fails the test); ``watch``
runs as typed, a subprocess ended with Ctrl-C (SIGINT) while a job posts."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from lrpilot.store.db import upgrade
from tests.harness import LiveServer
from tests.helpers import bearer, lrpilot_cli, make_token, one_line, plateau_stream, run_spec

PARAMS = {"patience": 2, "factor": 0.5, "cooldown": 1}


@dataclass
class Served:
    url: str
    reader: str
    writer: str


def feed(url: str, token: str, run_id: str, stream: list[tuple[int, float]]) -> None:
    with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:
        for step, value in stream:
            r = c.post(f"/v1/runs/{run_id}/observations", json={"step": step, "value": value})
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A service with tokens holding runs "a1" (team a, 40 observations: it reduces), "a2"
    (team a, none yet) and "b1" (team b)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('everyday') / 'lrpilot.db'}"
    upgrade(url)
    reader, writer = make_token(url, "p", "reader"), make_token(url, "p", "writer")
    with LiveServer(url, migrate=False) as server:
        with httpx.Client(base_url=server.url, headers=bearer(writer), timeout=30) as c:
            for run_id, team in (("a1", "a"), ("a2", "a"), ("b1", "b")):
                spec = run_spec(PARAMS, labels={"team": team})
                assert c.put(f"/v1/runs/{run_id}", json=spec).status_code == 201
        feed(server.url, writer, "a1", plateau_stream(40))
        feed(server.url, writer, "b1", plateau_stream(3))
        yield Served(server.url, reader, writer)


def cli(served: Served, *args: str) -> Any:
    result = lrpilot_cli(*args, "--url", served.url, "--token", served.reader)
    assert result.exit_code == 0, result.output
    return result


def test_runs_lists_every_run_page_after_page_and_filters_by_label(served: Served) -> None:
    listed = json.loads(cli(served, "runs", "--json").output)
    assert [r["run_id"] for r in listed] == ["a1", "a2", "b1"]
    assert listed[0]["policy"]["name"] == "plateau" and listed[0]["labels"] == {"team": "a"}
    team_a = json.loads(cli(served, "runs", "--label", "team=a", "--json").output)
    assert [r["run_id"] for r in team_a] == ["a1", "a2"]
    assert json.loads(cli(served, "runs", "--limit", "2", "--json").output)[1]["run_id"] == "a2"
    table = one_line(cli(served, "runs").output)
    assert "3 runs" in table and "plateau@1" in table and "team=b" in table


def test_show_gives_the_summary(served: Served) -> None:
    with httpx.Client(base_url=served.url, headers=bearer(served.reader)) as c:
        summary = c.get("/v1/runs/a1/summary").json()
    assert summary["lr_changes"], "the stream must make the run reduce"
    shown = json.loads(cli(served, "show", "a1", "--json").output)
    assert shown["summary"]["lr_changes"] == summary["lr_changes"]
    assert shown["summary"]["best"] == summary["best"]
    assert shown["run"]["last_step"] == summary["last_step"] == 400
    text = one_line(cli(served, "show", "a1").output)
    best = summary["best"]
    assert f"best val_loss {best['value']:.6g} at step {best['step']}" in text, text
    assert "last step 400 " in text and "changes of the lrs" in text
    last = summary["lr_changes"][-1]
    assert f"│ {last['step']} │ {last['action']} │ {last['lrs'][0]:.6g} │" in text, text
    assert "no change of the lrs yet" in cli(served, "show", "a2").output


def test_decisions_with_filters(served: Served) -> None:
    every = json.loads(cli(served, "decisions", "a1", "--json").output)
    assert [d["seq"] for d in every] == list(range(1, 41))
    reduced = json.loads(cli(served, "decisions", "a1", "--action", "reduce", "--json").output)
    assert reduced and {d["action"] for d in reduced} == {"reduce"}
    assert reduced == [d for d in every if d["action"] == "reduce"]
    window = json.loads(
        cli(served, "decisions", "a1", "--from-step", "100", "--to-step", "150", "--json").output
    )
    assert [d["step"] for d in window] == [100, 110, 120, 130, 140, 150]
    table = one_line(cli(served, "decisions", "a1", "--action", "reduce").output)
    assert f"a1: {len(reduced)} decisions" in table and "reduce" in table


def test_watch_prints_each_new_decision_until_ctrl_c(served: Served) -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "LRPILOT_TOKEN": served.reader}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrpilot.cli", "watch", "b1", "--url", served.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

    def line() -> str:
        return lines.get(timeout=60)  # a bound on a hang, not a timing assertion

    try:
        assert "watching b1 after seq 3" in line()
        feed(served.url, served.writer, "b1", [(1000, 0.5)])
        first = line()
        assert first.startswith("seq 4 step 1000 value 0.5:"), first
        feed(served.url, served.writer, "b1", [(1010, 0.4), (1020, 0.3)])
        assert line().startswith("seq 5 step 1010")
        assert line().startswith("seq 6 step 1020")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_ctrl_c_stops_a_watch_started_with_sigint_ignored(served: Served) -> None:
    """A watch started in the background of a shell (`lrpilot watch RUN &`) inherits SIGINT
    ignored; brought to the foreground, Ctrl-C must still stop it."""
    env = {**os.environ, "LRPILOT_TOKEN": served.reader}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrpilot.cli", "watch", "b1", "--url", served.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "watching b1" in proc.stdout.readline()  # its handler is in place by then
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)  # a bound on a hang, not a timing assertion
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_watch_of_a_missing_run_is_one_line(served: Served) -> None:
    result = lrpilot_cli("watch", "nosuch", "--url", served.url, "--token", served.reader)
    assert result.exit_code == 1
    assert result.output.startswith("lrpilot: watch 'nosuch' failed (404)"), result.output
