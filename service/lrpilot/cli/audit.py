"""``lrpilot export | import | verify | keygen | simulate``: audit and what-if from the command
line.

``verify`` and ``simulate`` (what-if; ``replay`` is its former name, kept as an alias) work on a
bundle file alone, with no server and no database; ``export`` and ``import`` talk to a running
service, through ``lrpilot_client``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lrpilot.audit.bundle import Mismatch, bundle_run, entry_binding, live_branch, read_lines
from lrpilot.audit.parallel import check_bundle_file, default_workers
from lrpilot.audit.signing import SigningKeyError, keygen, load_public_key
from lrpilot.audit.simulate import Comparison, Retime, Setup, compare, run_setup
from lrpilot.audit.verify import BundleCheck
from lrpilot.cli._common import (
    DEFAULT_URL,
    Token,
    Url,
    client,
    detail_text,
    fail,
    failed_as,
    readable,
    service_errors,
    writable,
)
from lrpilot.policies import PolicyError
from lrpilot.settings import Settings
from lrpilot.spec import RunStored
from lrpilot_client import LrpilotError

T = TypeVar("T", str, bytes)
out = Console(soft_wrap=True)  # a hash or a path never breaks across lines
err = Console(stderr=True, soft_wrap=True)

BundleFile = Annotated[Path, typer.Argument(help="a bundle (NDJSON), as `lrpilot export` writes")]
PROGRESS_FROM_BYTES = 4 << 20  # a bar only for files that take more than a moment


def _lines_with_progress(
    path: Path, progress: Progress | None, label: str, read: Callable[[Path], Iterator[T]]
) -> Callable[[], Iterator[T]]:
    """A reopenable line source (``read_raw`` or ``read_lines``); with ``progress``, a bar a
    pass over the file."""

    def open_lines() -> Iterator[T]:
        if progress is None:
            yield from read(path)
            return
        task = progress.add_task(label, total=path.stat().st_size)
        for line in read(path):
            progress.advance(task, len(line))  # bytes, or characters: near enough for a bar
            yield line
        progress.update(task, visible=False)

    return open_lines


def _checked(
    bundle: Path, head: str | None = None, keys: Sequence[Any] = (), workers: int = 1
) -> BundleCheck:
    """The bundle checked as `lrpilot verify` checks it, its lines no longer than
    LRPILOT_MAX_BUNDLE_LINE_BYTES (as `serve` reads an import); a bar on a large file."""
    progress = _progress(bundle)
    with progress or contextlib.nullcontext():
        advance = None
        if progress is not None:
            task = progress.add_task("verifying", total=bundle.stat().st_size)
            advance = functools.partial(progress.advance, task)
        return check_bundle_file(
            bundle,
            head,
            keys,
            workers=workers,
            max_line=Settings().max_bundle_line_bytes,
            progress=advance,
        )


def _progress(path: Path) -> Progress | None:
    if path.stat().st_size < PROGRESS_FROM_BYTES or not err.is_terminal:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_)
    app.command("verify")(verify)
    app.command("keygen")(keygen_)
    app.command("simulate")(simulate)
    app.command("replay", help="The former name of `lrpilot simulate` (an alias).")(simulate)


def export(
    run_id: Annotated[str, typer.Argument(help="the run to export")],
    url: Url = DEFAULT_URL,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="the file to write (default: stdout)")
    ] = None,
    token: Token = None,
) -> None:
    """Download a run as a bundle: its spec, every decision (both branches of a rewound run),
    and a trailer with the head hash (signed when the service has a signing key)."""
    if output:
        writable(output, "-o")

    with service_errors(url, failed_as(f"export of {run_id!r}")), client(url, token) as lrpilot:
        lrpilot.export(run_id, output if output else sys.stdout.buffer)
    if output:
        err.print(f"wrote {output}", markup=False)


def import_(
    bundle: BundleFile,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Upload a bundle to a service: it is checked whole (every link, every decision replayed
    through its policy version) before anything is stored."""
    readable(bundle)

    def failed(exc: LrpilotError) -> str:
        return f"import refused ({exc.status_code}): {detail_text(exc)}"

    with service_errors(url, failed), client(url, token) as lrpilot:
        imported = lrpilot.import_bundle(bundle)
    run = imported.run
    what = "imported" if imported.created else "already there, identical:"
    out.print(
        f"{what} run {run.run_id}: {run.counts.decisions} decisions, head {run.head_hash}",
        markup=False,
    )


