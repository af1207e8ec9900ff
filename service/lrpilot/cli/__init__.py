"""The ``lrpilot`` command: serve the API and migrate its database (``serve``), export, import,
verify and simulate runs (``audit``), plot schedules (``plot``), manage API tokens
(``token``), look at runs (``runs``: runs, show, decisions, watch). The commands that talk to
a running service go through ``lrpilot_client``; every command goes through
``_common.finish`` (a user's mistake is one line, the help reads cleanly)."""

from __future__ import annotations

from typing import Annotated

import typer

from lrpilot import __version__
from lrpilot.cli import audit, plot, runs, serve, token
from lrpilot.cli._common import finish

__all__ = ["app", "main"]

app = typer.Typer(
    help="lrpilot: a deterministic learning-rate schedule service.", no_args_is_help=True
)


def _version(asked: bool) -> None:
    if asked:
        typer.echo(f"lrpilot {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """lrpilot: a deterministic learning-rate schedule service."""


serve.register(app)
audit.register(app)
plot.register(app)
token.register(app)
runs.register(app)
finish(app)


def main() -> None:
    """The console script's entry point."""
    app()
