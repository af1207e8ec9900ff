"""A user's mistakes, in every command of ``lrpilot --help`` (issue 15): wrong or missing paths,
a directory where a file goes, an unreachable or malformed URL, a bad token, a bad spec. Each
is one line that starts "lrpilot: " and a non-zero exit: never a traceback. And the help reads
cleanly: no Python type as a metavar, no line broken where the source broke it.

Mistakes run in this process (CliRunner, exceptions caught so that every crash is collected
before the test fails); a few run as typed, as subprocesses."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from lrpilot.cli import app
from tests.harness import LiveServer, free_port
from tests.helpers import lrpilot_cli, one_line, run_spec


def commands() -> Iterator[str]:
    """Every command `lrpilot --help` lists, sub-commands as "token create"."""

    def walk(group: object, prefix: str) -> Iterator[str]:
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                yield from walk(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    yield from walk(typer.main.get_command(app), "")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("mistakes")
    bad_spec = base / "bad-spec.json"
    bad_spec.write_text('{"policy": {"name": "nosuch", "version": 1}, "base_lrs": [0.1]}')
    not_json = base / "not.json"
    not_json.write_text("{not json")
    not_bundle = base / "not-a-bundle.ndjson"
    not_bundle.write_text("hello\n")
    return {
        "dir": str(base),
        "missing": str(base / "missing.ndjson"),
        "missing_dir_file": str(base / "no" / "dir" / "x.ndjson"),
        "bad_spec": str(bad_spec),
        "not_json": str(not_json),
        "not_bundle": str(not_bundle),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A service that holds tokens: any token given here is a bad one."""
    from lrpilot.store.db import upgrade
    from tests.helpers import make_token

    url = f"sqlite:///{tmp_path_factory.mktemp('mistakes-db') / 'lrpilot.db'}"
    upgrade(url)
    make_token(url, "p", "admin")
    with LiveServer(url, migrate=False) as live:
        yield live


def mistakes(f: dict[str, str], served: str) -> dict[str, list[list[str]]]:
    """Each command's mistakes (a command missing here fails the test that covers them all)."""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    urls = [["--url", down], ["--url", "127.0.0.1:8000"], ["--url", "http://[bad"]]
    urls += [["--url", served, "--token", "lrp_wrong"], ["--url", served, "--token", ""]]
    missing_db = f"sqlite:///{f['dir']}/no/such/dir/x.db"
    run = ["r1"]
    return {
        "serve": [["--database-url", missing_db], ["--database-url", "nosuch://x"]],
        "export": [
            [*run, "-o", f["missing_dir_file"]],
            [*run, "-o", f["dir"]],
            *([*run, *u] for u in urls),
        ],
        "import": [
            [f["missing"]],
            [f["dir"]],
            *([f["not_bundle"], *u] for u in urls),
        ],
        "verify": [[f["missing"]], [f["dir"]], [f["not_bundle"]], [f["not_json"]]],
        "keygen": [[f["missing_dir_file"]], [f["dir"] + "/"]],
        "simulate": [
            [f["missing"]],
            [f["dir"]],
            [f["not_bundle"]],
            [f["not_bundle"], "--plot", f["missing_dir_file"]],
        ],
        "replay": [
            [f["missing"]],
            [f["dir"]],
            [f["not_bundle"], "--no-verify"],
            [f["not_bundle"], "--retime", "5:50"],
        ],
        "plot": [
            ["-o", f["missing_dir_file"], f["bad_spec"], "--steps", "10"],
            ["-o", f["dir"], f["bad_spec"], "--steps", "10"],
            ["-o", f"{f['dir']}/x.png", f["missing"], "--steps", "10"],
            ["-o", f"{f['dir']}/x.png", f["bad_spec"], "--steps", "10"],
            ["-o", f"{f['dir']}/x.png", f["not_json"], "--steps", "10"],
            *(["-o", f"{f['dir']}/x.png", "--from-run", "r1", *u] for u in urls),
        ],
        "runs": [u for u in urls] + [["--label", "nolabel", "--url", served]],
        "show": [[*run, *u] for u in urls],
        "decisions": [[*run, *u] for u in urls],
        "watch": [[*run, *u] for u in urls],
        "cooldown": [[*run, "--at-step", "5", "--steps", "5", *u] for u in urls]
        + [[*run, "--at-step", "-1", "--steps", "5", "--url", served]],
        "retime": [[*run, "--at-step", "5", "--horizon", "50", *u] for u in urls]
        + [[*run, "--at-step", "5", "--horizon", "50", "--mode", "sideways", "--url", served]],
        "db upgrade": [["--database-url", missing_db]],
        "db backup": [
            [f["missing_dir_file"], "--database-url", missing_db],
            [f["dir"], "--database-url", missing_db],
            [f"{f['dir']}/copy.db", "--database-url", "postgresql://u:p@127.0.0.1:1/x"],
            [f"{f['dir']}/copy.db", "--database-url", f"sqlite:///{f['not_json']}"],
        ],
        "token create": [
            ["--project", "p", "--role", "admin", "--database-url", missing_db],
            ["--project", "p", "--role", "admin", "--secret-file", f["missing"]],
        ],
        "token list": [["--database-url", missing_db]],
        "token revoke": [["x", "--database-url", missing_db]],
    }


