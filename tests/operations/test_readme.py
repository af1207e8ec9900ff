"""The README's curl session and its audit session (export, verify, replay, tamper, verify) print
what the README shows, and its training-loop snippet runs as written against a server started as
the README starts it, after the curl session, and again on a restart of the job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO_DIR, LiveServer
from tests.helpers import strict_json

README = REPO_DIR / "README.md"
README_URL = "http://127.0.0.1:8000"  # where `lrpilot serve` listens by default


def section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def training_loop_snippet() -> str:
    blocks = code_blocks(section("From a training loop"), "python")
    assert len(blocks) == 1, f"expected one python block, found {len(blocks)}"
    return blocks[0]


def curl_session_run() -> tuple[str, dict[str, object]]:
    """The path and body of the curl session's PUT (the run a new user has already made)."""
    (console,) = code_blocks(section("A session with curl"), "console")
    match = re.search(
        r"curl -s -X PUT localhost:8000(/v1/runs/[\w.-]+) .*?-d '(\{.*?\})'", console, re.S
    )
    assert match, "the curl session creates no run"
    return match.group(1), json.loads(match.group(2))


def test_the_snippet_is_self_contained_and_uses_its_own_run() -> None:
    snippet = training_loop_snippet()
    assert README_URL in snippet
    path, _ = curl_session_run()
    curl_run = path.rsplit("/", 1)[1]
    assert f'"{curl_run}"' not in snippet, "the snippet reuses the curl session's run id"


def test_the_snippet_runs_as_written_after_the_curl_session(
    live_server: LiveServer, tmp_path: Path
) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30.0) as http:
        path, body = curl_session_run()  # what a new user did first, on the same server
        assert http.put(path, json=body).status_code == 201

        script = tmp_path / "snippet.py"
        script.write_text(training_loop_snippet().replace(README_URL, live_server.url))
        outputs = []
        for _ in range(2):  # the job's first start, then a restart: create_run and retries
            done = subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        assert outputs[0] == outputs[1], "a restarted job got other decisions"

        run_id = re.search(r'create_run\("([\w.-]+)"', training_loop_snippet())
        assert run_id, "the snippet creates no run"
        log = strict_json(http.get(f"/v1/runs/{run_id.group(1)}/decisions?limit=1000").text)
        decisions = log["items"]
        assert len(decisions) == 10, "the restart counted steps twice"
        # what the README says: the rate drops tenfold at epochs 6 and 9
        reductions = [(d["step"], d["lrs"]) for d in decisions if d["action"] == "reduce"]
        assert reductions == [(6, [pytest.approx(0.01)]), (9, [pytest.approx(0.001)])]


def console_commands(console: str) -> list[tuple[str, list[str]]]:
    """The `$ ` commands of a console block (continued on indented lines), each with the lines
    the README shows it printing."""
    commands: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif line.startswith(" ") and commands and not commands[-1][1]:
            commands[-1] = (commands[-1][0] + "\n" + line, [])
        elif commands:
            commands[-1][1].append(line)
    return commands


HASH = re.compile(r"[0-9a-f]{64}")


def shown(line: str) -> re.Pattern[str]:
    """What a shown output line matches: itself, where `...` and `…` stand for anything and a
    SHA-256 hash for any hash (hashes cover `created_at`, so each session has its own)."""
    parts = re.split(r"\.\.\.|…", line)
    return re.compile(
        ".*?".join(HASH.pattern.join(map(re.escape, HASH.split(part))) for part in parts)
    )


def run_console(console: str, server: LiveServer, cwd: Path) -> None:
    """Run a console block's commands in order, in `cwd`, against `server` (its `lrpilot serve`
    is the server already running), and check each prints what the README shows."""
    commands = console_commands(console)
    host = server.url.removeprefix("http://")
    # the venv's `lrpilot` command, as after the README's install
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command, expected in commands:
        if command.startswith("lrpilot serve"):
            continue
        done = subprocess.run(
            ["bash", "-c", re.sub(r"(localhost|127\.0\.0\.1):8000", host, command)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # a terminal shows both, as the README does
            text=True,
            timeout=60,
            cwd=cwd,
            env=env,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}"
        printed = done.stdout.splitlines()
        assert len(printed) == len(expected), f"{command}\nprinted:\n{done.stdout}"
        for line, want in zip(printed, expected, strict=True):
            assert shown(want).fullmatch(line), f"{command}\nREADME: {want}\nprinted: {line}"


def test_the_curl_and_audit_sessions_print_what_the_readme_shows(
    live_server: LiveServer, tmp_path: Path
) -> None:
    (curl,) = code_blocks(section("A session with curl"), "console")
    assert curl.startswith("$ lrpilot serve"), "the session starts the service first"
    run_console(curl, live_server, tmp_path)
    # then the audit session: export the curl session's run, verify, replay, tamper, verify
    (audit,) = code_blocks(section("Audit and replay"), "console")
    run_console(audit, live_server, tmp_path)
    assert (tmp_path / "whatif.png").stat().st_size > 0
