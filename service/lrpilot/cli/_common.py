"""What the commands share: the one-line failure (and the one path that turns a user's mistake
into it), the help's look, the service's URL, and the client to it."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import DefaultPlaceholder

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
DEADLINE = 600.0  # a command's call in all: an import's check, with room; Ctrl-C ends it sooner


def fail(message: str) -> NoReturn:
    # Plain echo, not rich: rich would wrap the line and read "[postgres]" as markup.
    typer.echo(f"lrpilot: {message}", err=True)
    raise typer.Exit(1)


def client(url: str, token: str | None = None) -> Client:
    """A client for a command: a few quick retries, errors raised (nothing to buffer); the
    token given, else LRPILOT_TOKEN's. A malformed --url is one line."""
    try:
        return Client(
            url,
            timeout=TIMEOUT,
            retries=2,
            max_backoff=1.0,
            on_unavailable="raise",
            identity={},
            token=token,
            deadline=DEADLINE,
        )
    except ValueError as exc:  # the client's check of the URL: nothing was sent
        fail(f"--url: {exc}")


def writable(path: Path, option: str) -> None:
    """Refuse at once, before any work, a file to write that cannot be: its folder missing,
    or a folder in its place."""
    if path.is_dir():
        fail(f"{option} {path}: cannot write: it is a directory; give a file name")
    folder = path.parent
    if not folder.is_dir():
        fail(f"{option} {path}: cannot write: no such directory {folder}")


def readable(path: Path) -> None:
    """Refuse at once a file to read that is not there, or is a directory."""
    if path.is_dir():
        fail(f"{path}: is a directory, not a file")
    if not path.is_file():
        fail(f"{path}: no such file")


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with a user's mistake that no check caught (a file that cannot be read or
    written, a service that cannot be reached) turned into one line and exit 1, never a
    traceback. A bug still shows its traceback: only these errors are the user's."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as exc:  # a path the user gave; the message names it
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}")
        except LrpilotError as exc:
            fail(str(exc))

    return guarded


_KINDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH"}


def _clean_metavars(params: list[Any], ctx: Any) -> list[Any]:
    """A flag shows no metavar, an option its value's kind in capitals (TEXT, PATH, INTEGER)
    rather than a Python type (`<bool>`, `<list[Path]>`), an argument its name in capitals."""
    for param in params:
        kind = param.display_type(ctx).strip("<>").removeprefix("list[").rstrip("]")
        kind = _KINDS.get(kind.lower(), kind.upper())
        if isinstance(param, TyperArgument):
            # (typer shows an argument's type apart from its metavar, as a Python type)
            param.display_type_rich = functools.partial(_kind, kind)  # type: ignore[method-assign]
        if param.metavar is not None:
            continue
        if isinstance(param, TyperOption):
            param.metavar = "" if param.is_flag else kind
        elif isinstance(param, TyperArgument) and param.name:
            param.metavar = param.name.upper()
    return params


def _kind(kind: str, ctx: Any) -> str:
    return kind


class Command(TyperCommand):
    """A command whose help reads cleanly (`_clean_metavars`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _clean_metavars(super().get_params(ctx), ctx)


class Group(TyperGroup):
    """A group of commands (`lrpilot`, `lrpilot token`) whose help reads cleanly."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _clean_metavars(super().get_params(ctx), ctx)


def _reflowed(text: str | None) -> str | None:
    """A docstring's paragraphs each on one line: the help wraps them to the terminal, instead
    of keeping the source's line breaks (ragged lines in the list of commands)."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def finish(app: typer.Typer) -> typer.Typer:
    """Every command of `app` (its sub-apps' too) through the one-line error path and with
    the clean help; called once, when every command is registered."""
    for info in app.registered_commands:
        if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
            info.callback = _one_line_errors(info.callback)
        if info.cls in (None, TyperCommand):
            info.cls = Command
        info.help = _reflowed(info.help or (info.callback.__doc__ if info.callback else None))
    # (typer marks a class not given with a placeholder: only that is replaced)
    if isinstance(app.info.cls, DefaultPlaceholder):
        app.info.cls = Group
    for group in app.registered_groups:
        if isinstance(group.cls, DefaultPlaceholder):
            group.cls = Group
        if group.typer_instance is not None:
            finish(group.typer_instance)
    return app


def detail_text(error: LrpilotError) -> str:
    """The service's detail on one line (each message of a validation error, joined)."""
    detail = error.detail
    if isinstance(detail, list):
        return "; ".join(str(i.get("msg", i) if isinstance(i, dict) else i) for i in detail)
    return str(detail)


def failed_as(what: str) -> Callable[[LrpilotError], str]:
    """A service's refusal of ``what`` as one line: "WHAT failed (STATUS): detail"."""

    def failed(exc: LrpilotError) -> str:
        status = f" ({exc.status_code})" if exc.status_code is not None else ""
        return f"{what} failed{status}: {detail_text(exc)}"

    return failed


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
