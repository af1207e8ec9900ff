"""The ``lrpilot`` command: serve the API, migrate the database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from lrpilot.settings import Settings

app = typer.Typer(
    help="lrpilot: a deterministic learning-rate schedule service.", no_args_is_help=True
)
db = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db, name="db")
console = Console(stderr=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LRPILOT_DATABASE_URL",
        help="SQLAlchemy URL; default sqlite:///lrpilot.db (a file in the working directory).",
        show_default=False,
    ),
]


def _settings(database_url: str | None) -> Settings:
    return Settings(database_url=database_url) if database_url else Settings.from_env()


@db.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None, revision: str = "head") -> None:
    """Apply the migrations up to REVISION (default: the latest)."""
    from lrpilot.store.db import upgrade

    settings = _settings(database_url)
    upgrade(settings.database_url, revision)
    console.print(f"[green]database at {_safe(settings.database_url)} is at {revision}[/]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    database_url: DatabaseUrl = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Apply migrations, then serve the HTTP API."""
    import uvicorn

    from lrpilot.app import create_app
    from lrpilot.store.db import upgrade

    settings = _settings(database_url)
    upgrade(settings.database_url)
    console.print(f"lrpilot on http://{host}:{port} , database {_safe(settings.database_url)}")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    app()