def verify(
    bundle: BundleFile,
    head: Annotated[
        str | None,
        typer.Option(help="the head hash you recorded: the log must end exactly there"),
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            help="a public key (repeat for several): every decision must be signed by one of "
            "them (the service's that decided it, or the one it was imported with)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-j",
            min=1,
            max=64,
            help="processes that check a long log's regions side by side (default: the "
            "cores this process may use; 1: one process)",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="a torch checkpoint (.pt) holding an LrpilotScheduler's state: the entry it "
            "was saved under must be this log's, on its live branch (needs torch)"
        ),
    ] = None,
    entry: Annotated[
        str | None,
        typer.Option(
            metavar="SEQ:HASH",
            help="a checkpoint's seq and head_hash, checked as --checkpoint checks them",
        ),
    ] = None,
) -> None:
    """Check a bundle offline: every link of the hash chain, every decision replayed through
    its pinned policy version, both branches of a rewound run; exit 1 at the first mismatch.
    With --checkpoint or --entry, also that the checkpoint is bound to this log."""
    readable(bundle)
    if checkpoint is not None and entry is not None:
        fail("give --checkpoint or --entry, not both")
    bound = _parse_entry(entry) if entry is not None else None
    if checkpoint is not None:
        readable(checkpoint)
        bound = _checkpoint_entry(checkpoint, bundle_run(lambda: read_lines(bundle)).run_id)
    try:
        keys = [load_public_key(path) for path in public_key or ()]
    except SigningKeyError as exc:
        fail(str(exc))
    report = _checked(bundle, head, keys, workers or default_workers()).report
    if report.ok and bound is not None:
        why = entry_binding(lambda: read_lines(bundle), *bound)
        if why is not None:
            report.ok = False
            report.mismatch = Mismatch(
                None, bound[0], f"the checkpoint is not bound to this log: {why}"
            )
        else:
            report.notes.append(f"the checkpoint's entry {bound[0]} is on the live branch")
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    elif report.ok:
        extra = (
            f" ({report.superseded} superseded by {report.rewinds} rewinds)"
            if report.rewinds
            else ""
        )
        out.print(f"[green]OK[/] {report.count} decisions{extra}, head {report.head_hash}")
        for note in report.notes:
            out.print(f"   {note}", markup=False)
    else:
        assert report.mismatch is not None
        out.print("[red]FAILED[/] ", end="")
        out.print(str(report.mismatch), markup=False)
        m = report.mismatch
        if m.expected is not None or m.found is not None:
            out.print(f"   expected: {_short(m.expected)}", markup=False)
            out.print(f"   found:    {_short(m.found)}", markup=False)
    raise typer.Exit(0 if report.ok else 1)


def _parse_entry(text: str) -> tuple[int, str]:
    seq, sep, hash_ = text.partition(":")
    if not sep or not seq.isdigit() or len(hash_) != 64 or hash_.strip("0123456789abcdef"):
        fail(f"--entry must be SEQ:HASH (a seq, a colon, a 64-hex-digit hash), got {text!r}")
    return int(seq), hash_


