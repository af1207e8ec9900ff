"""Every code block of README.md runs as written, in the order a new user meets them (the console
blocks between two python blocks run while the python ones do), against one real server started
as the README starts it (`lrpilot serve` on the SQLite file `lrpilot.db` of the working
directory, which also holds the checkout's docs/ and examples/):

- a `console` block: its `$ ` commands run one by one in bash (curl, the venv's `lrpilot`) and
  each prints what the README shows below it. In a shown line `...` and `…` stand for anything,
  a line that is `...` alone for any number of lines, and the figures that differ on every
  machine and run (SHA-256 hashes, times) for any hash and any time: the README says so where
  it shows them. `lrpilot serve` is the server already running.
- a `python` block: a script of its own (nothing but what it imports and defines), all of them
  in one interpreter (torch, transformers, Lightning and Keras are imported once), each with
  fresh globals. The training loop runs twice: a restart of the job gets the same decisions.
- a block the test does not run is marked `<!-- readme-test: skip: why -->` in the README, and
  is one of SKIPPED below; any other block, or any other language, fails the test.

The server's database is the one `lrpilot token create` writes in the working directory, so the
Security section (the last with blocks) runs last: from its first token on, the server wants
tokens, as it would for a reader who followed the README from the top.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import REPO_DIR, LiveServer
from tests.helpers import strict_json

README = REPO_DIR / "README.md"
README_URL = "http://127.0.0.1:8000"  # where `lrpilot serve` listens by default

# The blocks not run here, by their first line, and why. As few as possible: each is run
# elsewhere, or is what runs this test.
SKIPPED = {
    # installs into a new virtual environment from the package index, minutes of downloads;
    # .ci/run does exactly this on a fresh machine, and this test serves with `lrpilot serve`
    "python3 -m venv .venv && . .venv/bin/activate && pip install . ./clients/python && "
    "lrpilot serve": "the install",
    # the whole suite, this test included: .ci/run runs this very command
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    "pip install -e '.[test]' -e ./clients/python && python -m pytest -q -n 2": "the test suite",
    # 2-process DDP training for ~10 s: tests/operations/test_ddp_example.py runs it once and
    # compares what it prints with this block (ddp_block below)
    "$ lrpilot serve &": "examples/ddp_digits.py",
}


@dataclass(frozen=True)
class Block:
    language: str
    body: str
    skip: str | None  # the README's reason, when marked skip
    line: int  # where it starts in README.md, for the failure messages

    @property
    def first_line(self) -> str:
        return self.body.split("\n", 1)[0]


BLOCK = re.compile(
    r"^(?:<!-- readme-test: skip: (?P<skip>.*?) -->\n)?```(?P<language>[\w-]*)\n(?P<body>.*?)^```$",
    re.M | re.S,
)


def blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of the README (or of ``text``), in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [
        Block(m["language"], m["body"], m["skip"], text.count("\n", 0, m.start()) + 1)
        for m in BLOCK.finditer(text)
    ]


def section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def ddp_block() -> Block:
    """The console block that runs examples/ddp_digits.py (skipped here: see SKIPPED)."""
    (block,) = [b for b in blocks() if "examples/ddp_digits.py" in b.body]
    return block


# -- what a console block shows ------------------------------------------------------------------

# figures that differ on every machine and every run: any hash, any time
MACHINE = re.compile(r"(?:[0-9a-f]{64}|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")


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


def shown_line(line: str) -> str:
    """The pattern of a shown line: itself, where `...` and `…` stand for anything and a hash
    or a time for any hash or time."""

    def literal(part: str) -> str:
        return MACHINE.pattern.join(map(re.escape, MACHINE.split(part)))

    return ".*?".join(literal(part) for part in re.split(r"\.\.\.|…", line))


def shows(expected: list[str], printed: str) -> bool:
    """Whether ``printed`` is what the lines ``expected`` show (a line `...` alone: any lines)."""
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line == "..." else shown_line(line) + r"\n" for line in expected
    )
    if printed and not printed.endswith("\n"):
        printed += "\n"  # curl's JSON ends without one; a terminal shows the same lines
    return re.fullmatch(pattern, printed) is not None


def run_console(block: Block, server: LiveServer, cwd: Path) -> None:
    """Run a console block's commands in order, in ``cwd``, against ``server`` (its
    `lrpilot serve` is the server already running); each prints what the README shows."""
    host = server.url.removeprefix("http://")
    # the venv's `lrpilot` command, as after the README's install
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command, expected in console_commands(block.body):
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
        where = f"README.md line {block.line}: $ {command}"
        assert done.returncode == 0, f"{where}\n{done.stdout}"
        assert shows(expected, done.stdout), (
            f"{where}\nREADME shows:\n" + "\n".join(expected) + f"\nprinted:\n{done.stdout}"
        )


# -- the python blocks ---------------------------------------------------------------------------

# Runs each script given in its own fresh globals, as `python script.py` would, and marks on
# stdout where each one's output begins.
RUNNER = """\
import runpy, sys
for n, path in enumerate(sys.argv[1:]):
    print(f"==> readme block {n}", flush=True)
    runpy.run_path(path, run_name="__main__")
    sys.stdout.flush()
