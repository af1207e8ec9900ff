"""What-if: a metric stream through a policy, stored nowhere; a recorded run against other params.

Pure (no I/O): ``POST /v1/simulate`` and ``lrpilot simulate`` share it, and both run the one
replay loop, ``lrpilot.replay.Replay``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lrpilot.audit.bundle import Asked, Recorded
from lrpilot.entries import Kind
from lrpilot.policies import Frozen, Policy, PolicyError, get_policy
from lrpilot.policies.base import Extras, Stepper, extras_of
from lrpilot.policies.retime import around
from lrpilot.replay import Replay
from lrpilot.spec import RunStored, scaled


def parse_policy(text: str) -> tuple[str, int]:
    """``name@version`` -> (name, version); ValueError with what is expected."""
    name, at, version = text.partition("@")
    if not at or not name or not version.isdigit():
        raise ValueError(f"a policy is name@version, e.g. plateau@1; got {text!r}")
    return name, int(version)


@dataclass(frozen=True)
class Retime:
    """A retime the what-if applies (``POST /v1/runs/{id}/retime``, before it is asked): at the
    first observation at or after ``at_step``, the schedule's end moves to ``horizon``."""

    at_step: int
    horizon: int
    mode: str

    @classmethod
    def parse(cls, text: str) -> Retime:
        """``AT:HORIZON:MODE`` (the CLI's --retime); ValueError saying what is expected."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ValueError(
                f"--retime takes AT:HORIZON:MODE, e.g. 5000:20000:keep_lr; got {text!r}"
            )
        return cls(int(parts[0]), int(parts[1]), parts[2])


# what a what-if replays: observations (step, value), and the operators' entries between them
Item = tuple[int, float] | Asked


def with_retime(items: Iterable[Item], retime: Retime | None) -> Iterator[Item]:
    """``items`` with ``retime`` (when given) before the first observation at or after its
    step, as the service would apply it there."""
    pending = retime
    for item in items:
        if pending is not None and isinstance(item, tuple) and item[0] >= pending.at_step:
            args = {"at_step": pending.at_step, "horizon": pending.horizon, "mode": pending.mode}
            yield Asked(Kind.RETIME.value, args, recorded=False)
            pending = None
        yield item


def _steppers(replay: Replay, items: Iterable[Item]) -> Iterator[Stepper]:
    """``replay.run`` over the observations of ``items``, each ``Asked`` applied where it
    comes, after the observations before it (``_apply``)."""
    rest = iter(items)
    asked: list[Asked] = []
    last: int | None = None

    def observations() -> Iterator[tuple[int, float]]:
        nonlocal last
        for item in rest:
            if isinstance(item, Asked):
                asked.append(item)
                return
            last = item[0]
            yield item

    while True:
        yield from replay.run(observations())
        if not asked:
            return
        _apply(replay, asked.pop(), last)


def _apply(replay: Replay, asked: Asked, last: int | None) -> None:
    """A cooldown or a retime, where the what-if stands (after the observation of step
    ``last``). One the run recorded but the what-if's params cannot take is left out (the
    what-if asks "other params", and under them it could not have been asked); one the what-if
    adds raises PolicyError, as the route would refuse it."""
    a, at = asked.args, 0 if last is None else last
    try:
        if asked.action == Kind.COOLDOWN:
            replay.cooldown(at, a["at_step"], a["steps"], a.get("shape"), last)
        else:
            replay.retime(at, a["at_step"], a["horizon"], a["mode"], last)
    except PolicyError:
        if not asked.recorded:
            raise


@dataclass(frozen=True)
class Setup:
    """A policy with resolved params and its initial state, ready to replay."""

    policy: Policy
    params: Frozen
    base_lrs: tuple[float, ...]
    metric: str

    @property
    def policy_id(self) -> str:
        return f"{self.policy.name}@{self.policy.version}"

    @classmethod
    def of(
        cls, name: str, version: int, params: dict[str, Any], base_lrs: Iterable[float], metric: str
    ) -> Setup:
        """PolicyError when the policy is unknown or refuses the params."""
        policy = around(get_policy(name, version))  # a what-if may retime it
        lrs = tuple(base_lrs)
        return cls(policy, policy.resolve(params, lrs), lrs, metric or "metric")

    def replay(self) -> Replay:
        """The one replay loop, from the policy's initial state."""
        return Replay(self.policy, self.params, self.base_lrs, self.metric)

    def decisions(
        self, stream: Iterable[Item], retime: Retime | None = None
    ) -> Iterator[dict[str, Any]]:
        """One decision a (step, value), with its reason: what the service would answer
        (with the cooldowns and retimes of ``stream`` applied where they come, and ``retime``,
        when given, as if it had been asked)."""
        replay = self.replay()
        previous = replay.stepper.lrs
        items = list(with_retime(stream, retime))
        pairs = [item for item in items if isinstance(item, tuple)]
        for (step, value), stepper in zip(pairs, _steppers(replay, items), strict=True):
            item: dict[str, Any] = {
                "step": step,
                "value": value,
                "action": stepper.action,
                "lrs": list(stepper.lrs),
                "previous_lrs": list(previous),
                "reason": stepper.reason(),
            }
            for name, values in extras_of(stepper).items():  # only what the policy schedules
                item[name] = list(values)
            yield item
            previous = stepper.lrs


