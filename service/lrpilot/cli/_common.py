"""What the commands share: the one-line failure, the service's URL, and the client to it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated, NoReturn

import httpx
import typer

from lrpilot_client import Client, LrpilotError, ServiceUnavailableError

DEFAULT_URL = "http://127.0.0.1:8000"
Url = Annotated[
    str,
    typer.Option("--url", envvar="LRPILOT_URL", help="the service, e.g. http://127.0.0.1:8000"),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="LRPILOT_TOKEN",
        help="the service's API token (`lrpilot token create` prints one)",
        show_default=False,
    ),
]
# connect briefly; read long: the service checks a whole bundle before it answers an import
TIMEOUT = httpx.Timeout(30.0, read=300.0)


def fail(message: str) -> NoReturn:
    # Plain echo, not rich: rich would wrap the line and read "[postgres]" as markup.
    typer.echo(f"lrpilot: {message}", err=True)
    raise typer.Exit(1)


def client(url: str, token: str | None = None) -> Client:
    """A client for a command: a few quick retries, errors raised (nothing to buffer); the
    token given, else LRPILOT_TOKEN's."""
    return Client(
        url,
        timeout=TIMEOUT,
        retries=2,
        max_backoff=1.0,
        on_unavailable="raise",
        identity={},
        token=token,
    )


def detail_text(error: LrpilotError) -> str:
    """The service's detail on one line (each message of a validation error, joined)."""
    detail = error.detail
    if isinstance(detail, list):
        return "; ".join(str(i.get("msg", i) if isinstance(i, dict) else i) for i in detail)
    return str(detail)


@contextlib.contextmanager
def service_errors(url: str, failed: Callable[[LrpilotError], str]) -> Iterator[None]:
    """A client error as one line: "cannot reach URL" when no answer came, else `failed`'s."""
    try:
        yield
    except ServiceUnavailableError as exc:
        if exc.status_code is None:
            fail(f"cannot reach {url}: {exc}")
        fail(failed(exc))
    except LrpilotError as exc:
        fail(failed(exc))
