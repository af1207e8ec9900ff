"""``lrpilot plot``: a PNG of lr against training step, for a run spec or a live run.

    lrpilot plot SPEC.json --steps N [--values FILE] [--every K] [--linear] -o FILE.png
    lrpilot plot --from-run RUN_ID [--url URL] [--steps N] [--every K] -o FILE.png

From a spec (what ``PUT /v1/runs/{id}`` takes), offline: the metric stream, if any, is
replayed through the one replay loop (``lrpilot.replay``; no server), and every
plotted step ``s`` gets ``lrs_at(s)`` from the state in force at ``s`` (the state after the last
evaluation at or before ``s``; the initial state before the first), exactly as
``GET lr?step=N`` answers. From a live run: the lrs from ``GET /v1/runs/{id}/lrs``, the metric
and the decisions from its live branch (``GET /v1/runs/{id}/decisions``).

One curve a param group; a log y axis when the lrs span more than a decade (``--linear`` keeps
it linear); the metric on a second y axis (log when it is positive and spans more than three
decades: a loss that explodes, as in a range test); a vertical mark at each decision that
changed the lrs on its own (the first stop, or new lrs from any action but a schedule's own
ramp, "warmup" and "decay": a reduction); the policy and its params as the title, a sentence
(``describe``), wrapped between words.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from lrpilot.audit.simulate import Setup
from lrpilot.canonical import parse_float
from lrpilot.cli._common import DEFAULT_URL, Token, client, fail, writable
from lrpilot.policies import PolicyError
from lrpilot.policies.base import MAX_STEP
from lrpilot_client import Client, LrpilotError, NotFoundError, ServiceUnavailableError

PLOT_EXTRA = "pip install 'lrpilot[plot]'"
MAX_POINTS = 5_000_000  # plotted steps at the most: more asks for --every
LRS_PAGE = 10_000  # steps a GET /lrs answers at the most (the service's MAX_LRS_COUNT)
DECISIONS_PAGE = 1000
# actions that move the lrs as a schedule's own course, not as news: no mark for them
SCHEDULE_ACTIONS = frozenset({"warmup", "decay"})


class PlotError(ValueError):
    """What is wrong with the input, as one line for the user."""


@dataclass
class Series:
    """What a plot shows: the lrs at each plotted step, the evaluations, the marks."""

    title: str
    metric: str
    steps: list[int] = field(default_factory=list)
    lrs: list[tuple[float, ...]] = field(default_factory=list)  # one tuple a plotted step
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, value)
    marks: list[tuple[int, str]] = field(default_factory=list)  # (step, action)
    unit: str = "step"  # what the steps count (a run clocked in samples or tokens: those)


def changes_lrs(
    action: str, previous: Sequence[float], lrs: Sequence[float], last_action: str = ""
) -> bool:
    """A decision that changed the lrs on its own: the first stop (the ones after it repeat
    it), or new lrs from any action but a schedule's own ramp ("warmup", "decay")."""
    if action == "stop":
        return last_action != "stop"
    return action not in SCHEDULE_ACTIONS and list(previous) != list(lrs)


def plotted_steps(steps: int, every: int, extra: Sequence[int] = ()) -> list[int]:
    """0, every, 2 * every, ... and ``steps`` itself, with the ``extra`` steps (the
    evaluations', so that a change of lrs is drawn at its very step), in order."""
    if steps < 0:
        raise PlotError(f"--steps must be >= 0, got {steps}")
    if every < 1:
        raise PlotError(f"--every must be >= 1, got {every}")
    if steps // every + 1 > MAX_POINTS:
        raise PlotError(
            f"{steps // every + 1} steps to plot: more than {MAX_POINTS}; pass --every K to "
            "plot every K-th step"
        )
    chosen = set(range(0, steps + 1, every))
    chosen.add(steps)
    chosen.update(s for s in extra if 0 <= s <= steps)
    return sorted(chosen)


def describe(policy_id: str, params: dict[str, Any]) -> str:
    """A policy and its params as a person reads them, e.g. "plateau@1 with factor 0.5, patience
    3" or "sequence@1 with phases linear@1 (start_factor 0.01, total_iters 1000) until_step
    1000, then plateau@1 (patience 3)": the names the spec uses, its numbers as it wrote them."""
    return f"{policy_id} with {_params(params)}" if params else f"{policy_id} (its defaults)"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key} {_value(key, value)}" for key, value in params.items())


