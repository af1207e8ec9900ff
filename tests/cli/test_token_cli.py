"""``lrpilot token create | list | revoke`` on each database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from lrpilot.store.records import secret_hash
from tests.helpers import lrpilot_cli


def create(url: str, *args: str) -> str:
    """A new token's secret: the last line of ``token create``."""
    done = lrpilot_cli("token", "create", *args, "--database-url", url)
    assert done.exit_code == 0, done.output
    return str(done.output.strip().splitlines()[-1])


def test_create_prints_the_secret_once_and_stores_only_its_hash(database_url: str) -> None:
    secret = create(database_url, "--project", "vision", "--role", "writer", "--name", "ci")
    assert secret.startswith("lrp_") and len(secret) >= 40
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM tokens").mappings().all()
    engine.dispose()
    assert len(rows) == 1
    assert rows[0]["token_hash"] == secret_hash(secret)
    assert secret not in str(dict(rows[0]))
    listed = lrpilot_cli("token", "list", "--database-url", database_url)
    assert listed.exit_code == 0 and "ci\tvision\twriter" in listed.output
    assert secret not in listed.output


def test_two_tokens_are_never_the_same(database_url: str) -> None:
    one = create(database_url, "--project", "p", "--role", "reader")
    two = create(database_url, "--project", "p", "--role", "reader")
    assert one != two


def test_a_taken_name_a_bad_role_or_project_is_one_line(database_url: str) -> None:
    create(database_url, "--project", "p", "--role", "admin", "--name", "ops")
    for args, says in (
        (["--project", "p", "--role", "admin", "--name", "ops"], "exists already"),
        (["--project", "p", "--role", "root"], "--role must be one of reader, writer, admin"),
        (["--project", "a b", "--role", "reader"], "--project must be"),
    ):
        done = lrpilot_cli("token", "create", *args, "--database-url", database_url)
        assert done.exit_code == 1 and says in done.output, done.output


def test_revoke_by_name_or_id_and_expiry_are_listed(database_url: str) -> None:
    create(database_url, "--project", "p", "--role", "reader", "--name", "r1")
    create(database_url, "--project", "p", "--role", "reader", "--name", "r2", "--expires-days=2")
    assert lrpilot_cli("token", "revoke", "r1", "--database-url", database_url).exit_code == 0
    assert lrpilot_cli("token", "revoke", "2", "--database-url", database_url).exit_code == 0
    missing = lrpilot_cli("token", "revoke", "r9", "--database-url", database_url)
    assert missing.exit_code == 1 and "no token named 'r9'" in missing.output
    listed = lrpilot_cli("token", "list", "--json", "--database-url", database_url).output
    assert listed.count('"revoked_at": "20') == 2 and '"expires_at": "20' in listed


def test_if_absent_with_a_secret_file_creates_once(database_url: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "admin_token"
    secret_file.write_text("s" * 40 + "\n")
    args = ["--project", "default", "--role", "admin", "--name", "bootstrap", "--if-absent",
            "--secret-file", str(secret_file)]  # fmt: skip
    first = lrpilot_cli("token", "create", *args, "--database-url", database_url)
    again = lrpilot_cli("token", "create", *args, "--database-url", database_url)
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert "s" * 40 not in first.output  # a deployment's secret is never printed
    assert "exists already: nothing done" in again.output
    listed = lrpilot_cli("token", "list", "--json", "--database-url", database_url).output
    assert listed.count("bootstrap") == 1
    secret_file.write_text("short")
    short = lrpilot_cli("token", "create", "--project", "p", "--role", "admin",
                        "--secret-file", str(secret_file), "--database-url",
                        database_url)  # fmt: skip
    assert short.exit_code == 1 and "at least 32 characters" in short.output
