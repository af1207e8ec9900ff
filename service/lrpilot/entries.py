"""The log's entries: their kinds, and the one builder of each.

A run's log is a hash chain of entries. Each entry is one canonical JSON document (see
``lrpilot.canonical``) whose ``hash`` is the SHA-256 of the document without its hash and with
``prev_hash``, the hash of the entry before it (``GENESIS`` for the first). Editing, inserting,
deleting or reordering an entry therefore changes every hash after it.

Every entry is built here and only here. The decide path calls a builder with what it saw and
what the policy decided; the verify path (``lrpilot.audit.verify``) replays the policy, calls the
same builder with what the stored entry says was seen, and compares the bytes. So the reason
text, the scaled lrs, the config hash and the entry's shape cannot drift between the two: there
is one copy of each. Every builder takes a ``Stamp`` (the chain the entry continues, its step,
when it was made, who asked: an ``Asker``) and the members of its own kind.

Kinds (``Kind``): a *decision* answers an observation (its ``action`` is the policy's: hold,
reduce, warmup, ...); a *rewind* restores the state as of an earlier step (a job resumed from a
checkpoint); a *scale* rescales the served lrs for a new world or batch size (elastic jobs); a
*checkpoint* records that the job saved one (no decision: nothing changes); a *rollback* is a
guarded run's decision of a step in trouble (``lrpilot.guard``), followed by a rewind to the
checkpoint it names. A *cooldown* starts a policy's decay from a later step, at an operator's
request (WSD's cooldown on demand; its action is ``start_cooldown``); a *retime* gives a running
schedule a new horizon without a jump in lr (``lrpilot.policies.retime``). The kinds that are
not decisions are named by their ``action`` too, so a log reads as one list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from lrpilot.canonical import canonical_json, parse_float, sha256_hex
from lrpilot.policies.base import extras_of, fmt_change, fmt_lrs
from lrpilot.spec import InForce, factor, scaled

GENESIS = "0" * 64  # prev_hash of the first entry of a log begun before runs were pinned
UNPINNED = (
    "this log began before lrpilot linked a run's first entry to the run: its policy, params "
    "and base lrs are pinned (config_hash), its metric, labels, created_at, aggregate and "
    "scaling are not"
)


def run_genesis(header: Mapping[str, Any]) -> str:
    """What a run's first entry links to (its prev_hash): the hash of the run as created, its
    ``RunStored.header_doc()`` (id, policy, params, base lrs, metric, labels, creation time,
    aggregate, scaling, clock), so that the chain pins every field of the run that a read serves.
    Logs begun before this link to ``GENESIS`` instead, and verify says so."""
    return sha256_hex(canonical_json({"run": dict(header)}))


class Kind(StrEnum):
    """What an entry records (the ``action`` of an entry of any kind but a decision is its kind)."""

    DECISION = "decision"
    REWIND = "rewind"
    SCALE = "scale"
    CHECKPOINT = "checkpoint"  # the job saved a checkpoint (its step, its ref)
    ROLLBACK = "rollback"  # a guarded run's decision of a step in trouble (lrpilot.guard)
    # (not "cooldown": that is a plateau policy's action, the steps it waits after a reduce)
    COOLDOWN = "start_cooldown"
    RETIME = "retime"


# The actions that are entry kinds of their own rather than a policy's decision of a step: no
# observation, no value. The store filters them out of "the decision of step N" by this list.
# (A rollback is the decision of its step: it answers an observation.)
NOT_DECISIONS: tuple[str, ...] = (
    Kind.REWIND.value,
    Kind.SCALE.value,
    Kind.CHECKPOINT.value,
    Kind.COOLDOWN.value,
    Kind.RETIME.value,
)
_KINDS = {k.value: k for k in Kind if k is not Kind.DECISION}


def kind_of(action: Any) -> Kind:
    return _KINDS.get(action, Kind.DECISION) if isinstance(action, str) else Kind.DECISION


# -- the run every entry repeats ----------------------------------------------------------------


def config_hash(
    policy_id: str,
    params: Mapping[str, Any],
    base_lrs: Sequence[float],
    guard: Mapping[str, Any] | None = None,
) -> str:
    """What a run's decisions are pinned to: its policy version, resolved params and base lrs,
    and its guard when it has one (a run without keeps the hash it always had)."""
    doc: dict[str, Any] = {"policy": policy_id, "params": params, "base_lrs": list(base_lrs)}
    if guard is not None:
        doc["guard"] = guard
    return sha256_hex(canonical_json(doc))


class Chain(NamedTuple):  # a tuple: one is made for every entry built or verified
    """Where a run's log stands: the next entry is ``seq + 1`` and links to ``head_hash``.

    ``scaling`` is the run's scaling rule (None: none) and ``force`` the scale in force, what a
    builder needs to serve the policy's lrs scaled and to say so in the reason.
    """

    run_id: str
    policy: str  # "plateau@1"
    config_hash: str
    seq: int  # the last entry's seq (0: an empty log)
    head_hash: str
    scaling: Mapping[str, Any] | None = None
    force: InForce | None = None

    @property
    def factor(self) -> float:
        return 1.0 if self.force is None else self.force.factor


class Entry(NamedTuple):
    """A sealed entry: its document (hash included), its canonical JSON (what is stored, served
    and hashed) and its hash."""

    kind: Kind
    seq: int
    step: int
    action: str
    doc: dict[str, Any]
    body: str
    hash: str


class Asker(NamedTuple):
    """Who asked for an entry: ``client`` the process that did, as it declared itself (host,
    process, rank), ``by`` whose token (its name and project; None in open mode). An entry
    carries each only when it says something, so entries without keep the shape (and so the
    hash) they always had."""

    client: dict[str, Any] | None = None
    by: dict[str, str] | None = None

    def mark(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with its "client" and "by" members, those that say something."""
        if self.client:
            doc["client"] = self.client
        if self.by:
            doc["by"] = self.by
        return doc

    def process(self) -> str:
        """The declared process, as a reason names it: "host h, process 7, rank 0"."""
        client = self.client or {}
        return ", ".join(f"{k} {client[k]}" for k in ("host", "process", "rank") if k in client)

    def token(self) -> str:
        """The token, as a reason names it: " by token 'ci'" ("" in open mode)."""
        return f" by token {self.by['token']!r}" if self.by else ""


