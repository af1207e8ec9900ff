"""``lrpilot runs | show | decisions | watch``: the everyday look at a service's runs, through
``lrpilot_client``; a Rich table each, or the service's fields with ``--json``. ``lrpilot
cooldown | retime``: an operator's decisions on a run (its decay started on demand, its
schedule given a new horizon)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lrpilot.cli._common import (
    DEFAULT_URL,
    Token,
    Url,
    client,
    fail,
    failed_as,
    service_errors,
)
from lrpilot_client import Client, Decision, Run

out = Console(soft_wrap=True)  # a hash or a run id never breaks across lines

RunId = Annotated[str, typer.Argument(help="the run's id")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
# the longest a watch's request waits for the next decision (the service allows 60 s)
WATCH_WAIT_S = 25.0
# a watch asks again no sooner than this after an answer that brought nothing new (a run whose
# steps are all certain, e.g. a pure schedule, answers a wait at once): never a busy loop
WATCH_MIN_ROUND_S = 1.0
STOP_S = 2.0  # after Ctrl-C, the longest a watch takes to end


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("decisions")(decisions)
    app.command("watch")(watch)
    app.command("cooldown")(cooldown)
    app.command("retime")(retime)


def jsonable(value: Any) -> Any:
    """A client's model as plain JSON: its fields by name, non-finite floats as the service
    writes them ("NaN", "Infinity"), times in ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _print_json(value: Any) -> None:
    # plain print, not rich: a pipe to jq gets exactly one JSON document
    typer.echo(json.dumps(jsonable(value), allow_nan=False))


def _lrs(lrs: Iterable[float]) -> str:
    return ", ".join(f"{x:.6g}" for x in lrs)