def _checkpoint_entry(path: Path, run_id: str) -> tuple[int, str]:
    """The (seq, head_hash) of the LrpilotScheduler state of run ``run_id`` in the torch
    checkpoint ``path``: looked for anywhere in it (a scheduler's own file, Lightning's
    lr_schedulers or callbacks, a dict of the job's own)."""
    try:
        import torch
    except ImportError:
        fail("reading a torch checkpoint needs torch; or give --entry SEQ:HASH (its seq and "
             "head_hash)")  # fmt: skip
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of anything, or not one: torch's own wording
        fail(f"{path}: not a torch checkpoint torch.load(weights_only=True) reads: {exc}")
    states = list(_scheduler_states(saved))
    if not states:
        fail(f"{path} holds no LrpilotScheduler state (a dict with 'lrpilot', 'run_id')")
    ours = [s for s in states if run_id in (s.get("run_id"), s.get("root_run_id"))]
    if not ours:
        fail(f"{path} is a checkpoint of run {states[0].get('run_id')!r}; the bundle is of run "
             f"{run_id!r}")  # fmt: skip
    seq, head = ours[0].get("seq"), ours[0].get("head_hash")
    if not isinstance(seq, int) or not isinstance(head, str):
        fail(f"{path}: its scheduler state has no seq and head_hash (saved before any entry, "
             "or by a version that did not record them)")  # fmt: skip
    return seq, head


def _scheduler_states(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    if depth > 8:  # a checkpoint's nesting is shallow; a deeper one is not searched
        return
    if isinstance(value, dict):
        if value.get("lrpilot") == 1 and "run_id" in value:
            yield value
            return
        for item in value.values():
            yield from _scheduler_states(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _scheduler_states(item, depth + 1)


def keygen_(
    prefix: Annotated[
        Path, typer.Argument(help="writes PREFIX.pem (private) and PREFIX.pub.pem (public)")
    ] = Path("lrpilot-signing"),
) -> None:
    """Write an Ed25519 key pair for signed heads: the service signs with the private key
    (LRPILOT_SIGNING_KEY=PREFIX.pem), auditors check with the public one."""
    if prefix.is_dir():
        fail(f"{prefix} is a directory; give a prefix in it, e.g. {prefix / 'lrpilot-signing'}")
    private, public = Path(f"{prefix}.pem"), Path(f"{prefix}.pub.pem")
    for path in (private, public):
        writable(path, "PREFIX")
        if path.exists():
            fail(f"{path} exists; not overwriting a key")
    key_id = keygen(private, public)
    out.print(f"key {key_id}: private {private} (mode 600), public {public}", markup=False)
    out.print(
        f"serve with LRPILOT_SIGNING_KEY={private}; verify with --public-key {public}", markup=False
    )


def simulate(
    bundle: BundleFile,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="a param to change, name=value (repeat for several); a dotted name is a "
            "path into nested params: groups.1.policy.params.patience=6",
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="replay under another policy version, name@version")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="draw both lr curves and the metric against step to this PNG"),
    ] = None,
    rows: Annotated[int, typer.Option(help="differences to list at most")] = 30,
    retime: Annotated[
        str | None,
        typer.Option(
            help="what a retime would do: AT:HORIZON:MODE (mode keep_lr or keep_fraction), "
            "applied before the first observation at or after AT",
            show_default=False,
        ),
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="replay without checking the bundle first (a broken or tampered one too)",
        ),
    ] = False,
) -> None:
    """What if: replay a recorded run's metric stream under other params and show, side by
    side, where the decisions would differ. Offline: the bundle is all it needs (`lrpilot
    replay` is the same command under its former name)."""
    readable(bundle)
    if plot is not None:
        writable(plot, "--plot")
    overrides = dict(_assignment(item) for item in set_ or [])
    try:
        what_if = None if retime is None else Retime.parse(retime)
    except ValueError as exc:
        fail(str(exc))
    if not no_verify:
        _refuse_broken(bundle)
    try:
        run = bundle_run(lambda: read_lines(bundle))
        setup = run_setup(run, overrides, policy)
    except Mismatch as exc:
        fail(f"{bundle}: {exc}")
    except (PolicyError, ValueError) as exc:
        fail(str(exc))
    progress = _progress(bundle)
    try:
        with progress or contextlib.nullcontext():
            lines = _lines_with_progress(bundle, progress, "replaying", read_lines)
            result = compare(setup, live_branch(lines), keep=rows, retime=what_if)
    except Mismatch as exc:
        fail(f"{bundle}: {exc}")
    except PolicyError as exc:  # the retime cannot be applied to this run
        fail(f"--retime {retime}: {exc}")
    shown = overrides if retime is None else {**overrides, "retime": retime}
    _print_comparison(run, setup, shown, result, rows)
    if plot is not None:
        _plot(run, setup, shown, result, plot)
        out.print(f"plot: {plot}", markup=False)