NOBODY = Asker()


class Stamp(NamedTuple):
    """What every entry is built from besides its kind's own members: the ``chain`` it
    continues, its ``step``, when it was made (``created_at``) and who asked (``asker``).
    The decide path stamps an entry now; verify stamps the rebuilt one as the stored one says."""

    chain: Chain
    step: int
    created_at: str
    asker: Asker = NOBODY


def _common(
    at: Stamp,
    value: float | None,
    lrs: list[float],
    previous_lrs: list[float],
    action: str,
    reason: str,
    state: Mapping[str, Any],
) -> dict[str, Any]:
    """The members every kind has, in one literal (an entry is built for every one verified)."""
    chain = at.chain
    doc = {
        "run_id": chain.run_id,
        "seq": chain.seq + 1,
        "step": at.step,
        "policy": chain.policy,
        "config_hash": chain.config_hash,
        "prev_hash": chain.head_hash,
        "created_at": at.created_at,
        "value": value,
        "lrs": lrs,
        "previous_lrs": previous_lrs,
        "action": action,
        "reason": reason,
        "state": state,
    }
    return at.asker.mark(doc)


class Draft(NamedTuple):
    """An entry built but not sealed: the decide path seals it (``seal``); verify compares it
    with a stored entry whose hash it has checked (``canonical_with``)."""

    kind: Kind
    doc: dict[str, Any]

    def seal(self) -> Entry:
        doc = self.doc
        body = seal(doc)
        return Entry(self.kind, doc["seq"], doc["step"], doc["action"], doc, body, doc["hash"])

    def canonical_with(self, digest: str) -> str:
        """The entry's canonical JSON, sealed with ``digest``: equal to a stored entry's text
        exactly when the stored entry is this one (its hash checked over its own bytes)."""
        self.doc["hash"] = digest
        return canonical_json(self.doc)


# -- decision ---------------------------------------------------------------------------------


# A step decided at the timeout lists its missing ranks one by one (the shape such entries
# always had) while there are at most this many; beyond, as ranges of ranks, so that the entry's
# size follows the ranks that reported, never the world size they declared.
MAX_LISTED_MISSING = 64


