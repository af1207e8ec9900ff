"""The plain data the store reads and writes: what the domain layer gets and gives back.

What the store reads comes back parsed (``RunHead``, ``Stored``): no other layer decodes a
stored column. What it writes is canonical JSON text, encoded once by the code that built it
(the same bytes a decision hashes), so that nothing is re-encoded on the way to the database.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from lrpilot.canonical import canonical_json
from lrpilot.entries import Entry
from lrpilot.spec import InForce, RunStored


class Stored:
    """A stored JSON column: its canonical text, exactly as stored (what hashes and caches key
    on), and the value it holds, parsed here once, when first asked for."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: Any = _UNPARSED

    @property
    def value(self) -> Any:
        if self._value is _UNPARSED:
            self._value = json.loads(self.text)
        return self._value


_UNPARSED = object()


class RunKey(NamedTuple):
    """A run's identity: the same run_id in two projects is two runs. The store scopes every
    statement that names a run by both (in this order: the tables' key)."""

    project: str
    run_id: str


class _Keyed:
    """A run's id and key, from its ``spec`` and ``project`` (RunHead and NewRun have both)."""

    __slots__ = ()
    spec: RunStored
    project: str

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def key(self) -> RunKey:
        return RunKey(self.project, self.spec.run_id)


@dataclass(frozen=True, slots=True)
class RunHead(_Keyed):
    """A run's spec and where its log stands: everything needed to decide its next step
    (O(1), whatever the log's length)."""

    spec: RunStored  # parsed once a process for each stored spec
    state: Stored  # the policy state after last_seq
    lrs: Stored  # the lrs served after last_seq
    last_seq: int
    last_step: int | None
    head_hash: str  # hash of entry last_seq (the chain's tip)
    scale: InForce | None  # a run with a scaling rule: the size in force; None without a rule
    project: str  # whose tokens see the run

    def after(self, decision: NewDecision) -> RunHead:
        """The head once ``decision`` is appended."""
        # spelled out rather than dataclasses.replace: this runs once a decision
        return RunHead(
            self.spec,
            Stored(decision.state),
            Stored(decision.lrs),
            last_seq=decision.seq,
            last_step=decision.last_step,
            head_hash=decision.hash,
            scale=decision.scale,
            project=self.project,
        )


@dataclass(frozen=True, slots=True)
class NewRun(_Keyed):
    """A run to create: its spec (params resolved) and its initial state."""

    spec: RunStored
    state: str  # canonical JSON of the policy's initial state
    lrs: str  # canonical JSON list: the initial lrs
    project: str = "default"  # whose tokens see it


@dataclass(frozen=True, slots=True)
class NewDecision:
    """A sealed decision to append to its run's log; ``body`` is what was hashed and is served
    (its ``run_id`` is the user's, without the project: an export imports into any project)."""

    key: RunKey
    seq: int
    step: int
    action: str
    hash: str
    body: str
    state: str  # canonical JSON of the policy state after this decision
    lrs: str  # canonical JSON list
    last_step: int | None  # the run's last decided step after this entry (a scale decides none)
    reductions: int  # how many reductions this decision counts (0 or 1), as its policy says
    scale: InForce | None = None  # the run's scale in force after this entry (RunHead.scale)
    doc: dict[str, Any] | None = None  # the entry as built (what a route answers), not stored
    created_at: str | None = None  # the entry's (the run row's last_at once it is the head)


def appended(
    key: RunKey,
    entry: Entry,
    state: str,
    last_step: int | None,
    scale: InForce | None,
    reductions: int = 0,
) -> NewDecision:
    """An entry just built for the run ``key``, as the store appends it: ``state`` is the
    canonical JSON of the policy state after it, ``last_step`` the run's last decided step
    after it."""
    return NewDecision(
        key=key,
        seq=entry.seq,
        step=entry.step,
        action=entry.action,
        hash=entry.hash,
        body=entry.body,
        state=state,
        lrs=canonical_json(entry.doc["lrs"]),
        last_step=last_step,
        reductions=reductions,
        scale=scale,
        doc=entry.doc,
        created_at=entry.doc["created_at"],
    )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: canonical JSON documents and the cursor of the next page."""

    items: list[str]
    next: int | str | None


@dataclass(frozen=True, slots=True)
class Report:
    """One rank's report of a step of an aggregated run."""

    rank: int
    world_size: int
    value: float
    weight: float
    created_at: str
    client: dict[str, Any] | None = None  # who posted it, as it declared itself
    by: dict[str, str] | None = None  # whose token posted it (None in open mode)