def run_setup(run: RunStored, overrides: dict[str, Any], policy: str | None) -> Setup:
    """The run's own setup with ``overrides`` on its params, or under another policy."""
    spec = run.policy
    name, version = parse_policy(policy) if policy else (spec.name, spec.version)
    params = dict(spec.params) if (name, version) == (spec.name, spec.version) else {}
    for key, value in overrides.items():
        params = with_param(params, key, value)
    return Setup.of(name, version, params, run.base_lrs, run.metric or "metric")


def with_param(params: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``params`` with ``key`` set to ``value``, the others as they are. A dotted key is a path
    into nested params, list items by index: ``groups.1.policy.params.patience`` changes one
    group's policy (no param name has a dot). ValueError naming the first step that is not
    there."""
    *path, last = key.split(".")
    out = dict(params)
    node: Any = out
    for i, part in enumerate([*path, last]):
        where = ".".join([*path, last][:i]) or "the params"
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            index: str | int = int(part)
        elif isinstance(node, dict) and (part in node or i == len(path)):
            index = part
        else:
            raise ValueError(f"{key}: {where} has no {part!r}")
        if i == len(path):
            node[index] = value
        else:  # copied on the way down: the run's own params are not touched
            child = node[index]
            node[index] = (
                list(child)
                if isinstance(child, list | tuple)
                else dict(child)
                if isinstance(child, dict)
                else child
            )
            node = node[index]
    return out


@dataclass
class Diff:
    step: int
    value: float
    recorded: tuple[str, tuple[float, ...]]
    replayed: tuple[str, tuple[float, ...]]
    reason: str
    # what each scheduled beside the lrs (momentum, weight decay), when either did
    recorded_extras: Extras = field(default_factory=dict)
    replayed_extras: Extras = field(default_factory=dict)


@dataclass
class Comparison:
    """A recorded stream against its replay: the curves (first param group) for a plot, the
    first ``keep`` differences for a table, and counts."""

    steps: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))
    recorded_lr: array[float] = field(default_factory=lambda: array("d"))
    replayed_lr: array[float] = field(default_factory=lambda: array("d"))
    diffs: list[Diff] = field(default_factory=list)
    differing: int = 0
    recorded_changes: int = 0
    replayed_changes: int = 0
    recorded_final: tuple[float, ...] = ()
    replayed_final: tuple[float, ...] = ()

    @property
    def count(self) -> int:
        return len(self.steps)


def compare(
    setup: Setup,
    recorded: Iterable[Recorded | Asked],
    keep: int = 1000,
    progress: Callable[[int], None] | None = None,
    retime: Retime | None = None,
) -> Comparison:
    """Replay the recorded observations under ``setup`` (and ``retime``, when given); note
    where the decisions differ (action, lrs, or what they schedule beside the lrs).
    ``progress`` is called with the number of observations done, now and then."""
    result = Comparison()
    replay = setup.replay()
    last_recorded = last_replayed = replay.stepper.lrs
    tracked = bool(extras_of(replay.stepper))  # a policy that schedules extras: compare them
    pending: list[Recorded] = []

    def stream() -> Iterator[Item]:
        for rec in recorded:
            if isinstance(rec, Asked):  # the run's own cooldowns and retimes stand
                yield rec
                continue
            pending.append(rec)
            yield rec.step, rec.value

    for n, stepper in enumerate(_steppers(replay, with_retime(stream(), retime)), start=1):
        rec = pending.pop()
        # the recorded run's resizes apply to the what-if too: it asks "other params", not
        # "another world_size"
        lrs = stepper.lrs if rec.scale == 1.0 else tuple(scaled(stepper.lrs, rec.scale))
        result.steps.append(rec.step)
        result.values.append(rec.value)
        result.recorded_lr.append(rec.lrs[0])
        result.replayed_lr.append(lrs[0])
        result.recorded_changes += rec.lrs != last_recorded
        result.replayed_changes += lrs != last_replayed
        last_recorded, last_replayed = rec.lrs, lrs
        recorded_extras = rec.extras()
        replayed_extras = extras_of(stepper) if tracked else {}
        if rec.action != stepper.action or rec.lrs != lrs or recorded_extras != replayed_extras:
            result.differing += 1
            if len(result.diffs) < keep:
                result.diffs.append(
                    Diff(
                        rec.step,
                        rec.value,
                        (rec.action, rec.lrs),
                        (stepper.action, lrs),
                        stepper.reason(),
                        recorded_extras,
                        replayed_extras,
                    )
                )
        if progress is not None and n % 10_000 == 0:
            progress(n)
    result.recorded_final, result.replayed_final = last_recorded, last_replayed
    if progress is not None:
        progress(result.count)
    return result