def test_every_command_answers_mistakes_in_one_line(
    files: dict[str, str], server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LRPILOT_TOKEN", raising=False)
    monkeypatch.setenv("LRPILOT_DATABASE_URL", f"sqlite:///{files['dir']}/no/such/dir/x.db")
    table = mistakes(files, server.url)
    assert set(table) == set(commands()), "a command of `lrpilot --help` has no mistakes here"
    crashes: list[str] = []
    for command, cases in table.items():
        for args in cases:
            typed = [*command.split(), *args]
            result = lrpilot_cli(*typed, catch_exceptions=True)
            said = f"lrpilot {' '.join(typed)} -> {result.exit_code}: {result.output!r}"
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                crashes.append(f"{said} raised {result.exception!r}")
            elif result.exit_code == 0 or "Traceback" in result.output:
                crashes.append(said)
            elif not _one_clear_line(result.output):
                crashes.append(f"{said}: not one line")
    assert not crashes, "\n".join(crashes)


def _one_clear_line(output: str) -> bool:
    """One line from lrpilot (or verify's report of a bundle that fails), or click's own usage
    error (which shows the usage first)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].startswith(("lrpilot: ", "FAILED ")):
        return True
    return any("Error" in line for line in lines) and "Usage:" in output


def lrpilot(*args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"},
    )  # fmt: skip


def test_the_mistakes_of_the_issue_as_typed() -> None:
    for args, says in (
        (["export", "r1", "-o", "/missing/dir/x.ndjson"], "no such directory /missing/dir"),
        (["show", "r1", "--url", "127.0.0.1:8000"], "must start with http:// or https://"),
    ):
        done = lrpilot(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        assert done.stderr.startswith("lrpilot: ") and says in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr


def test_help_reads_cleanly() -> None:
    for command in ["", *commands()]:
        result = lrpilot_cli(*command.split(), "--help")
        assert result.exit_code == 0, result.output
        text = result.output
        for python_type in ("<bool>", "<str>", "<int>", "<float>", "<list", "<path>]"):
            assert python_type not in text, f"lrpilot {command} --help:\n{text}"
    # a command's sentence in the list wraps at the panel's width, not where the source broke
    # it: no line of it ends short while the same sentence goes on on the next line
    # (narrower than the source's lines, which would otherwise break where they happen to)
    rows = lrpilot("--help", columns=90).stdout.split("Commands")[1].splitlines()[1:-1]
    texts = [row.strip("│").rstrip() for row in rows]
    width = max(len(row) for row in rows) - 2
    for text, after in itertools.pairwise(texts):
        goes_on = after.startswith("   ") and after.strip()  # no command name: same sentence
        assert not (goes_on and len(text) < width - 20), f"ragged: {text!r} then {after!r}"


def test_replay_refuses_a_tampered_bundle_unless_told(tmp_path: Path, server: LiveServer) -> None:
    import httpx

    from tests.helpers import make_token

    assert server.database_url is not None
    writer = make_token(server.database_url, "p", "writer")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {writer}"}) as c:
        assert c.put("/v1/runs/t", json=run_spec({"patience": 1})).status_code == 201
        for step, value in ((1, 1.0), (2, 1.1), (3, 1.2), (4, 0.5)):
            c.post("/v1/runs/t/observations", json={"step": step, "value": value})
        bundle = c.get("/v1/runs/t/export").text
    good, bad = tmp_path / "good.ndjson", tmp_path / "bad.ndjson"
    good.write_text(bundle)
    bad.write_text(bundle.replace('"value":1.1', '"value":1.15', 1))
    assert bad.read_text() != bundle
    assert lrpilot_cli("replay", str(good)).exit_code == 0
    refused = lrpilot_cli("replay", str(bad))
    assert refused.exit_code == 1
    text = one_line(refused.output)
    assert text.startswith(f"lrpilot: {bad} does not verify:"), text
    assert "--no-verify replays it anyway" in text
    forced = lrpilot_cli("replay", str(bad), "--no-verify")
    assert "observations replayed" in one_line(forced.output), forced.output