@dataclass(frozen=True, slots=True)
class Ranks:
    """Aggregated mode: the ranks whose reports a decision's value is the weighted mean of, and
    for a step decided at the timeout without some ranks, which and after how long: ``missing``
    one by one, or ``missing_ranges`` (inclusive ``[first, last]`` pairs) when there are more
    than ``MAX_LISTED_MISSING`` (``Ranks.at_timeout`` chooses; verify rebuilds what it reads)."""

    ranks: list[dict[str, Any]]  # each {"rank", "value", "weight", "client"?}, in rank order
    missing: list[int]
    timeout_s: float | None = None
    missing_ranges: list[list[int]] | None = None

    def mean(self) -> float:
        return weighted_mean(
            (parse_float(r["value"]), parse_float(r["weight"])) for r in self.ranks
        )

    @staticmethod
    def at_timeout(ranks: list[dict[str, Any]], world: int, timeout_s: float) -> Ranks:
        """The counted ``ranks`` (in rank order) of a step decided at the timeout, of ``world``
        ranks: the missing ones listed, or as ranges when there are many. Costs the counted
        ranks, not ``world``."""
        gaps = missing_ranges([int(r["rank"]) for r in ranks], world)
        if sum(last - first + 1 for first, last in gaps) <= MAX_LISTED_MISSING:
            listed = [n for first, last in gaps for n in range(first, last + 1)]
            return Ranks(ranks, listed, timeout_s)
        return Ranks(ranks, [], timeout_s, [[first, last] for first, last in gaps])

    def missing_count(self) -> int:
        if self.missing_ranges is not None:
            return sum(last - first + 1 for first, last in self.missing_ranges)
        return len(self.missing)


def missing_ranges(counted: Sequence[int], world: int) -> list[tuple[int, int]]:
    """The ranks of ``range(world)`` not in ``counted`` (increasing), as inclusive ranges:
    at most one more range than ranks counted, whatever ``world`` is."""
    gaps = []
    expected = 0
    for rank in counted:
        if rank > expected:
            gaps.append((expected, rank - 1))
        expected = rank + 1
    if expected < world:
        gaps.append((expected, world - 1))
    return gaps


def ranges_text(ranges: Iterable[Sequence[int]]) -> str:
    """``[[0, 0], [2, 9]]`` as "0, 2-9"."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def rank_report(rank: int, value: float, weight: float, asker: Asker) -> dict[str, Any]:
    """A counted rank in its step's decision: its report and who posted it."""
    return asker.mark({"rank": rank, "value": value, "weight": weight})


def weighted_mean(reports: Iterable[tuple[float, float]]) -> float:
    """sum(w * v) / sum(w) over (value, weight) pairs in rank order, in plain IEEE arithmetic:
    a NaN among the values makes the mean NaN, +inf and -inf together make it NaN."""
    total = 0.0
    weights = 0.0
    for value, weight in reports:
        total += weight * value
        weights += weight
    return total / weights


def decision(
    at: Stamp,
    value: float,
    *,
    action: str,
    reason: str,
    lrs: Sequence[float],
    previous_lrs: Sequence[float],
    state: Mapping[str, Any],
    ranks: Ranks | None = None,
) -> Draft:
    """The entry of a decided observation. ``action``, ``reason``, ``lrs``, ``previous_lrs``
    and ``state`` are the policy's (its own lrs: the scale in force is applied here); ``ranks``
    (aggregated mode) the reports ``value`` is the weighted mean of. What the policy
    schedules beside the lrs (momentum, weight decay: ``EXTRAS``) is read from its ``state``
    and stands at the top too, only when scheduled (never scaled: a scaling rule is the lrs')."""
    chain = at.chain
    by = chain.factor
    served = scaled(lrs, by)
    previous = scaled(previous_lrs, by)
    doc = _common(at, value, served, previous, action, reason, state)
    for name, values in extras_of(state).items():
        doc[name] = list(values)
    if ranks is not None:
        doc["ranks"] = ranks.ranks
        if ranks.missing or ranks.missing_ranges:
            assert ranks.timeout_s is not None
            counted = [int(r["rank"]) for r in ranks.ranks]
            if ranks.missing:
                doc["missing_ranks"] = ranks.missing
                note = timeout_note(counted, ranks.missing, ranks.timeout_s)
            else:
                doc["missing_ranges"] = ranks.missing_ranges
                note = timeout_ranges_note(counted, ranks, ranks.timeout_s)
            doc["timeout_s"] = ranks.timeout_s
            doc["reason"] = f"{reason}; {note}"
    if by != 1.0:
        assert chain.scaling is not None and chain.force is not None
        doc["scale"] = by
        doc["reason"] += f"; x {by!r} for {chain.scaling['by']} {chain.force.size}: "
        doc["reason"] += f"{fmt_lrs(tuple(served))} served"
    return Draft(Kind.DECISION, doc)