def _labels(labels: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def _label_filter(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--label takes name=value, got {item!r}")
        labels[name] = value
    return labels


def runs(
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help="only runs carrying this label, name=value (repeat: runs carrying all of them)",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="list at most this many", show_default=False)
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List the runs, in run id order, page after page (with --label: only those carrying
    every label given)."""
    labels = _label_filter(label)
    found: list[Run] = []
    with service_errors(url, failed_as("listing the runs")), client(url, token) as lrpilot:
        for run in lrpilot.iter_runs(labels, limit=min(limit or 1000, 1000)):
            found.append(run)
            if limit is not None and len(found) >= limit:
                break
    if as_json:
        _print_json(found)
        return
    table = Table(title=f"{len(found)} runs" if len(found) != 1 else "1 run")
    for column in ("run", "policy", "metric", "labels", "decisions", "last step", "lrs"):
        right = column in ("decisions", "last step")
        table.add_column(column, justify="right" if right else "left")
    for run in found:
        table.add_row(
            run.run_id,
            run.policy.ref,
            run.metric or "",
            _labels(run.labels),
            str(run.counts.decisions),
            "" if run.last_step is None else str(run.last_step),
            _lrs(run.lrs),
        )
    out.print(table)


def show(
    run_id: RunId, as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None
) -> None:
    """A run's summary: its policy and lrs now, its last step, every change of the lrs, and
    its best metric."""
    with service_errors(url, failed_as(f"show {run_id!r}")), client(url, token) as lrpilot:
        run = lrpilot.get_run(run_id)
        summary = lrpilot.summary(run_id)
    if as_json:
        _print_json({"run": run, "summary": summary})
        return
    best = summary.best
    best_text = (
        "none yet" if best.value is None else f"{best.value:.6g} at step {best.step} ({best.mode})"
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for name, value in (
        ("run", run.run_id),
        ("policy", run.policy.ref),
        ("params", json.dumps(dict(run.policy.params), sort_keys=True)),
        ("metric", run.metric or ""),
        ("labels", _labels(run.labels)),
        ("created", run.created_at.isoformat()),
        ("lrs", _lrs(summary.lrs)),
        ("base lrs", _lrs(run.base_lrs)),
        ("steps", _steps(summary.first_step, summary.last_step)),
        ("last step", "none yet" if summary.last_step is None else str(summary.last_step)),
        ("decisions", f"{summary.decisions} ({summary.superseded} superseded by rewinds)"),
        ("best", f"{run.metric or 'metric'} {best_text}"),
        ("head", summary.head_hash),
    ):
        facts.add_row(name, value)
    out.print(facts)
    if summary.range_test:
        out.print(f"range test: {json.dumps(dict(summary.range_test))}", markup=False)
    if not summary.lr_changes:
        out.print("no change of the lrs yet")
        return
    table = Table(title="changes of the lrs")
    table.add_column("seq", justify="right")
    table.add_column("step", justify="right")
    table.add_column("action")
    table.add_column("lrs")
    for change in summary.lr_changes:
        table.add_row(str(change.seq), str(change.step), change.action, _lrs(change.lrs))
    out.print(table)


def cooldown(
    run_id: RunId,
    at_step: Annotated[
        int,
        typer.Option("--at-step", min=0, help="the step the decay starts at", show_default=False),
    ],
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="how many steps it lasts", show_default=False)
    ],
    shape: Annotated[
        str | None,
        typer.Option(help="the decay's shape (wsd@1: linear, cosine, 1-sqrt, exponential, step)"),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="why, logged in the entry", show_default=False)
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Start a run's decay at a later step (a cooldown on demand: WSD's end of the stable
    phase), logged with your token's name and the reason."""
    with service_errors(url, failed_as(f"cooldown {run_id!r}")), client(url, token) as lrpilot:
        done = lrpilot.cooldown(run_id, at_step, steps, shape, reason)
    if as_json:
        _print_json(done)
        return
    _print_asked(done.decision)


def retime(
    run_id: RunId,
    at_step: Annotated[
        int,
        typer.Option(
            "--at-step", min=0, help="the step the new timing applies from", show_default=False
        ),
    ],
    horizon: Annotated[
        int, typer.Option(min=1, help="the step the schedule now ends at", show_default=False)
    ],
    mode: Annotated[
        str,
        typer.Option(help="keep_lr (the decay fitted from the lr at --at-step) or keep_fraction"),
    ] = "keep_lr",
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Give a run's schedule a new horizon without a jump in lr (`lrpilot replay BUNDLE
    --retime AT:HORIZON:MODE` shows what it would do first)."""
    with service_errors(url, failed_as(f"retime {run_id!r}")), client(url, token) as lrpilot:
        done = lrpilot.retime(run_id, at_step, horizon, mode)
    if as_json:
        _print_json(done)
        return
    _print_asked(done.decision)


def _print_asked(entry: Decision | None) -> None:
    """An operator's entry, or that it was in force already (a retry logs nothing new)."""
    if entry is None:
        out.print("already in force: nothing new logged")
    else:
        out.print(f"seq {entry.seq}: {entry.reason}", markup=False)


def _steps(first: int | None, last: int | None) -> str:
    return "none yet" if last is None else f"{first} to {last}"


def decisions(
    run_id: RunId,
    action: Annotated[
        str | None,
        typer.Option(help='only this action, e.g. "reduce" or "rewind"', show_default=False),
    ] = None,
    from_step: Annotated[
        int | None, typer.Option(min=0, help="from this step (included)", show_default=False)
    ] = None,
    to_step: Annotated[
        int | None, typer.Option(min=0, help="to this step (included)", show_default=False)
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """A run's decision log, oldest first, page after page (superseded entries marked)."""
    with service_errors(url, failed_as(f"decisions of {run_id!r}")), client(url, token) as lrpilot:
        found = list(
            lrpilot.iter_decisions(run_id, action, limit=1000, from_step=from_step, to_step=to_step)
        )
    if as_json:
        _print_json(found)
        return
    table = _decision_table(f"{run_id}: {len(found)} decisions")
    for decision in found:
        _add_decision(table, decision)
    out.print(table)


def _decision_table(title: str | None) -> Table:
    table = Table(title=title)
    table.add_column("seq", justify="right")
    table.add_column("step", justify="right")
    table.add_column("value", justify="right")
    table.add_column("action")
    table.add_column("lrs")
    table.add_column("reason")
    return table


def _add_decision(table: Table, d: Decision) -> None:
    value = "" if d.value is None else f"{d.value:.6g}"
    table.add_row(str(d.seq), str(d.step), value, d.action, _lrs(d.lrs), d.reason)


def _decision_line(d: Decision) -> str:
    value = "" if d.value is None else f" value {d.value:.6g}"
    return f"seq {d.seq} step {d.step}{value}: {d.action}, lrs {_lrs(d.lrs)} ({d.reason})"


def watch(
    run_id: RunId,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Print each new decision of a run as it is made, until Ctrl-C (one line each; with
    --json, one JSON object a line). Waits on the service (long polls), never spins."""
    previous = _stop_on_ctrl_c()
    try:
        with service_errors(url, failed_as(f"watch {run_id!r}")), client(url, token) as lrpilot:
            seen = lrpilot.get_run(run_id).last_seq
            if not as_json:
                out.print(f"watching {run_id} after seq {seen} (Ctrl-C to stop)", markup=False)
            while True:
                seen = _watch_round(lrpilot, run_id, seen, as_json)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _stop_on_ctrl_c() -> Any:
    """Ctrl-C ends a watch at once, whatever it was doing: a KeyboardInterrupt, and if closing
    the connection after it does not end the process within ``STOP_S`` (an interrupt at an
    unlucky instant can leave a lock of the connection pool held), an exit. Installed even
    where SIGINT was ignored (a process started in the background inherits that). The
    handler before, to restore (None: not the main thread, nothing installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def end() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    def stop(signum: int, frame: Any) -> None:
        deadline = threading.Timer(STOP_S, end)
        deadline.daemon = True
        deadline.start()
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, stop)


def _watch_round(lrpilot: Client, run_id: str, seen: int, as_json: bool) -> int:
    """Print what came after seq `seen`, then wait for the run's next step: the last seq
    printed."""
    began = time.monotonic()
    # the run before the log: a decision made in between is at a later step, so the wait
    # below ends at once for it
    last_step = lrpilot.get_run(run_id).last_step
    fresh = False
    while True:
        page = lrpilot.decisions(run_id, after=seen, limit=1000)
        for decision in page.items:
            fresh = True
            if as_json:
                _print_json(decision)
            else:
                out.print(_decision_line(decision), markup=False, highlight=False)
        if page.items:
            seen = page.items[-1].seq
        if page.next is None or not page.items:
            break
    if not fresh:
        # a rewind lowers the last step, so it is seen at the latest when this wait ends
        lrpilot.lr_at(run_id, 0 if last_step is None else last_step + 1, wait=WATCH_WAIT_S)
        if (idle := WATCH_MIN_ROUND_S - (time.monotonic() - began)) > 0:
            time.sleep(idle)
    return seen
