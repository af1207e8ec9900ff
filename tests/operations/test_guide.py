"""The guide's first program (docs/getting-started.md) runs as written against a server started
as the guide starts it, and a restart of the job gets the same decisions back, as it says.
(`mkdocs build --strict`, which checks the guide's links and nav, is a stage of .ci/run.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_DIR, LiveServer

GETTING_STARTED = REPO_DIR / "docs" / "getting-started.md"
GUIDE_URL = "http://127.0.0.1:8000"  # where `lrpilot serve` listens by default


def test_the_first_run_runs_as_written_and_again_on_a_restart(
    live_server: LiveServer, tmp_path: Path
) -> None:
    text = GETTING_STARTED.read_text(encoding="utf-8")
    (program,) = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert GUIDE_URL in program
    script = tmp_path / "first_run.py"
    script.write_text(program.replace(GUIDE_URL, live_server.url), encoding="utf-8")
    printed = []
    for _ in range(2):  # the job's start, then its restart
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        printed.append(done.stdout)
    assert printed[0] == printed[1], "a restarted job got other decisions"
    lines = printed[0].splitlines()
    assert len(lines) == 5 and lines[-1].startswith("500 reduce (0.05,) "), printed[0]