def _value(key: str, value: Any) -> str:
    if isinstance(value, dict):
        if {"name", "version"} <= value.keys():  # a nested policy (sequence, scaled)
            inner = value.get("params") or {}
            ref = f"{value['name']}@{value['version']}"
            return f"{ref} ({_params(inner)})" if inner else ref
        if "policy" in value:  # a phase: its policy, then when it ends
            rest = {k: v for k, v in value.items() if k != "policy"}
            policy = _value("policy", value["policy"])
            return f"{policy} {_params(rest)}" if rest else policy
        return f"({_params(value)})"
    if isinstance(value, list):
        if key == "phases":  # they follow one another
            return ", then ".join(_value(key, v) for v in value)
        return f"[{', '.join(_value(key, v) for v in value)}]"  # min_lr per group, say
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


# -- offline, from a spec ------------------------------------------------------------------------


def read_spec(path: Path) -> tuple[Setup, dict[str, Any]]:
    """The spec in ``path`` (a run spec as PUT /v1/runs/{id} takes it), validated as the service
    validates it: (setup, the params as given)."""
    from lrpilot.spec import RunSpec as RunIn

    doc = _read_json(path)
    try:
        spec = RunIn.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise PlotError(f"{path}: not a run spec: {problems}") from None
    try:
        setup = Setup.of(
            spec.policy.name,
            spec.policy.version,
            dict(spec.policy.params),
            spec.base_lrs,
            spec.metric or "metric",
        )
    except PolicyError as exc:
        raise PlotError(f"{path}: invalid spec: {exc}") from None
    return setup, dict(spec.policy.params)


def read_values(path: Path) -> list[tuple[int, float]]:
    """A metric stream: lines ``step value`` (blank lines and ``#`` comments skipped; a value
    may be nan, inf, -inf), or JSON ``[[step, value], ...]`` (a value may be a number or one
    of "NaN", "Infinity", "-Infinity"). Steps are integers >= 0, strictly increasing."""
    text = _read_text(path)
    stream = _json_stream(path, text) if text.lstrip().startswith("[") else _line_stream(path, text)
    for n, ((before, _), (step, _)) in enumerate(itertools.pairwise(stream), start=2):
        if step <= before:
            raise PlotError(
                f"{path}: evaluation {n} is at step {step}, not above the step before it "
                f"({before}): one evaluation a step, in step order (as the service takes them)"
            )
    return stream


def _json_stream(path: Path, text: str) -> list[tuple[int, float]]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # nested too deep is not a stream either
        raise PlotError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise PlotError(f"{path}: a JSON stream is a list of [step, value] pairs")
    stream = []
    for n, item in enumerate(doc, start=1):
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and type(item[0]) is int
            and (
                (isinstance(item[1], int | float) and not isinstance(item[1], bool))
                or item[1] in ("NaN", "Infinity", "-Infinity")
            )
        )
        if not ok or not 0 <= item[0] <= MAX_STEP:
            raise PlotError(
                f"{path}: item {n} is not [step, value] (an integer step >= 0 and a number): "
                f"{json.dumps(item)[:80]}"
            )
        try:
            stream.append((item[0], parse_float(item[1])))
        except OverflowError:  # an integer no float can hold
            raise PlotError(f"{path}: item {n}: the value is too large for a float") from None
    return stream


def _line_stream(path: Path, text: str) -> list[tuple[int, float]]:
    stream = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        try:
            if len(fields) != 2:
                raise ValueError
            step, value = int(fields[0]), float(fields[1])
        except ValueError:
            raise PlotError(
                f"{path} line {n}: expected 'step value' (an integer step and a number), "
                f"got {raw.strip()[:80]!r}"
            ) from None
        if not 0 <= step <= MAX_STEP:
            raise PlotError(f"{path} line {n}: step {step} is not in 0..{MAX_STEP}")
        stream.append((step, value))
    return stream


def spec_series(
    setup: Setup,
    steps: int,
    stream: Sequence[tuple[int, float]] = (),
    every: int = 1,
    params: dict[str, Any] | None = None,
) -> Series:
    """The plot of a spec, offline: ``stream`` (``(step, value)``, in step order) replayed
    through the policy, and at each plotted step ``s`` the policy's ``lrs_at(s)`` from the
    state in force at ``s``. Evaluations past ``steps`` are not replayed."""
    policy, resolved = setup.policy, setup.params
    shown = params if params is not None else resolved.model_dump()
    series = Series(
        title=describe(setup.policy_id, shown),
        metric=setup.metric,
    )
    evaluations = [(s, v) for s, v in stream if s <= steps]
    replay = setup.replay()  # the one replay loop, as the service's what-if runs
    state = replay.state()
    pending = iter(evaluations)
    upcoming = next(pending, None)
    for s in plotted_steps(steps, every, [e for e, _ in evaluations]):
        while upcoming is not None and upcoming[0] <= s:
            step, value = upcoming
            before, last_action = replay.stepper.lrs, replay.stepper.action
            action = replay.observe(step, value)
            state = replay.state()
            series.evaluations.append((step, value))
            if changes_lrs(action, before, replay.stepper.lrs, last_action):
                series.marks.append((step, action))
            upcoming = next(pending, None)
        series.steps.append(s)
        series.lrs.append(policy.lrs_at(resolved, state, s))
    return series