def _refuse_broken(bundle: Path) -> None:
    """A what-if of a log that does not verify would compare against decisions the policy
    never made: refuse it, with what `lrpilot verify` says."""
    report = _checked(bundle, workers=default_workers()).report
    if report.mismatch is not None:
        fail(
            f"{bundle} does not verify: {report.mismatch} "
            "(see `lrpilot verify`; --no-verify replays it anyway)"
        )


def _assignment(item: str) -> tuple[str, Any]:
    name, eq, raw = item.partition("=")
    if not eq or not name:
        fail(f"--set takes name=value, got {item!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a bare word: a string param (mode=max)
    return name, value


def _print_comparison(
    run: RunStored, setup: Setup, overrides: dict[str, Any], result: Comparison, rows: int
) -> None:
    changed = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "no param changed"
    out.print(
        f"run {run.run_id}: {result.count} observations replayed under {setup.policy_id} "
        f"({changed})",
        markup=False,
    )
    if not result.differing:
        out.print("[green]the same decisions at every step[/]")
    else:
        table = Table(
            title=f"where the decisions differ (first {min(rows, result.differing)} "
            f"of {result.differing})"
        )
        table.add_column("step", justify="right")
        table.add_column("value", justify="right")
        table.add_column("recorded")
        table.add_column("what-if")
        for diff in result.diffs[:rows]:
            table.add_row(
                str(diff.step),
                repr(diff.value),
                _decision(*diff.recorded, diff.recorded_extras),
                _decision(*diff.replayed, diff.replayed_extras),
            )
        out.print(table)
    out.print(
        f"lr changes: recorded {result.recorded_changes}, what-if {result.replayed_changes}; "
        f"final lrs: recorded {list(result.recorded_final)}, what-if "
        f"{list(result.replayed_final)}",
        markup=False,
    )


def _decision(
    action: str, lrs: tuple[float, ...], extras: Mapping[str, tuple[float, ...]] | None = None
) -> str:
    also = "".join(
        f"; {name} {', '.join(repr(x) for x in values)}" for name, values in (extras or {}).items()
    )
    return f"{action} {', '.join(repr(x) for x in lrs)}{also}"


def _plot(
    run: RunStored, setup: Setup, overrides: dict[str, Any], result: Comparison, path: Path
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # a file, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'lrpilot[plot]'")
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or setup.policy_id
    ax.step(result.steps, result.recorded_lr, where="post", label="recorded lr", linewidth=2)
    ax.step(
        result.steps,
        result.replayed_lr,
        where="post",
        label=f"what-if lr ({changed})",
        linestyle="--",
        linewidth=2,
    )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("lr (first param group)")
    metric_ax = ax.twinx()
    metric_ax.plot(
        result.steps,
        result.values,
        color="grey",
        alpha=0.5,
        linewidth=1,
        label=run.metric or "metric",
    )
    metric_ax.set_ylabel(run.metric or "metric")
    handles = ax.get_legend_handles_labels()
    metric_handles = metric_ax.get_legend_handles_labels()
    ax.legend(handles[0] + metric_handles[0], handles[1] + metric_handles[1], loc="best")
    ax.set_title(f"run {run.run_id}: recorded vs what-if")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"
