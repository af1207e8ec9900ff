"""The ``lrpilot`` command: serve the API and migrate its database (``serve``), export, import,
verify and simulate runs (``audit``), plot schedules (``plot``), manage API tokens
(``token``), look at runs (``runs``: runs, show, decisions, watch). The commands that talk to
a running service go through ``lrpilot_client``; every command goes through
``_common.finish`` (a user's mistake is one line, the help reads cleanly)."""

from __future__ import annotations

import typer

from lrpilot.cli import audit, plot, runs, serve, token
from lrpilot.cli._common import finish

__all__ = ["app", "main"]

app = typer.Typer(
    help="lrpilot: a deterministic learning-rate schedule service.", no_args_is_help=True
)
serve.register(app)
audit.register(app)
plot.register(app)
token.register(app)
runs.register(app)
finish(app)


def main() -> None:
    """The console script's entry point."""
    app()
