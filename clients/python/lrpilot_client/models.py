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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from .errors import ResponseError

__all__ = [
    "Counts",
    "Decision",
    "LrsInForce",
    "Page",
    "PendingObservation",
    "Policy",
    "Run",
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


@dataclass(frozen=True)
class Policy:
    """A run's resolved policy: every default filled in by the service, so this is exactly
    what decides (e.g. name "plateau", version 1)."""

    name: str
    version: int
    params: Mapping[str, Any]

    @property
    def ref(self) -> str:
        """The `name@version` form decisions carry, e.g. "plateau@1"."""
        return f"{self.name}@{self.version}"

    @classmethod
    def from_json(cls, raw: object) -> Policy:
        f = _Fields(raw, "Policy")
        return cls(name=f.text("name"), version=f.integer("version"), params=f.opt_obj("params"))


@dataclass(frozen=True)
class Counts:
    """How many decisions a run has, and how many of them lowered the learning rate."""

    decisions: int
    reductions: int

    @classmethod
    def from_json(cls, raw: object) -> Counts:
        f = _Fields(raw, "Counts")
        return cls(decisions=f.integer("decisions"), reductions=f.integer("reductions"))


@dataclass(frozen=True)
class Run:
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

    @classmethod
    def from_json(cls, raw: object) -> Run:
        f = _Fields(raw, "Run")
        return cls(
            run_id=f.text("run_id"),
            policy=Policy.from_json(f.obj("policy")),
            base_lrs=f.numbers("base_lrs"),
            metric=f.opt_text("metric"),
            labels=f.opt_obj("labels"),
            config_hash=f.text("config_hash"),
            lrs=f.numbers("lrs"),
            last_step=f.opt_integer("last_step"),
            last_seq=f.integer("last_seq"),
            counts=Counts.from_json(f.obj("counts")),
            status=f.text("status"),
            created_at=f.timestamp("created_at"),
            head_hash=f.opt_text("head_hash"),
            scaling=f.opt_obj("scaling"),
            scale=f.opt_obj("scale"),
            aggregate=f.opt_obj("aggregate"),
        )


def _has(raw: object, key: str) -> bool:
    return isinstance(raw, dict) and raw.get(key) is not None


@dataclass(frozen=True)
class Decision:
    """One entry of a run's decision log: what was observed, what the policy did, and why.

    `value` may be NaN or ±inf (a diverged loss is a legitimate observation); it is None in a
    rewind entry (`action` "rewind", with `rewind` saying to which step, what it restored and
    how many decisions it superseded). `client` is who posted the observation, as it declared
    itself (host, process, rank), empty when it did not. `state` is the
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
    rewind: Mapping[str, Any] | None = None
    provisional: bool = False
    # elastic jobs: the scaling rule's factor on the policy's lrs (None: 1); in a scale
    # entry (`action` "scale"), `resize` says by what, from which size, to which
    scale: float | None = None
    resize: Mapping[str, Any] | None = None
    # aggregated runs: the ranks counted (each its rank, value, weight and, when declared, the
    # client), and for a step decided at the timeout the ranks missing and that timeout
    ranks: tuple[Mapping[str, Any], ...] = ()
    missing_ranks: tuple[int, ...] = ()
    timeout_s: float | None = None

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

    @classmethod
    def from_json(cls, raw: object) -> Decision:
        f = _Fields(raw, "Decision")
        return cls(
            run_id=f.text("run_id"),
            seq=f.integer("seq"),
            step=f.integer("step"),
            value=f.opt_number("value"),
            lrs=f.numbers("lrs"),
            previous_lrs=f.numbers("previous_lrs"),
            action=f.text("action"),
            reason=f.text("reason"),
            policy=f.text("policy"),
            config_hash=f.text("config_hash"),
            state=f.opt_obj("state"),
            hash=f.text("hash"),
            prev_hash=f.opt_text("prev_hash"),
            created_at=f.timestamp("created_at"),
            client=f.opt_obj("client"),
            rewind=f.opt_obj("rewind") or None,
            scale=f.opt_number("scale"),
            resize=f.opt_obj("resize") or None,
            ranks=tuple(f.array("ranks")) if _has(raw, "ranks") else (),
            missing_ranks=tuple(f.array("missing_ranks")) if _has(raw, "missing_ranks") else (),
            timeout_s=f.opt_number("timeout_s"),
        )

    @property
    def counted(self) -> tuple[int, ...]:
        """The ranks whose reports this decision counted (aggregated runs; empty otherwise)."""
        return tuple(int(r["rank"]) for r in self.ranks)


@dataclass(frozen=True)
class LrsInForce:
    """The rates in force at a training step, for ranks that read but do not report.

    `seq` is the decision that set them and `decided_at_step` its step; both are None while the
    run has no decision yet (the rates are then the base rates). `step` echoes the step asked
    about, None when the current rates were asked for. `provisional` is True when the service
    could not be reached and these are the last rates the client knows (see `Client`).
    """

    run_id: str
    step: int | None
    lrs: tuple[float, ...]
    seq: int | None
    decided_at_step: int | None
    provisional: bool = False

    @classmethod
    def from_json(cls, raw: object) -> LrsInForce:
        f = _Fields(raw, "LrsInForce")
        return cls(
            run_id=f.text("run_id"),
            step=f.opt_integer("step"),
            lrs=f.numbers("lrs"),
            seq=f.opt_integer("seq"),
            decided_at_step=f.opt_integer("decided_at_step"),
        )


@dataclass(frozen=True)
class LrsAhead:
    """The rates of `count` consecutive training steps from `first` (GET /lrs), fetched ahead so
    that a rank needs one request per `count` steps. `certain_through` is the last step whose
    rates no later evaluation can change (all of them for a pure schedule; None when none is
    certain yet): past it, fetch again after the next evaluation. `provisional` is True when
    the service could not be reached and the rows are the last rates the client knows (see
    `Client`): nothing is certain then."""

    run_id: str
    first: int
    lrs: tuple[tuple[float, ...], ...]
    certain_through: int | None
    open_loop: bool
    provisional: bool = False

    def at(self, step: int) -> tuple[float, ...]:
        """The rates at `step`, which must be within the fetched range."""
        if not self.first <= step < self.first + len(self.lrs):
            raise IndexError(
                f"step {step} is outside {self.first}..{self.first + len(self.lrs) - 1}"
            )
        return self.lrs[step - self.first]

    @classmethod
    def from_json(cls, raw: object) -> LrsAhead:
        f = _Fields(raw, "LrsAhead")
        rows = f.array("lrs")
        return cls(
            run_id=f.text("run_id"),
            first=f.integer("from"),
            lrs=tuple(
                tuple(decode_float(x, f"LrsAhead.lrs[{i}]") for x in row)
                for i, row in enumerate(rows)
            ),
            certain_through=f.opt_integer("certain_through"),
            open_loop=f.boolean("open_loop"),
        )


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


def encode_floats(values: Sequence[float]) -> list[float | str]:
    """`encode_float` over a list (e.g. base_lrs)."""
    return [encode_float(v) for v in values]


@dataclass(frozen=True)
class Rewound:
    """The answer to a rewind: `rewound` is False when `to_step` was at or past the last step
    (nothing changed); else `decision` is the rewind's entry in the chain."""

    run_id: str
    to_step: int
    rewound: bool
    lrs: tuple[float, ...]
    decision: Decision | None

    @classmethod
    def from_json(cls, raw: object) -> Rewound:
        f = _Fields(raw, "Rewound")
        entry = f.opt_obj("decision")
        return cls(
            run_id=f.text("run_id"),
            to_step=f.integer("to_step"),
            rewound=f.boolean("rewound"),
            lrs=f.numbers("lrs"),
            decision=Decision.from_json(entry) if entry else None,
        )


@dataclass(frozen=True)
class Resized:
    """The answer to a resize: `resized` is False when the size was already in force; else
    `decision` is the scale entry in the chain. `scale` is the size in force, its factor on the
    policy's lrs and the step it applies from; `lrs` the rates in force now."""

    run_id: str
    step: int
    resized: bool
    lrs: tuple[float, ...]
    scale: Mapping[str, Any]
    decision: Decision | None

    @classmethod
    def from_json(cls, raw: object) -> Resized:
        f = _Fields(raw, "Resized")
        entry = f.opt_obj("decision")
        return cls(
            run_id=f.text("run_id"),
            step=f.integer("step"),
            resized=f.boolean("resized"),
            lrs=f.numbers("lrs"),
            scale=f.obj("scale"),
            decision=Decision.from_json(entry) if entry else None,
        )


@dataclass(frozen=True)
class Verified:
    """The service's check of a run's log: `ok`, how many decisions, the head it ends at, and
    the first mismatch (a mapping with line, seq, message, expected, found) when not ok."""

    ok: bool
    count: int
    head_hash: str
    superseded: int
    rewinds: int
    mismatch: Mapping[str, Any] | None

    @classmethod
    def from_json(cls, raw: object) -> Verified:
        f = _Fields(raw, "Verified")
        return cls(
            ok=f.boolean("ok"),
            count=f.integer("count"),
            head_hash=f.text("head_hash"),
            superseded=f.integer("superseded"),
            rewinds=f.integer("rewinds"),
            mismatch=f.opt_obj("mismatch") or None,
        )


@dataclass(frozen=True)
class PendingObservation:
    """An observation the client could not send yet (see `Client.pending`). It is sent later
    exactly as it was made, with the identity (`client`) of the process that made it."""

    run_id: str
    step: int
    value: float
    rank: int | None = None
    world_size: int | None = None
    client: Mapping[str, Any] = field(default_factory=dict)
    weight: float | None = None  # an aggregated run's weight of this rank's value

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
        }

    @classmethod
    def from_json(cls, raw: object) -> PendingObservation:
        f = _Fields(raw, "PendingObservation")
        return cls(
            run_id=f.text("run_id"),
            step=f.integer("step"),
            value=f.number("value"),
            rank=f.opt_integer("rank"),
            world_size=f.opt_integer("world_size"),
            client=f.opt_obj("client"),
            weight=f.opt_number("weight"),
        )