# -- a live run ----------------------------------------------------------------------------------


def run_series(lrpilot: Client, run_id: str, steps: int | None, every: int = 1) -> Series:
    """The plot of a live run: its lrs as the service answers them (GET /lrs), its metric and
    marks from the decisions of its live branch."""
    with _service_errors(lrpilot, run_id):
        run = lrpilot.get_run(run_id)
        if steps is None:
            if run.last_step is None:
                raise PlotError(f"run {run_id!r} has no decision yet: give --steps")
            steps = run.last_step
        policy = run.policy
        series = Series(
            title=f"run {run_id}: {describe(policy.ref, dict(policy.params))}",
            metric=run.metric or "metric",
            unit="step" if run.clock == "steps" else run.clock,
        )
        last_action = ""
        live = lrpilot.iter_decisions(run_id, limit=DECISIONS_PAGE, to_step=steps, superseded=False)
        for d in live:
            if d.action == "rewind":
                continue
            if d.action in ("scale", "checkpoint", "start_cooldown", "retime"):
                # no metric: a resize, a checkpoint saved, a decay or a horizon asked for
                series.marks.append((d.step, d.action))
                continue
            assert d.value is not None  # a decision's: the other kinds have none
            series.evaluations.append((d.step, d.value))
            if changes_lrs(d.action, d.previous_lrs, d.lrs, last_action):
                series.marks.append((d.step, d.action))
            last_action = d.action
        wanted = plotted_steps(steps, every, [s for s, _ in series.evaluations])
        by_step = _served_lrs(lrpilot, run_id, wanted, every)
    series.steps = wanted
    series.lrs = [by_step[s] for s in wanted]
    return series


@contextlib.contextmanager
def _service_errors(lrpilot: Client, run_id: str) -> Iterator[None]:
    """The client's errors as a `PlotError`: one line for the user."""
    try:
        yield
    except NotFoundError:
        raise PlotError(f"run {run_id!r} not found at {lrpilot.base_url}") from None
    except ServiceUnavailableError as exc:
        if exc.status_code is None:
            raise PlotError(f"cannot reach {lrpilot.base_url}: {exc}") from None
        raise PlotError(str(exc)) from None
    except LrpilotError as exc:
        raise PlotError(str(exc)) from None


def _served_lrs(
    lrpilot: Client, run_id: str, wanted: list[int], every: int = 1
) -> dict[int, tuple[float, ...]]:
    """The lrs of the ``wanted`` steps: those on the grid of ``every`` read ``every`` steps
    apart (a run clocked in tokens: a few points over 10**12 steps), the others (evaluations
    between) a range of consecutive steps at a time; ranges holding none of them are not
    asked for."""
    out: dict[int, tuple[float, ...]] = {}
    for stride, steps in ((every, [s for s in wanted if s % every == 0]),
                          (1, [s for s in wanted if s % every])):  # fmt: skip
        i = 0
        while i < len(steps):
            block = lrpilot.lrs_range(run_id, steps[i], LRS_PAGE, stride)
            while i < len(steps) and block.holds(steps[i]):
                out[steps[i]] = block.at(steps[i])
                i += 1
    return out


# -- drawing -------------------------------------------------------------------------------------


def use_log_scale(lrs: Sequence[tuple[float, ...]]) -> bool:
    """True when every lr is positive and they span more than a decade."""
    values = [x for row in lrs for x in row]
    if not values or min(values) <= 0.0:
        return False
    return max(values) / min(values) > 10.0