@dataclass(frozen=True, slots=True)
class Tally:
    """What a step's reports add up to so far, kept beside them so that a report costs the same
    whatever the world size: the world size they declare, how many ranks reported, and when the
    first did (the step's wait runs from it)."""

    world_size: int
    reported: int
    first_at: str

    def plus(self, report: Report) -> Tally:
        return Tally(self.world_size, self.reported + 1, min(self.first_at, report.created_at))


@dataclass(frozen=True, slots=True)
class LogRow:
    """A decision row as stored: its body (the hashed entry) and every column beside it that a
    read serves or filters on, which verify checks against the body."""

    seq: int
    step: int
    action: str
    superseded: bool
    hash: str
    body: str


@dataclass(frozen=True, slots=True)
class RunRowRead:
    """A run's row as verify reads it: its head and the columns served beside it."""

    head: RunHead
    reductions: int
    labels: dict[str, str]  # the rows GET /v1/runs filters on (run_labels)
    imported: Imported | None  # an imported run: what it came with
    last_action: str | None  # the run list's state and activity (RunRow.last_action, last_at)
    last_at: str | None


@dataclass(frozen=True, slots=True)
class Imported:
    """What an imported run came with: its bundle's header line and trailer (the signature it
    was imported with, and what that one recorded as imported before it)."""

    header: str
    end: dict[str, Any]

    def text(self) -> str:
        return canonical_json({"end": self.end, "header": self.header})

    @classmethod
    def of(cls, text: str | None) -> Imported | None:
        if text is None:
            return None
        doc = json.loads(text)
        return cls(doc["header"], doc["end"])


@dataclass(frozen=True, slots=True)
class LogEnd:
    """Where an imported log ends: its run row's head and counters, as verify proved them."""

    last_seq: int
    head_hash: str
    state: str  # canonical JSON of the policy state after the last entry
    lrs: str  # canonical JSON of the lrs in force after it
    last_step: int | None
    scale: str | None  # canonical JSON of the scale in force (None: the base, or no rule)
    reductions: int
    imported: Imported
    last_action: str | None  # the last entry's action and created_at (None: no entry)
    last_at: str | None


ROLES = ("reader", "writer", "admin")  # each may do what the ones before it may


TOKEN_PREFIX = "lrp_"  # a prefix that secret scanners can look for


def new_secret() -> str:
    """A new token: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_name(project: str, role: str) -> str:
    """A token's name when none is given: PROJECT-ROLE-random."""
    return f"{project}-{role}-{secrets.token_hex(3)}"


def secret_hash(secret: str) -> str:
    """What the tokens table keeps of a token: its SHA-256 (a token is 256 random bits, so a
    plain hash, unsalted, is as strong as the token)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Token:
    """An API token as stored: never its secret."""

    id: int
    name: str
    project: str
    role: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None

    def may(self, role: str) -> bool:
        """Whether this token's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def refused(self, at: datetime) -> str | None:
        """Why the token is not valid at ``at`` (None when it is)."""
        if self.revoked_at is not None:
            return "the token was revoked"
        if self.expires_at is not None and datetime.fromisoformat(self.expires_at) <= at:
            return "the token has expired"
        return None

    def doc(self) -> dict[str, Any]:
        """As `lrpilot token list` shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "project": self.project,
            "role": self.role,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class Ack:
    """One rank's acknowledgement of the lrs it applied at a step (docs/agreement.md): its
    rank and world size, the step and the seq of the entry whose lrs it applied, the hash it
    sent, the hash the run's lrs give, and when it came."""

    rank: int
    world_size: int
    step: int
    seq: int
    got: str
    expected: str
    at: str

    @property
    def agrees(self) -> bool:
        return self.got == self.expected