"""


def start_python(scripts: list[Block], server: LiveServer, cwd: Path) -> subprocess.Popen[str]:
    """Start the python blocks in one interpreter, in order (`printed` reads what they print)."""
    paths = []
    for n, block in enumerate(scripts):
        assert README_URL in block.body, f"README.md line {block.line}: which service?"
        path = cwd / f"readme_block_{n}.py"
        path.write_text(block.body.replace(README_URL, server.url))
        paths.append(str(path))
    (cwd / "readme_runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the snippet says it
    return subprocess.Popen(
        [sys.executable, "readme_runner.py", *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def outputs(python: subprocess.Popen[str], scripts: list[Block]) -> list[str]:
    """What each python block printed, once they all ran."""
    stdout, stderr = python.communicate(timeout=300)
    each = re.split(r"^==> readme block \d+\n", stdout, flags=re.M)[1:]
    failed = scripts[len(each) - 1] if each else scripts[0]
    assert python.returncode == 0, f"README.md line {failed.line}:\n{stderr[-4000:]}"
    assert len(each) == len(scripts)
    return each


# -- the tests -----------------------------------------------------------------------------------


def test_every_block_is_run_or_skipped_with_a_reason() -> None:
    found = blocks()
    assert len(found) == README.read_text(encoding="utf-8").count("\n```") // 2, "a fence unread"
    skipped = {b.first_line: b for b in found if b.skip is not None}
    assert set(skipped) == set(SKIPPED), "the skipped blocks are SKIPPED's, each with its reason"
    for block in found:
        if block.skip is None:
            assert block.language in ("console", "python"), (
                f"README.md line {block.line}: a block in `{block.language}` is not run: "
                "console or python, or mark it skip with why"
            )
    curl = blocks(section("A session with curl"))[0]
    assert curl.first_line.startswith("$ lrpilot serve"), "the session starts the service first"


def test_the_training_loop_snippet_uses_its_own_run() -> None:
    (loop,) = blocks(section("From a training loop"))
    put = re.search(
        r"curl -s -X PUT localhost:8000/v1/runs/([\w.-]+) ", section("A session with curl")
    )
    assert put, "the curl session creates no run"
    assert f'"{put.group(1)}"' not in loop.body, "the snippet reuses the curl session's run id"


def test_every_block_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"  # the reader's checkout: its docs/ and examples/, and lrpilot.db
    work.mkdir()
    for name in ("docs", "examples"):
        (work / name).symlink_to(REPO_DIR / name)
    found = [b for b in blocks() if b.skip is None]
    at = [i for i, b in enumerate(found) if b.language == "python"]
    python = [found[i] for i in at]
    (loop,) = blocks(section("From a training loop"))
    # the python blocks in one interpreter, the training loop twice (a restart of the job); the
    # console blocks between the first and the last python block run meanwhile (runs of their
    # own, the frameworks' imports take a while), those after it once the python ones are done
    scripts = [python[0], *python]
    assert scripts[0].body == loop.body
    with LiveServer(f"sqlite:///{work / 'lrpilot.db'}") as server:
        for block in found[: at[0]]:
            run_console(block, server, work)
        running = start_python(scripts, server, work)
        try:
            for block in found[at[0] : at[-1]]:
                if block.language == "console":
                    run_console(block, server, work)
            each = outputs(running, scripts)
        finally:
            if running.poll() is None:  # a console block failed: stop the scripts too
                running.kill()
                running.communicate()
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            check_python(http, loop, python, each)
        for block in found[at[-1] :]:
            if block.language == "console":
                run_console(block, server, work)
    assert (work / "whatif.png").read_bytes().startswith(b"\x89PNG")  # the audit's --plot


def check_python(http: httpx.Client, loop: Block, python: list[Block], printed: list[str]) -> None:
    """What the README says of its python blocks, checked on the server they ran against."""
    assert printed[0] == printed[1], "a restarted job got other decisions"
    run_id = re.search(r'create_run\("([\w.-]+)"', loop.body)
    assert run_id, "the training loop creates no run"
    log = strict_json(http.get(f"/v1/runs/{run_id.group(1)}/decisions?limit=1000").text)
    decisions = [d for d in log["items"] if d["action"] != "rewind"]
    assert len(decisions) == 10, "the restart counted steps twice"
    # the rate drops tenfold at epochs 6 and 9
    reductions = [(d["step"], d["lrs"]) for d in decisions if d["action"] == "reduce"]
    assert reductions == [(6, [pytest.approx(0.01)]), (9, [pytest.approx(0.001)])]
    # the rewind snippet, after the loop: it prints `True (0.1,)` (the lrs after step 5)
    (rewind,) = [i for i, b in enumerate(python) if ".rewind(" in b.body]
    assert printed[rewind + 1] == "True (0.1,)\n"
    # every run a snippet named was decided (the integrations posted their metric)
    for block in python:
        runs = re.findall(r'(?<!=)"([\w.-]+)",\s*(?:policy|metric|params)=', block.body)
        assert runs, f"README.md line {block.line}: no run named"
        for run in runs:
            r = http.get(f"/v1/runs/{run}")
            assert r.status_code == 200, f"README.md line {block.line}: no run {run}"
            assert json.loads(r.text)["last_step"] is not None, f"{run} was never decided"
