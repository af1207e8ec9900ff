"""``lrpilot token create | list | revoke``: the API tokens, straight in the database (an
operator's commands: whoever can reach the database owns the service anyway).

A token is shown once, when it is created: the database keeps only its SHA-256.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from lrpilot.cli._common import fail
from lrpilot.cli.serve import DatabaseUrl, _migrate, _settings, check_database
from lrpilot.domain.deciding import now
from lrpilot.store.records import ROLES, new_secret, secret_hash, token_name
from lrpilot.store.runs import Store
from lrpilot.store.tokens import NameTaken, Tokens

token = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)

NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # a project or a token name: as a run id
MIN_SECRET_CHARS = 32  # a secret given by file (docker-compose's bootstrap) is at least this long


def register(app: typer.Typer) -> None:
    app.add_typer(token, name="token")


def _tokens(database_url: str | None) -> tuple[Store, Tokens]:
    settings = _settings(database_url)
    check_database(settings.database_url)
    _migrate(settings.database_url)  # the tokens table may be newer than the database
    store = Store(settings)
    return store, Tokens(store)


@token.command("create")
def create(
    project: Annotated[str, typer.Option(help="the project whose runs the token reaches")],
    role: Annotated[str, typer.Option(help="reader, writer or admin")],
    name: Annotated[
        str | None, typer.Option(help="a label, unique (default: PROJECT-ROLE-random)")
    ] = None,
    expires_days: Annotated[
        int | None, typer.Option(min=1, max=36500, help="valid this many days (default: ever)")
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            help="take the token from this file instead of drawing one (a deployment's "
            "secret, e.g. docker-compose's); it is not printed"
        ),
    ] = None,
    if_absent: Annotated[
        bool, typer.Option("--if-absent", help="do nothing if a token of that --name exists")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token; it is printed once, alone on the last line (only its hash is kept)."""
    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    if not NAME.match(project):
        fail("--project must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    if name is not None and not NAME.match(name):
        fail("--name must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    if if_absent and name is None:
        fail("--if-absent needs --name: it is the token it looks for")
    secret = _read_secret(secret_file) if secret_file is not None else new_secret()
    store, tokens = _tokens(database_url)
    try:
        if if_absent and name is not None and tokens.named(name) is not None:
            typer.echo(f"a token named {name} exists already: nothing done")
            return
        created = now()
        expires = None
        if expires_days is not None:
            at = datetime.now(UTC) + timedelta(days=expires_days)
            expires = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
        label = name or token_name(project, role)
        try:
            made = tokens.create(label, project, role, secret_hash(secret), created, expires)
        except NameTaken as exc:
            fail(str(exc))
    finally:
        store.close()
    until = f", expires {made.expires_at}" if made.expires_at else ""
    typer.echo(f"token {made.name} (id {made.id}): project {made.project}, role {made.role}{until}")
    if secret_file is not None:
        typer.echo(f"the token is the content of {secret_file}")
        return
    typer.echo("shown once, only its hash is kept; send it as 'Authorization: Bearer TOKEN':")
    typer.echo(secret)


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the token from {path}: {exc}")
    if len(secret) < MIN_SECRET_CHARS or any(c.isspace() for c in secret):
        fail(f"the token in {path} must be at least {MIN_SECRET_CHARS} characters, no spaces")
    return secret


@token.command("list")
def list_(
    project: Annotated[str | None, typer.Option(help="only this project's tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Every token (never its secret: it is not stored)."""
    store, tokens = _tokens(database_url)
    try:
        found = tokens.all(project)
    finally:
        store.close()
    for t in found:
        if as_json:
            typer.echo(json.dumps(t.doc(), sort_keys=True))
            continue
        state = f"revoked {t.revoked_at}" if t.revoked_at else "active"
        if t.revoked_at is None and t.expires_at:
            state += f", expires {t.expires_at}"
        typer.echo(f"{t.id}\t{t.name}\t{t.project}\t{t.role}\tcreated {t.created_at}\t{state}")


@token.command("revoke")
def revoke(
    token_name: Annotated[str, typer.Argument(metavar="NAME-or-ID", help="the token to revoke")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token: every replica refuses it from its next request on (within a second)."""
    store, tokens = _tokens(database_url)
    try:
        revoked = tokens.revoke(token_name, now())
    finally:
        store.close()
    if revoked is None:
        fail(f"no token named {token_name!r} (nor with that id)")
    typer.echo(f"token {revoked.name} (id {revoked.id}) revoked at {revoked.revoked_at}")
