"""The lrpilot command as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa


def lrpilot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrpilot.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    done = lrpilot("db", "upgrade", "--database-url", url)
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(url)
    assert {"runs", "decisions", "run_labels", "alembic_version"} <= set(
        sa.inspect(engine).get_table_names()
    )
    engine.dispose()
    again = lrpilot("db", "upgrade", "--database-url", url)  # idempotent
    assert again.returncode == 0, again.stderr


def test_default_database_is_lrpilot_db_in_the_working_directory(tmp_path: Path) -> None:
    done = lrpilot("db", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lrpilot.db").is_file()


def test_help_lists_the_commands() -> None:
    out = lrpilot("--help").stdout
    assert "serve" in out and "db" in out
