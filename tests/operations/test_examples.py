"""Every example in examples/ runs as written against the real service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO_DIR, LiveServer

# ddp_digits.py runs as written in test_ddp_example.py, which checks far more of it (and that
# it reaches a plateau): running it here too cost CI 37 s for nothing more
RUN_ELSEWHERE = {"ddp_digits.py"}
EXAMPLES = sorted(p for p in (REPO_DIR / "examples").glob("*.py") if p.name not in RUN_ELSEWHERE)


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
    assert all((REPO_DIR / "examples" / name).exists() for name in RUN_ELSEWHERE)