def _listed(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def timeout_note(counted: Sequence[int], missing: Sequence[int], timeout_s: float) -> str:
    """What a decision taken at the timeout adds to its reason: which ranks were counted."""
    world = len(counted) + len(missing)
    return (
        f"ranks {_listed(counted)} of {world} counted; {_listed(missing)} did not report "
        f"within {timeout_s:g} s"
    )


def timeout_ranges_note(counted: Sequence[int], ranks: Ranks, timeout_s: float) -> str:
    """``timeout_note`` for many missing ranks: they are named as ranges, with their count."""
    assert ranks.missing_ranges is not None
    count = ranks.missing_count()
    return (
        f"ranks {_listed(counted)} of {len(counted) + count} counted; {count} ranks "
        f"({ranges_text(ranks.missing_ranges)}) did not report within {timeout_s:g} s"
    )


# -- rewind -----------------------------------------------------------------------------------


def rewind(
    at: Stamp,
    *,
    restores_seq: int | None,
    superseded: int,
    lrs: Sequence[float],
    previous_lrs: Sequence[float],
    state: Mapping[str, Any],
    restored_force: InForce | None,
) -> Draft:
    """The entry that makes a run's state what it was right after its step (``to_step``,
    where it stands): ``restores_seq``
    is the last live entry at or before it (None: the policy's initial state), ``lrs`` and
    ``state`` what it left (its served lrs), ``previous_lrs`` the lrs served until now,
    ``restored_force`` the scale in force again, ``superseded`` how many entries it superseded."""
    to_step = at.step
    by = f" at the request of {at.asker.process()}" if at.asker.client else ""
    since = f"step {to_step}" if restores_seq is not None else "the start"
    reason = (
        f"rewound to step {to_step}{by}: {_plural(superseded, 'decision')} after it "
        f"superseded (kept in the log); {fmt_lrs(tuple(parse_float(x) for x in lrs))} in "
        f"force again, the state as of {since}"
    )
    doc = _common(at, None, list(lrs), list(previous_lrs), Kind.REWIND.value, reason, state)
    doc["rewind"] = {"to_step": to_step, "restores_seq": restores_seq, "superseded": superseded}
    if restored_force is not None and restored_force.factor != 1.0:  # the lrs stay scaled
        doc["scale"] = restored_force.factor
    return Draft(Kind.REWIND, doc)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- scale ------------------------------------------------------------------------------------


def scale(at: Stamp, size: int, *, policy_lrs: Sequence[float], state: Mapping[str, Any]) -> Draft:
    """The entry that rescales a run's lrs for a new world or batch ``size`` from its step on:
    the policy's state (and its lrs, ``policy_lrs``) stay as they are, the lrs served change by
    the scaling rule's factor."""
    spec, was = at.chain.scaling, at.chain.force
    assert spec is not None and was is not None
    by = factor(spec, size)
    previous = scaled(policy_lrs, was.factor)
    lrs = scaled(policy_lrs, by)
    rule = "linear scaling rule" if spec["rule"] == "linear" else "square-root scaling rule"
    reason = (
        f"{spec['by']} {was.size} -> {size}: {rule}, base_lrs are for {spec['by']} "
        f"{spec['base']}: {fmt_change(tuple(previous), tuple(lrs))} ({by!r} x the policy's)"
    )
    doc = _common(at, None, lrs, previous, Kind.SCALE.value, reason, state)
    doc["scale"] = by
    doc["resize"] = {"by": spec["by"], "from": was.size, "to": size}
    return Draft(Kind.SCALE, doc)


# -- checkpoint ---------------------------------------------------------------------------------


def checkpoint(at: Stamp, ref: str, *, lrs: Sequence[float], state: Mapping[str, Any]) -> Draft:
    """The entry that records a checkpoint the job saved at its step (``ref``: the job's name
    or path for it). It changes nothing: ``lrs`` and ``state`` are those in force. It is no
    decision, never what a rewind restores, and does not move the run's last step; a guarded
    run rolls back to it."""
    by = f" by {at.asker.process()}" if at.asker.client else ""
    reason = f"checkpoint {ref!r} of step {at.step} declared{by}"
    doc = _common(at, None, list(lrs), list(lrs), Kind.CHECKPOINT.value, reason, state)
    doc["checkpoint"] = {"ref": ref}
    if at.chain.factor != 1.0:  # the lrs in force are scaled
        doc["scale"] = at.chain.factor
    return Draft(Kind.CHECKPOINT, doc)


def rollback(
    at: Stamp,
    value: float,
    *,
    trigger: str,
    to: tuple[int, int, str],
    count: int,
    reason: str,
    lrs: Sequence[float],
    previous_lrs: Sequence[float],
    state: Mapping[str, Any],
) -> Draft:
    """A guarded run's decision of a step in trouble (``trigger``: "nan" or "spike"): roll
    back to the checkpoint ``to`` (its seq, step, ref), the ``count``-th rollback, with the
    lrs cut. A rewind to the checkpoint's step follows it in the log."""
    draft = decision(
        at,
        value,
        action=Kind.ROLLBACK.value,
        reason=reason,
        lrs=lrs,
        previous_lrs=previous_lrs,
        state=state,
    )
    seq, to_step, ref = to
    draft.doc["rollback"] = {
        "trigger": trigger,
        "count": count,
        "checkpoint": {"seq": seq, "step": to_step, "ref": ref},
    }
    return Draft(Kind.ROLLBACK, draft.doc)


# -- cooldown ---------------------------------------------------------------------------------


def standing(last_step: int | None, resize_step: int | None) -> int | None:
    """Where a run's log stands: its last decided step or its last resize's step, whichever is
    later (None: neither yet). A cooldown entry stands there (step 0 when None), so that a
    rewind below it supersedes it as it does the decisions after it."""
    steps = [s for s in (last_step, resize_step) if s is not None]
    return max(steps) if steps else None


_TEXT = (str, type(None))  # a text, or none


def _asked(
    member: Any, fields: tuple[str, ...], types: tuple[type | tuple[type, ...], ...]
) -> list[Any] | None:
    """The values of ``fields`` in an entry's ``member`` (what an operator asked, as recorded;
    a missing field reads as None), when each is of its type (an int is not a bool); else None."""
    if not isinstance(member, dict):
        return None
    values = [member.get(name) for name in fields]
    fit = (
        type(v) is int if t is int else isinstance(v, t) for v, t in zip(values, types, strict=True)
    )
    return values if all(fit) else None


class AskedCooldown(NamedTuple):
    """A cooldown as an operator asks for it (POST /cooldown) and its entry records it (its
    "cooldown" member): the decay starts at ``at_step``, ``steps`` long, of ``shape`` (None:
    the policy's own), for the reason ``why``."""

    at_step: int
    steps: int
    shape: str | None
    why: str | None

    @classmethod
    def read(cls, member: Any) -> AskedCooldown | None:
        """The cooldown an entry's member records; None when it is not of this shape."""
        values = _asked(member, cls._fields, (int, int, _TEXT, _TEXT))
        return None if values is None else cls._make(values)


def cooldown(
    at: Stamp, *, asked: AskedCooldown, policy_lrs: Sequence[float], state: Mapping[str, Any]
) -> Draft:
    """The entry that starts the policy's decay as ``asked`` (after its step, where the log
    stands): ``state`` is the policy's state with the decay
    decided (``Policy.cooldown``). The lrs served now do not change; those from the asked
    ``at_step`` on do."""
    at_step, steps, shape, why = asked
    by = at.chain.factor
    lrs = scaled(policy_lrs, by)
    reason = (
        f"cooldown requested{at.asker.token()}: the decay starts at step {at_step} and lasts "
        f"{_plural(steps, 'step')} ({shape or 'the configured'} shape); {fmt_lrs(tuple(lrs))} "
        "in force until then"
    )
    if why:
        reason += f"; why: {why}"
    doc = _common(at, None, lrs, lrs, Kind.COOLDOWN.value, reason, state)
    doc["cooldown"] = asked._asdict()
    if by != 1.0:  # the lrs stay scaled
        doc["scale"] = by
    return Draft(Kind.COOLDOWN, doc)


# -- retime -----------------------------------------------------------------------------------


class AskedRetime(NamedTuple):
    """A retime as an operator asks for it (POST /retime) and its entry records it (its
    "retime" member): from ``at_step`` on, the schedule's end is reached at training step
    ``horizon``, in ``mode`` (keep_lr, keep_fraction)."""

    at_step: int
    horizon: int
    mode: str

    @classmethod
    def read(cls, member: Any) -> AskedRetime | None:
        """The retime an entry's member records; None when it is not of this shape."""
        values = _asked(member, cls._fields, (int, int, str))
        return None if values is None else cls._make(values)


def retime(
    at: Stamp,
    *,
    asked: AskedRetime,
    param: str,
    policy_lrs: Sequence[float],
    state: Mapping[str, Any],
) -> Draft:
    """The entry that gives the schedule a new horizon as ``asked``: its end (``param``) is
    reached at the asked training step; ``state`` is the retimed state
    (``lrpilot.policies.retime``). The lrs served now do not change."""
    at_step, horizon, mode = asked
    by = at.chain.factor
    lrs = scaled(policy_lrs, by)
    how = (
        "the lr there kept and the schedule's decay fitted from it"
        if mode == "keep_lr"
        else "the fraction of the schedule done there kept and the rest stretched"
    )
    reason = (
        f"retimed{at.asker.token()}: from step {at_step} the schedule ends ({param}) at step "
        f"{horizon}, {how} ({mode}); {fmt_lrs(tuple(lrs))} in force now"
    )
    doc = _common(at, None, lrs, lrs, Kind.RETIME.value, reason, state)
    doc["retime"] = asked._asdict()
    if by != 1.0:
        doc["scale"] = by
    return Draft(Kind.RETIME, doc)


# -- the hash chain -----------------------------------------------------------------------------


def entry_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical entry without its own hash (prev_hash included)."""
    return sha256_hex(canonical_json({k: v for k, v in doc.items() if k != "hash"}))


def seal(doc: dict[str, Any]) -> str:
    """Set the entry's ``hash`` and return its canonical JSON: what is stored and served."""
    doc.pop("hash", None)
    # Encode the keys that sort before and after "hash" apart, so the sealed document is the
    # unsealed one with the hash spliced in: one encoding an entry, not two (the hot path).
    before = canonical_json({k: v for k, v in doc.items() if k < "hash"})[1:-1]
    after = canonical_json({k: v for k, v in doc.items() if k > "hash"})[1:-1]
    digest = hashlib.sha256(
        ("{" + ",".join(m for m in (before, after) if m) + "}").encode()
    ).hexdigest()
    doc["hash"] = digest
    return "{" + ",".join(m for m in (before, f'"hash":"{digest}"', after) if m) + "}"


@dataclass(frozen=True)
class ChainBreak:
    """The first decision that does not continue the chain, and why."""

    seq: int | None
    field: str
    expected: Any
    found: Any

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.field} is {self.found!r}, expected {self.expected!r}"


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    count: int
    head_hash: str  # the hash of the last decision checked (GENESIS for an empty log)
    first_break: ChainBreak | None = None


def verify_chain(
    decisions: Iterable[Mapping[str, Any]], head: str | None = None, start: str | None = None
) -> ChainReport:
    """Check every link: seq counts 1, 2, 3, ..., each prev_hash is the hash before it, each hash
    is its decision's hash; with ``head``, the last hash must be it (a chain alone only proves
    that it is consistent: whoever can write the database can recompute it). The first entry
    links to ``start`` (its run's ``run_genesis``), or to what it says when None."""
    decisions = list(decisions)
    prev, count = start, 0
    if prev is None:
        prev = str(decisions[0].get("prev_hash")) if decisions else GENESIS
    for count, decision in enumerate(decisions, start=1):
        seq = decision.get("seq")
        if seq != count:
            return ChainReport(False, count - 1, prev, ChainBreak(seq, "seq", count, seq))
        if decision.get("prev_hash") != prev:
            found = decision.get("prev_hash")
            return ChainReport(False, count - 1, prev, ChainBreak(seq, "prev_hash", prev, found))
        digest = entry_hash(decision)
        if decision.get("hash") != digest:
            found = decision.get("hash")
            return ChainReport(False, count - 1, prev, ChainBreak(seq, "hash", digest, found))
        prev = digest
    if head is not None and head != prev:
        return ChainReport(False, count, prev, ChainBreak(None, "head", head, prev))
    return ChainReport(True, count, prev)


# -- which entries are live ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rewound:
    """A rewind entry's seq and the step it rewound to: all the live rule needs of it."""

    seq: int
    to_step: int


def is_superseded(seq: int, step: int, rewinds: Iterable[Rewound]) -> bool:
    """The live-branch rule: an entry is superseded when a later rewind went to a step below
    its own. (The store keeps it as a flag, set by ``supersede_after`` when a rewind is
    appended; verify checks every flag against this rule.)"""
    return any(r.seq > seq and r.to_step < step for r in rewinds)