def draw(series: Series, path: Path, linear: bool = False) -> None:
    """Write the plot to ``path`` (PNG). Raises PlotError when matplotlib is missing."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    try:
        groups = len(series.lrs[0]) if series.lrs else 0
        for g in range(groups):
            ax.step(
                series.steps,
                [row[g] for row in series.lrs],
                where="post",
                linewidth=2,
                label=f"lr (group {g})" if groups > 1 else "lr",
            )
        if not linear and use_log_scale(series.lrs):
            ax.set_yscale("log")
        ax.set_xlabel(series.unit)
        ax.set_ylabel("lr")
        seen: set[str] = set()
        for step, action in series.marks:
            ax.axvline(
                step,
                color="tab:red" if action == "stop" else "tab:purple",
                linestyle=":",
                linewidth=1,
                label=action if action not in seen else None,
            )
            seen.add(action)
        handles, labels = ax.get_legend_handles_labels()
        if series.evaluations:
            metric_ax = ax.twinx()
            finite = [(s, v) for s, v in series.evaluations if math.isfinite(v)]
            if finite:
                metric_ax.plot(
                    [s for s, _ in finite],
                    [v for _, v in finite],
                    color="grey",
                    alpha=0.6,
                    linewidth=1,
                    marker="." if len(finite) <= 200 else None,
                    label=series.metric,
                )
            bad = [s for s, v in series.evaluations if not math.isfinite(v)]
            if bad:  # drawn at the top of the axis: they have no place on it
                metric_ax.plot(
                    bad,
                    [1.0] * len(bad),
                    "x",
                    color="tab:red",
                    transform=metric_ax.get_xaxis_transform(),
                    clip_on=False,
                    label=f"{series.metric} not finite",
                )
            positive = [v for _, v in finite]
            if positive and min(positive) > 0.0 and max(positive) / min(positive) > 1000.0:
                metric_ax.set_yscale("log")  # a loss that explodes (a range test)
            metric_ax.set_ylabel(series.metric)
            more_handles, more_labels = metric_ax.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels, loc="best", fontsize="small")
        # between words only: a long value stays whole on its line
        lines = textwrap.wrap(series.title, 110, break_long_words=False, break_on_hyphens=False)
        ax.set_title("\n".join(lines), fontsize="medium")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # a file, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(f"plot needs matplotlib: {PLOT_EXTRA}") from None
    return plt


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlotError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlotError(f"{path}: cannot read: {exc}") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PlotError(f"{path}: not valid JSON: {exc}") from None


# -- the command ---------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)


def plot(
    output: Annotated[Path, typer.Option("-o", "--output", help="the PNG to write")],
    spec: Annotated[
        Path | None,
        typer.Argument(
            help='a run spec as PUT /v1/runs/{id} takes it: {"policy": {"name", "version", '
            '"params"}, "base_lrs": [...], "metric"?}',
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="plot training steps 0..N (with --from-run: default the run's last step)",
            show_default=False,
        ),
    ] = None,
    values: Annotated[
        Path | None,
        typer.Option(
            help="a metric stream posted as evaluations: lines 'step value', or JSON "
            "pairs \\[\\[step, value], ...]",
            show_default=False,
        ),
    ] = None,
    every: Annotated[
        int, typer.Option(help="plot every K-th step (and every evaluation's step)")
    ] = 1,
    linear: Annotated[
        bool, typer.Option("--linear", help="a linear lr axis, even over more than a decade")
    ] = False,
    from_run: Annotated[
        str | None,
        typer.Option("--from-run", help="plot a live run of the service at --url instead"),
    ] = None,
    url: Annotated[
        str,
        typer.Option("--url", envvar="LRPILOT_URL", help="the service, for --from-run"),
    ] = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Draw lr against training step to a PNG: from a run spec (offline, with an optional
    metric stream replayed through the policy), or from a live run (--from-run)."""
    writable(output, "-o")
    try:
        _pyplot()  # before any work: say now that matplotlib is missing
        if from_run is not None:
            if spec is not None or values is not None:
                raise PlotError("--from-run plots a live run: give no SPEC.json and no --values")
            with client(url, token) as lrpilot:
                series = run_series(lrpilot, from_run, steps, every)
        else:
            if spec is None:
                raise PlotError("give SPEC.json (a run spec), or --from-run RUN_ID")
            if steps is None:
                raise PlotError("give --steps N: the plot covers training steps 0..N")
            setup, given = read_spec(spec)
            stream = read_values(values) if values is not None else []
            series = spec_series(setup, steps, stream, every, given)
        draw(series, output, linear)
    except PlotError as exc:
        fail(str(exc))
    except OSError as exc:  # the PNG could not be written
        fail(f"{output}: cannot write: {exc}")
    typer.echo(
        f"wrote {output}: {len(series.steps)} steps, {len(series.evaluations)} evaluations, "
        f"{len(series.marks)} marks"
    )
