"""Starting lrpilot as an operator does: what a misconfigured deployment is told, and --no-migrate.

Every case runs the real CLI in a subprocess and reads what an operator would read: one line on
stderr, exit status 1, no traceback, no password.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, empty_database
from tests.harness import LiveServer, free_port

PASSWORD = "s3cret-pw"  # must never be echoed
COMMANDS = [("serve",), ("db", "upgrade")]


def lrpilot(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter; ``code`` runs first (to hide a module, say)."""
    script = f"import sys\n{code or ''}\nfrom lrpilot.cli import app\napp(sys.argv[1:], 'lrpilot')"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "80"},  # a narrow terminal: the line must still be one
    )  # fmt: skip


def one_line_failure(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{done.stderr}"
    assert PASSWORD not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_postgres_without_psycopg2_says_to_install_the_postgres_extra(
    command: tuple[str, ...],
) -> None:
    url = f"postgresql+psycopg2://lrpilot:{PASSWORD}@127.0.0.1:{free_port()}/lrpilot"
    # None in sys.modules makes `import psycopg2` raise ImportError, as on a machine without it.
    done = lrpilot(*command, "--database-url", url, code="sys.modules['psycopg2'] = None")
    line = one_line_failure(done)
    assert "psycopg2" in line and "pip install 'lrpilot[postgres]'" in line, line


@pytest.mark.parametrize("driver", ["pg8000", "asyncpg"])
def test_a_driver_named_in_the_url_that_is_not_installed_is_named(driver: str) -> None:
    if importlib.util.find_spec(driver) is not None:
        pytest.skip(f"{driver} is installed here")
    url = f"postgresql+{driver}://lrpilot:{PASSWORD}@127.0.0.1:{free_port()}/lrpilot"
    line = one_line_failure(lrpilot("serve", "--database-url", url))
    assert driver in line and "lrpilot[postgres]" in line, line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unreachable_postgres_names_the_host_and_port_it_tried(command: tuple[str, ...]) -> None:
    port = free_port()  # nothing listens there: connection refused
    url = f"postgresql+psycopg2://lrpilot:{PASSWORD}@127.0.0.1:{port}/lrpilot"
    line = one_line_failure(lrpilot(*command, "--database-url", url))
    assert f"127.0.0.1:{port}" in line, line
    assert "refused" in line.lower() and "check" in line, line


def test_a_sqlite_file_in_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "lrpilot.db"
    line = one_line_failure(lrpilot("serve", "--database-url", f"sqlite:///{path}"))
    assert str(path) in line and "directory" in line, line


@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_no_migrate_refuses_an_unmigrated_database_then_serves_after_db_upgrade(
    backend: str, tmp_path: Path
) -> None:
    url = empty_database(backend, tmp_path)
    line = one_line_failure(lrpilot("serve", "--no-migrate", "--database-url", url))
    assert "no lrpilot schema" in line and "lrpilot db upgrade" in line, line

    upgraded = lrpilot("db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    with LiveServer(url, migrate=False) as server:
        assert "--no-migrate" in server.command()
        assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
        r = httpx.put(
            server.url + "/v1/runs/no-migrate",
            json={"policy": {"name": "plateau", "version": 1, "params": {}}, "base_lrs": [0.1]},
            timeout=10,
        )
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("value", ["{missing}", "-----BEGIN PUBLIC KEY-----\nnot a key\n"])
def test_unreadable_trusted_keys_are_named(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRPILOT_TRUSTED_KEYS", value.format(missing=tmp_path / "none.pub.pem"))
    url = f"sqlite:///{tmp_path / 'lrpilot.db'}"
    done = lrpilot("serve", "--database-url", url, "--port", str(free_port()))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "LRPILOT_TRUSTED_KEYS" in done.stderr.splitlines()[-1], done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "name"),
    [("--header-timeout", "0", "header_timeout_s"), ("--max-connections", "0", "max_connections")],
)
def test_a_bad_connection_setting_is_one_line_naming_it(
    flag: str, value: str, name: str, tmp_path: Path
) -> None:
    done = lrpilot("serve", flag, value, "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    line = one_line_failure(done)
    assert f"{name} (LRPILOT_{name.upper()})" in line and "greater than" in line, line
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened
