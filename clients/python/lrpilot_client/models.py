"""Typed results of the lrpilot API and the JSON conversions both clients share.

Plain frozen dataclasses rather than pydantic: the client must depend on httpx only, so that a
training image needs none of the server's packages. Parsing is strict: a field of the wrong type
raises `ResponseError` naming the field, because a silently wrong learning rate is worse than a
loud failure.

Non-finite floats: the service writes NaN and ±inf as the strings "NaN", "Infinity",
"-Infinity" (its responses are strict JSON), and the client sends them the same way (httpx
refuses to write NaN into a JSON body). `encode_float` and `decode_float` are that convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from .errors import ResponseError

__all__ = [
    "Acknowledged",
    "Applied",
    "Best",
    "CheckpointDeclared",
    "CheckpointInfo",
    "Checkpoints",
    "Cooled",
    "Counts",
    "Decision",
    "Health",
    "Imported",
    "LrAt",
    "LrChange",
    "LrsAhead",
    "LrsInForce",
    "LrsRange",
    "NewToken",
    "Page",
    "PendingObservation",
    "Plot",
    "PlotBranch",
    "PlotBucket",
    "PlotEvent",
    "Policy",
    "PolicyInfo",
    "Resized",
    "Retimed",
    "Rewound",
    "Run",
    "RunPage",
    "Simulated",
    "SimulatedDecision",
    "Summary",
    "TokenInfo",
    "Verified",
    "applied_hash",
    "decode_float",
    "encode_float",
]

T = TypeVar("T")

_NON_FINITE_NAMES: dict[str, float] = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}


def encode_float(value: float) -> float | str:
    """Return `value` as strict JSON can carry it: a number, or "NaN"/"Infinity"/"-Infinity"."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def decode_float(raw: object, where: str = "value") -> float:
    """Read a float the service wrote as a JSON number or as one of the non-finite strings.

    Booleans are refused although Python counts them as ints: `true` where a float belongs means
    the contract is broken, not that the rate is 1.0.
    """
    if isinstance(raw, bool):
        raise ResponseError(f"{where}: expected a number, got {raw!r}")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str) and raw in _NON_FINITE_NAMES:
        return _NON_FINITE_NAMES[raw]
    raise ResponseError(f"{where}: expected a number, got {raw!r}")


class _Fields:
    """Typed access to one JSON object, with errors that name the field that was wrong."""

    def __init__(self, raw: object, what: str) -> None:
        if not isinstance(raw, dict):
            raise ResponseError(f"{what}: expected an object, got {type(raw).__name__}")
        self._raw: dict[str, Any] = raw
        self._what = what

    def _get(self, key: str) -> Any:
        try:
            return self._raw[key]
        except KeyError:
            raise ResponseError(f"{self._what}.{key}: missing") from None

    def _where(self, key: str) -> str:
        return f"{self._what}.{key}"

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise ResponseError(f"{self._where(key)}: expected a string, got {value!r}")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self._raw.get(key) is None else self.text(key)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ResponseError(f"{self._where(key)}: expected an integer, got {value!r}")
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self._raw.get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        return decode_float(self._get(key), self._where(key))

    def opt_number(self, key: str) -> float | None:
        return None if self._raw.get(key) is None else self.number(key)

    def numbers(self, key: str) -> tuple[float, ...]:
        value = self._get(key)
        if not isinstance(value, list):
            raise ResponseError(f"{self._where(key)}: expected a list, got {value!r}")
        return tuple(decode_float(v, f"{self._where(key)}[{i}]") for i, v in enumerate(value))

    def obj(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise ResponseError(f"{self._where(key)}: expected an object, got {value!r}")
        return value

    def opt_obj(self, key: str) -> dict[str, Any]:
        return {} if self._raw.get(key) is None else self.obj(key)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise ResponseError(f"{self._where(key)}: expected true or false, got {value!r}")
        return value

    def fields(self, key: str) -> _Fields:
        return _Fields(self._get(key), self._where(key))

    def array(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise ResponseError(f"{self._where(key)}: expected a list, got {value!r}")
        return value

    def timestamp(self, key: str) -> datetime:
        value = self.text(key)
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ResponseError(
                f"{self._where(key)}: expected an ISO 8601 time, got {value!r}"
            ) from None

    def opt_timestamp(self, key: str) -> datetime | None:
        return None if self._raw.get(key) is None else self.timestamp(key)

    def opt_boolean(self, key: str) -> bool | None:
        return None if self._raw.get(key) is None else self.boolean(key)

    def opt_array(self, key: str) -> tuple[Any, ...]:
        """A list that may be absent or null (then empty)."""
        return () if self._raw.get(key) is None else tuple(self.array(key))

    def opt_numbers(self, key: str) -> tuple[float, ...] | None:
        """A list of numbers that may be absent or null (then None)."""
        return None if self._raw.get(key) is None else self.numbers(key)

    def opt_rows(self, key: str) -> tuple[tuple[float, ...], ...] | None:
        """A list of lists of numbers that may be absent or null (then None)."""
        return None if self._raw.get(key) is None else self.rows(key)

    def rows(self, key: str) -> tuple[tuple[float, ...], ...]:
        """A list of lists of numbers (the lrs of consecutive steps)."""
        return tuple(
            tuple(decode_float(x, f"{self._where(key)}[{i}]") for x in row)
            for i, row in enumerate(self.array(key))
        )

    def opt_obj_or_none(self, key: str) -> dict[str, Any] | None:
        return self.opt_obj(key) or None

    def ranges(self, key: str) -> tuple[tuple[int, int], ...]:
        """A list of [first, last] pairs of integers that may be absent or null (then empty)."""
        pairs = self.opt_array(key)
        if not all(
            isinstance(p, list) and len(p) == 2 and all(type(n) is int for n in p) for p in pairs
        ):
            raise ResponseError(f"{self._where(key)}: expected [first, last] pairs of integers")
        return tuple((p[0], p[1]) for p in pairs)


# How a field is read, by its annotation: one reader for every model, so that a model is its
# fields and nothing else (a field of another model's type is read by that model).
_READERS: dict[str, Callable[[_Fields, str], Any]] = {
    "str": _Fields.text,
    "str | None": _Fields.opt_text,
    "int": _Fields.integer,
    "int | None": _Fields.opt_integer,
    "float": _Fields.number,
    "float | None": _Fields.opt_number,
    "bool": _Fields.boolean,
    "bool | None": _Fields.opt_boolean,
    "datetime": _Fields.timestamp,
    "datetime | None": _Fields.opt_timestamp,
    "tuple[float, ...]": _Fields.numbers,
    "tuple[float, ...] | None": _Fields.opt_numbers,
    "tuple[tuple[float, ...], ...]": _Fields.rows,
    "tuple[tuple[float, ...], ...] | None": _Fields.opt_rows,
    "tuple[int, ...]": _Fields.opt_array,
    "tuple[str, ...]": _Fields.opt_array,
    "tuple[Mapping[str, Any], ...]": _Fields.opt_array,
    "tuple[tuple[int, int], ...]": _Fields.ranges,
    "Mapping[str, Any]": _Fields.opt_obj,
    "Mapping[str, Any] | None": _Fields.opt_obj_or_none,
}
_MODELS: dict[str, type[_Model]] = {}
# field metadata: LOCAL, a field the client sets itself (never read); REQUIRED, an object that
# must be there (not defaulted to {}); NEWER, a field an older service does not send (then its
# default); and a JSON key other than the field's name
LOCAL = {"local": True}
REQUIRED = {"required": True}
NEWER = {"newer": True}


def _key(name: str) -> dict[str, str]:
    return {"key": name}


def _read_field(f: _Fields, fld: dataclasses.Field[Any]) -> Any:
    key = fld.metadata.get("key", fld.name)
    kind = str(fld.type)
    if fld.metadata.get("required"):
        return f.obj(key)
    reader = _READERS.get(kind)
    if reader is not None:
        return reader(f, key)
    if kind.startswith("tuple[") and kind.endswith(", ...]"):
        model = _MODELS[kind[6:-6]]
        return tuple(model.from_json(item) for item in f.array(key))
    if kind.endswith(" | None"):
        entry = f.opt_obj(key)
        return _MODELS[kind[:-7]].from_json(entry) if entry else None
    return _MODELS[kind].from_json(f.obj(key))


class _Model:
    """A typed answer: `from_json` reads each field by its annotation (see `_READERS`), strict,
    with errors that name the model and the field."""

    _fields: ClassVar[tuple[dataclasses.Field[Any], ...]] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _MODELS[cls.__name__] = cls

    @classmethod
    def from_json(cls, raw: object) -> Self:
        f = _Fields(raw, cls.__name__)
        read = {
            fld.name: _read_field(f, fld)
            for fld in dataclasses.fields(cls)  # type: ignore[arg-type]
            if not fld.metadata.get("local")
            and not (fld.metadata.get("newer") and fld.metadata.get("key", fld.name) not in f._raw)
        }
        return cls(**read)


class _Versioned:
    name: str
    version: int

    @property
    def ref(self) -> str:
        """The `name@version` form decisions carry, e.g. "plateau@1"."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Policy(_Model, _Versioned):
    """A run's resolved policy: every default filled in by the service, so this is exactly
    what decides (e.g. name "plateau", version 1)."""

    name: str
    version: int
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Counts(_Model):
    """How many decisions a run has, and how many of them lowered the learning rate."""

    decisions: int
    reductions: int


@dataclass(frozen=True)
class Run(_Model):
    """A run as the service holds it: its spec, and where its schedule stands now.

    `lrs` are the rates in force after the last decision (one per param group); `last_step` is
    None until the first observation; `last_seq` is the seq of the last decision (0 if none).
    """

    run_id: str
    policy: Policy
    base_lrs: tuple[float, ...]
    metric: str | None
    labels: Mapping[str, Any]
    config_hash: str
    lrs: tuple[float, ...]
    last_step: int | None
    last_seq: int
    counts: Counts
    status: str
    created_at: datetime
    head_hash: str | None = None  # the hash of the last decision: record it to verify against
    # elastic jobs: the scaling rule (rule, by, base) and the size in force (size, factor,
    # step); empty for a run without a scaling rule
    scaling: Mapping[str, Any] = field(default_factory=dict)
    scale: Mapping[str, Any] = field(default_factory=dict)
    # aggregated mode: timeout_s and on_timeout; empty for a leader-mode run
    aggregate: Mapping[str, Any] = field(default_factory=dict)
    # a guarded run: on, spike, lr_factor, max_rollbacks; empty for a run without a guard
    guard: Mapping[str, Any] = field(default_factory=dict)
    # the last entry's action ("stop": the run has stopped) and time; None before any
    last_action: str | None = None
    last_decision_at: datetime | None = None
    # what the run's steps count: "steps", or the "samples" or "tokens" consumed so far
    clock: str = field(default="steps", metadata=NEWER)


@dataclass(frozen=True)
class Decision(_Model):
    """One entry of a run's decision log: what was observed, what the policy did, and why.

        `value` may be NaN or ±inf (a diverged loss is a legitimate observation); it is None in a
        rewind entry (`action` "rewind", with `rewind` saying to which step, what it restored and
        how many decisions it superseded). `client` is who posted the observation, as it declared
        itself (host, process, rank), empty when it did not; `by` whose token caused it (recorded by
    the service, not declared; None when the service runs without tokens). `state` is the
        policy's state after this decision, as the service wrote it: its non-finite numbers are
        still the strings "NaN"/"Infinity"/"-Infinity", because which of its strings are numbers
        depends on the policy. `hash` chains to `prev_hash`, so a log can be verified end to end.

        `provisional` is True for the client's stand-in while the service cannot be reached (see
        `Client`'s `on_unavailable`): action "hold", `lrs` and `previous_lrs` the last rates the
        service decided, a `reason` that says so; it is in no log (`seq` 0, `hash` ""), and the
        observation it answers is buffered and sent when the service is back.
    """

    run_id: str
    seq: int
    step: int
    value: float | None
    lrs: tuple[float, ...]
    previous_lrs: tuple[float, ...]
    action: str
    reason: str
    policy: str
    config_hash: str
    state: Mapping[str, Any]
    hash: str
    prev_hash: str | None
    created_at: datetime
    client: Mapping[str, Any] = field(default_factory=dict)
    # whose token caused the entry, {"token": name, "project": ...} (None in open mode)
    by: Mapping[str, Any] | None = None
    rewind: Mapping[str, Any] | None = None
    provisional: bool = field(default=False, metadata=LOCAL)
    # elastic jobs: the scaling rule's factor on the policy's lrs (None: 1); in a scale
    # entry (`action` "scale"), `resize` says by what, from which size, to which
    scale: float | None = None
    resize: Mapping[str, Any] | None = None
    # a cooldown entry (`action` "start_cooldown"): at_step, steps, shape (None: the
    # policy's), why; a retime entry (`action` "retime"): at_step, horizon, mode
    cooldown: Mapping[str, Any] | None = None
    retime: Mapping[str, Any] | None = None
    # aggregated runs: the ranks counted (each its rank, value, weight and, when declared, the
    # client), and for a step decided at the timeout the ranks missing and that timeout
    ranks: tuple[Mapping[str, Any], ...] = ()
    missing_ranks: tuple[int, ...] = ()
    # the missing ranks as [first, last] ranges instead, when there are many of them (a step of
    # a large world decided at the timeout): a decision's size follows the ranks that reported
    missing_ranges: tuple[tuple[int, int], ...] = ()
    timeout_s: float | None = None
    # the run's ranks whose acknowledged lrs differ from the run's (docs/agreement.md), in the
    # answer to an observation that carried `applied`; empty when none does
    disagreements: tuple[Mapping[str, Any], ...] = ()
    # what the run's policy schedules beside the lrs, one value a param group (None: it does
    # not): the momentum (SGD's momentum, Adam's betas[0]) and the weight decay
    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None
    # a checkpoint entry (`action` "checkpoint"): {"ref"}; a guarded run's rollback (`action`
    # "rollback"): {"trigger", "count", "checkpoint": {"seq", "step", "ref"}}
    checkpoint: Mapping[str, Any] | None = None
    rollback: Mapping[str, Any] | None = None

    @property
    def lr(self) -> float:
        """The first param group's rate: what a single-group optimizer needs."""
        return self.lrs[0]

    @property
    def stop(self) -> bool:
        """The policy says training should stop (action "stop": the lr is at its floor and the
        metric stalled, or an LR range test is over). An early-stopping signal: acting on it is
        the job's choice."""
        return self.action == "stop"

    @property
    def missing(self) -> int:
        """How many ranks a step decided at the timeout did without (aggregated runs)."""
        return len(self.missing_ranks) + sum(b - a + 1 for a, b in self.missing_ranges)

    @property
    def counted(self) -> tuple[int, ...]:
        """The ranks whose reports this decision counted (aggregated runs; empty otherwise)."""
        return tuple(int(r["rank"]) for r in self.ranks)


@dataclass(frozen=True)
class LrAt(_Model):
    """The rates in force at a training step (GET /v1/runs/{run_id}/lr), for ranks that read
    but do not report.

    `seq` is the decision that set them and `decided_at_step` its step; both are None while the
    run has no decision yet (the rates are then the base rates). `step` echoes the step asked
    about, None when the current rates were asked for. `certain` is True when no later
    evaluation can change them (None when the answer did not say). `provisional` is True when
    the service could not be reached and these are the last rates the client knows (see
    `Client`).
    """

    run_id: str
    step: int | None
    lrs: tuple[float, ...]
    seq: int | None
    decided_at_step: int | None
    provisional: bool = field(default=False, metadata=LOCAL)
    certain: bool | None = None
    disagreements: tuple[Mapping[str, Any], ...] = ()  # as in `Decision`
    # what the run's policy schedules beside the lrs, one value a param group (None: it does
    # not): the momentum (SGD's momentum, Adam's betas[0]) and the weight decay
    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None


LrsInForce = LrAt  # the name before `LrAt`, kept for existing code


@dataclass(frozen=True)
class LrsRange(_Model):
    """The rates of `count` training steps from `first`, `every` steps apart (GET /lrs; 1:
    consecutive), fetched ahead so that a rank needs one request per `count` steps.
    `certain_through` is the last step whose rates no later evaluation can change (all of them
    for a pure schedule; None when none is certain yet): past it, fetch again after the next
    evaluation. `provisional` is True when the service could not be reached and the rows are
    the last rates the client knows (see `Client`): nothing is certain then."""

    run_id: str
    first: int = field(metadata=_key("from"))
    lrs: tuple[tuple[float, ...], ...]
    certain_through: int | None
    open_loop: bool
    provisional: bool = field(default=False, metadata=LOCAL)
    every: int = field(default=1, metadata=NEWER)
    # what the run's policy schedules beside the lrs, one row a step as `lrs` (None: it does
    # not): the momentum (SGD's momentum, Adam's betas[0]) and the weight decay
    momentum: tuple[tuple[float, ...], ...] | None = None
    weight_decay: tuple[tuple[float, ...], ...] | None = None

    def holds(self, step: int) -> bool:
        """Whether `step` is one of the steps fetched."""
        offset = step - self.first
        return 0 <= offset < len(self.lrs) * self.every and offset % self.every == 0

    def at(self, step: int) -> tuple[float, ...]:
        """The rates at `step`, which must be one of the steps fetched."""
        return self.lrs[self._index(step)]

    def extras_at(self, step: int) -> dict[str, tuple[float, ...]]:
        """What the run schedules beside the lrs at `step` (one of the steps fetched), by
        name ("momentum", "weight_decay"): only what it schedules."""
        i = self._index(step)
        rows = {"momentum": self.momentum, "weight_decay": self.weight_decay}
        return {name: r[i] for name, r in rows.items() if r is not None and i < len(r)}

    def _index(self, step: int) -> int:
        if not self.holds(step):
            last = self.first + (len(self.lrs) - 1) * self.every
            raise IndexError(
                f"step {step} is not one of {self.first}..{last}"
                + (f" every {self.every}" if self.every != 1 else "")
            )
        return (step - self.first) // self.every


LrsAhead = LrsRange  # the name before `LrsRange`, kept for existing code


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list. `next` is the cursor to pass as `after` for the following page,
    None on the last page."""

    items: tuple[T, ...]
    next: int | None

    @classmethod
    def parser(cls, item: Callable[[object], T]) -> Callable[[object], Page[T]]:
        """A function that reads a page whose items `item` reads."""

        def parse(raw: object) -> Page[T]:
            f = _Fields(raw, "Page")
            return cls(items=tuple(item(i) for i in f.array("items")), next=f.opt_integer("next"))

        return parse


@dataclass(frozen=True)
class RunPage(_Model):
    """One page of runs (GET /v1/runs), in run_id order. `next` is the run_id to pass as
    `after` for the following page, None on the last page."""

    items: tuple[Run, ...]
    next: str | None


def encode_floats(values: Sequence[float]) -> list[float | str]:
    """`encode_float` over a list (e.g. base_lrs)."""
    return [encode_float(v) for v in values]


@dataclass(frozen=True)
class Rewound(_Model):
    """The answer to a rewind: `rewound` is False when `to_step` was at or past the last step
    (nothing changed); else `decision` is the rewind's entry in the chain."""

    run_id: str
    to_step: int
    rewound: bool
    lrs: tuple[float, ...]
    decision: Decision | None


@dataclass(frozen=True)
class CheckpointDeclared(_Model):
    """The answer to `declare_checkpoint`: its entry in the chain; `declared` is False when
    that step and ref were declared already (a retry)."""

    run_id: str
    declared: bool
    decision: Decision


@dataclass(frozen=True)
class CheckpointInfo(_Model):
    """A declared checkpoint: its entry's seq, its step, the job's ref for it, and whether a
    rewind (or a rollback) went below its step."""

    seq: int
    step: int
    ref: str
    created_at: datetime
    superseded: bool


@dataclass(frozen=True)
class Checkpoints(_Model):
    """A page of a run's declared checkpoints, oldest first. `next` is the cursor to pass as
    `after` for the following page, None on the last page."""

    run_id: str
    items: tuple[CheckpointInfo, ...]
    next: int | None = None


@dataclass(frozen=True)
class Resized(_Model):
    """The answer to a resize: `resized` is False when the size was already in force; else
    `decision` is the scale entry in the chain. `scale` is the size in force, its factor on the
    policy's lrs and the step it applies from; `lrs` the rates in force now."""

    run_id: str
    step: int
    resized: bool
    lrs: tuple[float, ...]
    scale: Mapping[str, Any] = field(metadata=REQUIRED)
    decision: Decision | None


@dataclass(frozen=True)
class _Operated(_Model):
    """The answer to an operator's decision from `at_step` on: `decision` its entry in the
    chain, None when that very decision was in force already (a retry); `lrs` the rates in
    force now."""

    run_id: str
    at_step: int
    lrs: tuple[float, ...]
    decision: Decision | None


@dataclass(frozen=True)
class Cooled(_Operated):
    """The answer to a cooldown: `decision` is the start_cooldown entry in the chain (who
    asked, why, `cooldown` its at_step, steps and shape), None when this very cooldown was in
    force already (a retry); `lrs` the rates in force now (the decay starts at `at_step`)."""


@dataclass(frozen=True)
class Retimed(_Operated):
    """The answer to a retime: `decision` is the retime entry in the chain (its `retime`:
    at_step, horizon, mode), None when this very retime was in force already (a retry);
    `lrs` the rates in force now (they do not jump)."""


@dataclass(frozen=True)
class Verified(_Model):
    """The service's check of a run's log: `ok`, how many decisions, the head it ends at, and
    the first mismatch (a mapping with line, seq, message, expected, found) when not ok;
    `last_step` the last step checked, `notes` what the check found worth saying; `signed`
    whether the service signs its exports' heads, and `key_id` its key's fingerprint."""

    ok: bool
    count: int
    head_hash: str
    superseded: int
    rewinds: int
    mismatch: Mapping[str, Any] | None
    last_step: int | None = None
    notes: tuple[str, ...] = ()
    signed: bool = False  # the service signs its exports' heads (LRPILOT_SIGNING_KEY)
    key_id: str | None = None  # its signing key's fingerprint


@dataclass(frozen=True)
class Best(_Model):
    """A run's best metric so far and its step (None before any), as `mode` counts best."""

    value: float | None
    step: int | None
    mode: str


@dataclass(frozen=True)
class LrChange(_Model):
    """A decision of the live branch that changed the lrs."""

    seq: int
    step: int
    lrs: tuple[float, ...]
    action: str


@dataclass(frozen=True)
class Summary(_Model):
    """A run's reductions and progress (GET /v1/runs/{run_id}/summary): `decisions` of its live
    branch, first and last step, best metric, every change of the lrs, how many decisions
    rewinds superseded, the head hash and the lrs now; `range_test` the suggested lr of an LR
    range test (None for other policies)."""

    run_id: str
    decisions: int
    first_step: int | None
    last_step: int | None
    best: Best
    lr_changes: tuple[LrChange, ...]
    superseded: int
    head_hash: str
    lrs: tuple[float, ...]
    range_test: Mapping[str, Any] | None = None
    # every rank the same lr, proved (docs/agreement.md): world_size, acked_ranks,
    # agreed_through, disagreeing, disagreements
    agreement: Mapping[str, Any] | None = None
    clock: str = field(default="steps", metadata=NEWER)  # what the steps count
    # the run's newest declared checkpoints (live branch: seq, step, ref); a guarded run's rollbacks
    # (each its step, value, trigger, checkpoint, lrs and reason) and its guard's state
    checkpoints: tuple[Mapping[str, Any], ...] = ()
    rollbacks: tuple[Mapping[str, Any], ...] = ()
    guard: Mapping[str, Any] | None = None
    # `checkpoints` holds the newest 20 of the live branch; this counts them all (None: a run
    # with neither a checkpoint nor a guard, or an older service)
    checkpoint_count: int | None = None


@dataclass(frozen=True)
class PlotBucket(_Model):
    """The entries of a bucket of steps (`step_lo`..`step_hi`, the steps present): each param
    group's lowest and highest lr, and the lowest and highest finite metric (None: none)."""

    step_lo: int
    step_hi: int
    count: int
    lr_min: tuple[float, ...]
    lr_max: tuple[float, ...]
    metric_min: float | None
    metric_max: float | None


@dataclass(frozen=True)
class PlotEvent(_Model):
    """An entry that changed something (a marker): `metric` is None in a rewind, scale,
    cooldown or retime entry (then `rewind`, `resize` {by, from, to}, `cooldown` {at_step,
    steps, shape, why} or `retime` {at_step, horizon, mode} say what it did)."""

    seq: int
    step: int
    action: str
    reason: str
    lrs: tuple[float, ...]
    previous_lrs: tuple[float, ...]
    metric: float | None
    resize: Mapping[str, Any] | None = None
    rewind: Mapping[str, Any] | None = None
    cooldown: Mapping[str, Any] | None = None
    retime: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PlotBranch(_Model):
    """Entries a rewind superseded (seqs `from_seq`..`to_seq`), in their own buckets."""

    from_seq: int
    to_seq: int
    buckets: tuple[PlotBucket, ...]


@dataclass(frozen=True)
class Plot(_Model):
    """A run at a screen's resolution (GET /v1/runs/{run_id}/plot): the live branch in
    buckets of `bucket_steps` steps, the markers, and the superseded branches."""

    run_id: str
    from_step: int
    to_step: int
    bucket_steps: int
    groups: int
    buckets: tuple[PlotBucket, ...]
    events: tuple[PlotEvent, ...]
    truncated_events: bool
    superseded: tuple[PlotBranch, ...]
    truncated_superseded: bool


@dataclass(frozen=True)
class SimulatedDecision(_Model):
    """One decision of a what-if (stored nowhere). With a run's stream, `recorded` is the run's
    own decision (action, lrs) and `scale` the factor its resizes had put on the lrs."""

    step: int
    value: float
    action: str
    lrs: tuple[float, ...]
    previous_lrs: tuple[float, ...]
    reason: str
    recorded: Mapping[str, Any] | None = None
    scale: float | None = None
    # what the policy schedules beside the lrs (None: it does not), as in `Decision`
    momentum: tuple[float, ...] | None = None
    weight_decay: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Simulated(_Model):
    """The answer to `simulate`: the policy (`name@version`) and params that decided, the
    base lrs, and each decision; `differing` counts, with a run's stream, the decisions unlike
    the run's own (None for a stream of values)."""

    policy: str
    params: Mapping[str, Any]
    base_lrs: tuple[float, ...]
    count: int
    differing: int | None
    items: tuple[SimulatedDecision, ...]


@dataclass(frozen=True)
class PolicyInfo(_Model, _Versioned):
    """A served policy version (GET /v1/policies): its params' JSON schema, their defaults, a
    description and the actions its decisions may take."""

    name: str
    version: int
    params_schema: Mapping[str, Any]
    defaults: Mapping[str, Any]
    description: str
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenInfo(_Model):
    """An API token of the caller's project, as the service keeps it (never its secret):
    times are ISO 8601 UTC; `expires_at` None: never; `revoked_at` None: not revoked."""

    id: int
    name: str
    project: str
    role: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


@dataclass(frozen=True)
class NewToken(TokenInfo):
    """A token just created: `token` is its secret, shown this once (only its hash is kept)."""

    token: str


@dataclass(frozen=True)
class Health(_Model):
    """A probe's answer: `status` "ok" (alive) or "ready" (the database answers)."""

    status: str
    detail: str | None = None


@dataclass(frozen=True)
class Imported:
    """The answer to an import: the run as stored, and `created` False when the service held
    that very log already (nothing changed)."""

    run: Run
    created: bool


@dataclass(frozen=True)
class PendingObservation(_Model):
    """An observation the client could not send yet (see `Client.pending`). It is sent later
    exactly as it was made, with the identity (`client`) of the process that made it."""

    run_id: str
    step: int
    value: float
    rank: int | None = None
    world_size: int | None = None
    client: Mapping[str, Any] = field(default_factory=dict)
    weight: float | None = None  # an aggregated run's weight of this rank's value
    applied: Mapping[str, Any] | None = None  # the rank's acknowledgement (Applied.to_json())

    @property
    def key(self) -> tuple[str, int, int | None, float | str]:
        """What the service dedupes by: the run, the step, the rank (an aggregated run counts
        each rank's report) and the value (NaN equal to NaN)."""
        return (self.run_id, self.step, self.rank, encode_float(self.value))

    def to_json(self) -> dict[str, Any]:
        """One line of an outbox file."""
        return {
            "run_id": self.run_id,
            "step": self.step,
            "value": encode_float(self.value),
            "rank": self.rank,
            "world_size": self.world_size,
            "client": dict(self.client),
            "weight": self.weight,
            "applied": None if self.applied is None else dict(self.applied),
        }


def applied_hash(step: int, seq: int, lrs: Sequence[float]) -> str:
    """The hash a rank acknowledges the lrs it applied at `step` with (docs/agreement.md): the
    SHA-256 (hex) of the canonical JSON of {"lrs": [...], "seq": seq, "step": step}, `seq`
    being the entry the lrs came from (0 before any). The lrs must be finite floats."""
    doc = {"lrs": [float(x) for x in lrs], "seq": int(seq), "step": int(step)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Applied(_Model):
    """What a rank applied at a step: the step, the seq of the entry the lrs came from, and
    their hash (`Applied.of(step, seq, lrs)` computes it)."""

    step: int
    seq: int
    lrs_hash: str

    @classmethod
    def of(cls, step: int, seq: int, lrs: Sequence[float]) -> Applied:
        return cls(step, seq, applied_hash(step, seq, lrs))

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "seq": self.seq, "lrs_hash": self.lrs_hash}


@dataclass(frozen=True)
class Acknowledged(_Model):
    """The service's answer to an acknowledgement (POST /v1/runs/{run_id}/applied): whether
    the rank's lrs agree with the run's at `step`, the hash expected, and the run's
    disagreeing ranks (each its rank, step, seq, expected and got)."""

    run_id: str
    rank: int
    step: int
    agreed: bool
    expected: str
    disagreements: tuple[Mapping[str, Any], ...] = ()
