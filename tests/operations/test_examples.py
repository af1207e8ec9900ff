"""Every example in examples/ runs as written against the real service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO_DIR, LiveServer

EXAMPLES = sorted((REPO_DIR / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example: Path, live_server: LiveServer) -> None:
    env = {**os.environ, "LRPILOT_URL": live_server.url, "LRPILOT_RUN_ID": "example"}
    done = subprocess.run(
        [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    log = httpx.get(f"{live_server.url}/v1/runs/example/decisions?limit=1000").json()["items"]
    assert log, "the example made no decision"
    assert any(d["action"] == "reduce" for d in log), "the example never reached a plateau"


def test_there_are_examples() -> None:
    assert EXAMPLES
