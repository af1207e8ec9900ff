"""The check that proves a run's log: pure, no database, the same offline and in the service.

``LogCheck`` checks a run's entries one by one, whether they come from a bundle or from the
database. Each entry is first checked as a link of the hash chain (its seq, its prev_hash, its
hash over its own bytes); then the policy is replayed through it (``lrpilot.replay.Replay``) and
the entry is built again by its one builder (``lrpilot.entries``) from what it says was seen:
the step, the value (or the ranks' reports), who asked, when. The rebuilt bytes must be the
stored bytes: an entry is proven when the service would write exactly it, reason and state
included. Where the bytes differ, the first member that differs is named.

Most entries are plain decisions (no ranks), and for those the inputs are read off the bytes
(``_plain_decision``) rather than parsed: since the rebuilt entry must be those very bytes, a
misreading can only fail a check, and then the entry is parsed to name what differs. This
spares a JSON parse an entry, as much as the byte comparison costs; the verdict is the parsing
path's (``tests/domain/test_entries.py`` edits entries anywhere to show it).

Rewind entries are part of the chain: the replay confirms which entries each one superseded and
that the state it restored is the one it names. For that it needs the rewinds before it starts
(``rewinds_of`` reads them in a first pass), and then holds only a few values per rewind:
memory stays flat in the length of the log.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from lrpilot import entries
from lrpilot.audit.bundle import (
    _REWIND_MARK_RAW,
    MAX_IMPORT_HOPS,
    Mismatch,
    _parse,
    check_line,
    numbered_raw,
    parse_header,
    parse_trailer,
    rewinds_of,
)
from lrpilot.audit.signing import check as check_signature
from lrpilot.audit.signing import key_id, signed_message
from lrpilot.canonical import NON_FINITE, canonical_json, parse_float, same_float, to_strict
from lrpilot.entries import (
    GENESIS,
    NOT_DECISIONS,
    UNPINNED,
    AskedCooldown,
    AskedRetime,
    Asker,
    Chain,
    Draft,
    Kind,
    Ranks,
    Rewound,
    Stamp,
    kind_of,
    run_genesis,
)
from lrpilot.guard import GuardStepper, drafted, guard_doc, guarded
from lrpilot.policies import Frozen, Policy, PolicyError, get_policy
from lrpilot.policies.base import MAX_STEP
from lrpilot.policies.retime import around
from lrpilot.replay import Replay
from lrpilot.spec import MAX_SIZE, RunStored, scaled

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_HASH_MEMBER_LEN = len(',"hash":""') + 64
_LARGEST_INT_FLOAT = int(sys.float_info.max)  # a JSON integer beyond it is no float at all
# What the policy decides (or a rewind or resize implies), in the order a mismatch names them.
_DERIVED = (
    "value",
    "action",
    "scale",
    "resize",
    "rollback",
    "lrs",
    "previous_lrs",
    "reason",
    "state",
    "rewind",
    "cooldown",
    "retime",
)


@dataclass
class Report:
    ok: bool
    count: int  # entries checked
    head_hash: str
    superseded: int = 0  # entries that a rewind superseded
    rewinds: int = 0
    last_step: int | None = None
    mismatch: Mismatch | None = None
    notes: list[str] = field(default_factory=list)
    state: str | None = None  # canonical JSON of the policy state after the last entry
    lrs: str | None = None  # canonical JSON of the lrs in force after it
    scale: str | None = None  # canonical JSON of the scale in force (None: the base, or no rule)
    reductions: int = 0  # decisions the policy counts as reductions (the run's counter)
    last_action: str | None = None  # the last entry's action and created_at (None: no entry)
    last_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "ok": self.ok,
            "count": self.count,
            "head_hash": self.head_hash,
            "superseded": self.superseded,
            "rewinds": self.rewinds,
            "last_step": self.last_step,
        }
        if self.mismatch is not None:
            doc["mismatch"] = self.mismatch.as_dict()
        if self.notes:
            doc["notes"] = self.notes
        return doc


def resolve_run(run: RunStored) -> tuple[Policy, Frozen, tuple[float, ...]]:
    """The run's pinned policy, its resolved params and base lrs; a Mismatch when they cannot
    be replayed or are not what its config hash pins."""
    try:
        # the guard around the policy, the time map of a retime (policies.retime) inside it
        policy = guarded(around(get_policy(run.policy.name, run.policy.version)), run.guard)
        base_lrs = tuple(run.base_lrs)
        params = policy.resolve(dict(run.policy.params), base_lrs)
    except (PolicyError, KeyError, TypeError, ValueError) as exc:
        raise Mismatch(None, None, f"the run's policy cannot be replayed: {exc}") from None
    expected = entries.config_hash(run.policy.id, params.model_dump(), base_lrs, guard_doc(run))
    if run.config_hash != expected:
        raise Mismatch(
            None,
            None,
            "the run's config_hash is not the hash of its policy, params and base_lrs",
            expected,
            run.config_hash,
        )
    return policy, params, base_lrs


class LogCheck:
    """Check a run's entries in seq order: ``check(body)`` each, then ``report()``.

    ``check`` raises ``Mismatch`` at the first entry that is not the one written (its hash, its
    link, its seq) or not the one the service writes from the entries before it.
    """

    def __init__(
        self, run: RunStored, rewinds: list[Rewound] | None = None, watch: set[int] | None = None
    ) -> None:
        policy, params, base_lrs = resolve_run(run)
        self.run_id = run.run_id
        self.policy_id = run.policy.id
        self.config_hash = run.config_hash
        self.scaling = None if run.scaling is None else run.scaling.model_dump()
        self._rewinds = rewinds or []
        self.replay = Replay(
            policy,
            params,
            base_lrs,
            run.metric or "metric",
            scaling=self.scaling,
            rewinds=self._rewinds,
        )
        # the hash the log begins from: the run's own (its first entry pins the run), or
        # GENESIS for a log begun before that (``UNPINNED``), told by its first link
        self.start = self.prev = run_genesis(run.header_doc())
        self.count = 0
        self.last_step: int | None = None  # the last decided step (a scale entry decides none)
        self.step: int | None = None  # the step of the last entry checked, of any kind
        self.action: str | None = None  # the action of the last entry checked
        self.superseded = 0
        self._rewinds_seen = 0
        self.reductions = 0
        self._watch = watch or set()  # seqs whose hashes a bundle's trailer names
        self.watched: dict[int, str] = {}
        self._last_text: str | None = None  # the last entry checked (its created_at: report)
        self._rolled_back: int | None = None  # a rollback's checkpoint step: its rewind is next

    def resume(
        self, seq: int, digest: str, step: int | None, action: str | None, state: dict[str, Any]
    ) -> None:
        """Go on after the decision ``seq`` (its hash, step, action and the policy state it
        left), as if every entry up to it had been checked here: for a log checked in regions
        (``lrpilot.audit.parallel``), the region before proves that entry. A run without a
        scaling rule and a log without rewinds: nothing else carries over."""
        assert self.scaling is None and not self._rewinds
        if type(seq) is not int or not isinstance(digest, str) or not isinstance(state, dict):
            raise TypeError("seq, hash or state of another type")
        replay = self.replay
        self.replay = Replay(
            replay.policy,
            replay.params,
            replay.base_lrs,
            replay.metric,
            state=replay.policy.load_state(state),
        )
        self.count, self.prev = seq, digest
        self.last_step = self.step = step
        self.action = action

    def scale_json(self) -> str | None:
        """The scale in force as the run row stores it (None: the base size, from the start)."""
        force = self.replay.force
        if force is None or force.step is None:
            return None
        return canonical_json(force.doc())

    def superseded_at(self, seq: int, step: int) -> bool:
        """Whether the entry ``seq`` at ``step`` is superseded: a later rewind went below it."""
        return entries.is_superseded(seq, step, self._rewinds)

    # one entry ----------------------------------------------------------------------------

    def check(self, body: str | bytes, line: int | None = None) -> None:
        """Check the next entry, its canonical JSON as stored (text) or as read (UTF-8)."""
        seq = self.count + 1
        raw = body if isinstance(body, bytes) else body.encode()
        try:
            text = raw.decode() if isinstance(body, bytes) else body
        except UnicodeDecodeError as exc:
            raise Mismatch(line, seq, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if seq == 1 and _UNPINNED_LINK in text:  # a JSON string cannot hold this unescaped
            self.start = self.prev = GENESIS
        self._last_text = text
        plain = _plain_decision(text)
        if plain is not None and self._decision_in_order(plain.step):
            self._check_plain(plain, raw, text, line, seq)
            return
        doc = _parse(text, line if line is not None else seq)
        if doc.get("seq") != seq or type(doc.get("seq")) is not int:
            raise Mismatch(line, seq, "seq out of order", seq, doc.get("seq"))
        self._check_link(raw, doc, line, seq)
        step = doc.get("step")
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            raise Mismatch(line, seq, f"step is not an integer in [0, {MAX_STEP}]", None, step)
        chain = self._chain(seq)
        kind = kind_of(doc.get("action"))
        if self._rolled_back is not None:
            if kind is not Kind.REWIND or step != self._rolled_back:
                raise Mismatch(
                    line, seq, "a rollback is not followed by its rewind to the checkpoint's step"
                )
            self._rolled_back = None
        # created_at is an input, compared as bytes
        at = Stamp(chain, step, doc.get("created_at"), _asker(doc, line, seq))  # type: ignore[arg-type]
        if kind is Kind.REWIND:
            entry = self._rewind(at, line, seq)
        elif kind is Kind.SCALE:
            entry = self._scale(at, doc, line, seq)
        elif kind is Kind.CHECKPOINT:
            entry = self._checkpoint(at, doc, line, seq)
        elif kind is Kind.COOLDOWN:
            entry = self._cooldown(at, doc, line, seq)
        elif kind is Kind.RETIME:
            entry = self._retime(at, doc, line, seq)
        else:
            entry = self._decision(at, doc, line, seq)
        # the hash is checked over the stored bytes: the entry is proven when the rebuilt one,
        # sealed with that hash, is those very bytes
        if entry.canonical_with(doc["hash"]) != text:
            self._first_difference(entry, doc, line, seq)
        self._checked(kind, step, doc["hash"], seq, entry.doc["action"])

    def _chain(self, seq: int) -> Chain:
        return Chain(
            self.run_id,
            self.policy_id,
            self.config_hash,
            seq - 1,
            self.prev,
            self.scaling,
            self.replay.force,
        )

    def _checked(self, kind: Kind, step: int, digest: str, seq: int, action: str) -> None:
        if kind not in (Kind.SCALE, Kind.CHECKPOINT, Kind.COOLDOWN, Kind.RETIME):  # no step decided
            self.last_step = step
        self.step, self.action = step, action
        self.prev, self.count = digest, seq
        if seq in self._watch:
            self.watched[seq] = digest

    def _check_plain(
        self, plain: _Plain, raw: bytes, text: str, line: int | None, seq: int
    ) -> None:
        """A decision without ranks, its inputs read off its bytes rather than parsed: the
        rebuilt entry must be those bytes, so a misread input can only fail the check, never
        pass one. Most of a log is such decisions; parsing each would cost as much again."""
        if self._rolled_back is not None:
            raise Mismatch(
                line, seq, "a rollback is not followed by its rewind to the checkpoint's step"
            )
        stamp = Stamp(self._chain(seq), plain.step, plain.created_at, plain.asker)
        entry = self._decide(stamp, plain.value, None, seq)
        if entry.canonical_with(plain.hash) != text:
            # Find what the parsing path finds first; read so, the entry differs only when its
            # bytes are not the canonical ones (a member twice, say).
            doc = _parse(text, line if line is not None else seq)
            if doc.get("seq") != seq or type(doc.get("seq")) is not int:
                raise Mismatch(line, seq, "seq out of order", seq, doc.get("seq"))
            self._check_link(raw, doc, line, seq)
            if plain.read_as(doc):
                self._first_difference(entry, doc, line, seq)
            raise Mismatch(line, seq, "the entry is not in its canonical form")
        # its bytes are the rebuilt ones: only the hash is left to check (over those bytes)
        at = raw.find(b',"hash":"' + plain.hash.encode())
        hashed = hashlib.sha256(raw[:at])
        hashed.update(raw[at + _HASH_MEMBER_LEN :])
        if hashed.hexdigest() != plain.hash:
            self._check_link(raw, {"prev_hash": self.prev, "hash": plain.hash}, line, seq)
        self._checked(Kind.DECISION, plain.step, plain.hash, seq, entry.doc["action"])

    def _check_link(self, raw: bytes, doc: dict[str, Any], line: int | None, seq: int) -> None:
        if doc.get("prev_hash") != self.prev and seq == 1:
            raise Mismatch(line, seq, _NOT_ITS_RUN, self.prev, doc.get("prev_hash"))
        if doc.get("prev_hash") != self.prev:
            raise Mismatch(
                line,
                seq,
                "prev_hash is not the hash before it (a decision is missing, "
                "moved or edited before it)",
                self.prev,
                doc.get("prev_hash"),
            )
        digest = doc.get("hash")
        member = f',"hash":"{digest}"'.encode() if isinstance(digest, str) else b""
        at = raw.find(member) if len(member) == _HASH_MEMBER_LEN else -1
        if at < 0:
            raise Mismatch(line, seq, "the decision has no hash", None, digest)
        # The body is canonical JSON with its hash spliced in: without it, it is what was hashed.
        hashed = hashlib.sha256(raw[:at])
        hashed.update(raw[at + _HASH_MEMBER_LEN :])
        actual = hashed.hexdigest()
        if actual != digest:
            raise Mismatch(
                line, seq, "the decision is not the one that was hashed (edited)", actual, digest
            )

    def _decision_in_order(self, step: int) -> bool:
        force = self.replay.force
        return (self.last_step is None or step > self.last_step) and (
            force is None or force.step is None or step >= force.step
        )

    def _decision(self, at: Stamp, doc: dict[str, Any], line: int | None, seq: int) -> Draft:
        step = at.step
        if self.last_step is not None and step <= self.last_step:
            raise Mismatch(
                line, seq, f"step {step} is not above the last live step {self.last_step}"
            )
        self._not_below_resize(line, seq, step)
        value = _value(doc.get("value"), line, seq)
        ranks = None
        if "ranks" in doc:  # aggregated mode: value is the ranks' weighted mean
            ranks = _ranks(doc, line, seq)
            mean = ranks.mean()
            if not same_float(mean, value):
                raise Mismatch(
                    line, seq, "value is not the weighted mean of the ranks' values", mean, value
                )
        return self._decide(at, value, ranks, seq)

    def _decide(self, at: Stamp, value: float, ranks: Ranks | None, seq: int) -> Draft:
        """Replay the observation and build its entry, as the decide path does."""
        replay = self.replay
        action = replay.observe(at.step, value, seq)
        stepper = replay.stepper
        if stepper.reduced:
            self.reductions += 1
        if action == Kind.ROLLBACK:  # the rewind to its checkpoint's step comes next
            assert isinstance(stepper, GuardStepper) and stepper.target is not None
            self._rolled_back = stepper.target.step
        return drafted(at, value, stepper, replay.previous, ranks)

    def _not_below_resize(self, line: int | None, seq: int, step: int) -> None:
        force = self.replay.force
        if force is not None and force.step is not None and step < force.step:
            raise Mismatch(
                line, seq, f"step {step} is below step {force.step}, where the last resize applies"
            )

    def _scale(self, at: Stamp, doc: dict[str, Any], line: int | None, seq: int) -> Draft:
        """A scale entry: the job reported a new size; the lrs change by the rule's factor,
        the policy's state does not."""
        step, force = at.step, at.chain.force
        if self.scaling is None or force is None:
            raise Mismatch(line, seq, "a scale entry in a run without a scaling rule")
        if self.last_step is not None and step < self.last_step:
            raise Mismatch(
                line, seq, f"step {step} is below the last decided step {self.last_step}"
            )
        self._not_below_resize(line, seq, step)
        resize = doc.get("resize")
        size = resize.get("to") if isinstance(resize, dict) else None
        if type(size) is not int or not 1 <= size <= MAX_SIZE or size == force.size:
            raise Mismatch(line, seq, "the scale entry names no new size", None, to_strict(resize))
        self.replay.resize(step, size, seq)
        stepper = self.replay.stepper
        return entries.scale(at, size, policy_lrs=stepper.lrs, state=stepper.state_doc())

    def _checkpoint(self, at: Stamp, doc: dict[str, Any], line: int | None, seq: int) -> Draft:
        """A checkpoint entry: the job saved one; nothing changes."""
        checkpoint = doc.get("checkpoint")
        ref = checkpoint.get("ref") if isinstance(checkpoint, dict) else None
        if not isinstance(ref, str):
            raise Mismatch(
                line, seq, "the checkpoint entry names no ref", None, to_strict(checkpoint)
            )
        self.replay.checkpoint(seq, at.step, ref)
        return entries.checkpoint(
            at, ref, lrs=self.replay.lrs, state=self.replay.stepper.state_doc()
        )

    def _standing(self, line: int | None, seq: int, step: int, what: str) -> int | None:
        """Where the log stood (``entries.standing``), which the ``what`` entry must be at."""
        force = self.replay.force
        at = entries.standing(self.last_step, None if force is None else force.step)
        if step != (0 if at is None else at):
            raise Mismatch(line, seq, f"the {what} entry is not where the log stood", at, step)
        return at

    def _retime(self, at: Stamp, doc: dict[str, Any], line: int | None, seq: int) -> Draft:
        """A retime entry: it stands where the log stood, and the time map it leaves is the
        one the service computes (``lrpilot.policies.retime``) from the state there."""
        stands = self._standing(line, seq, at.step, "retime")
        asked = AskedRetime.read(doc.get("retime"))
        if asked is None:
            member = to_strict(doc.get("retime"))
            raise Mismatch(line, seq, "the retime is not at_step, horizon, mode", None, member)
        replay = self.replay
        has = replay.policy.horizon(replay.params, replay.state())
        try:
            replay.retime(at.step, *asked, stands, seq)
        except PolicyError as exc:
            raise Mismatch(line, seq, f"the policy cannot be retimed so: {exc}") from None
        assert has is not None  # or the retime was refused
        stepper = replay.stepper
        return entries.retime(
            at, asked=asked, param=has.param, policy_lrs=stepper.lrs, state=stepper.state_doc()
        )

    def _cooldown(self, at: Stamp, doc: dict[str, Any], line: int | None, seq: int) -> Draft:
        """A cooldown entry: it stands where the log stood, and the policy accepts the decay
        it asks for from the state there (as the service's ``Policy.cooldown`` did)."""
        stands = self._standing(line, seq, at.step, "cooldown")
        asked = AskedCooldown.read(doc.get("cooldown"))
        if asked is None:
            member = to_strict(doc.get("cooldown"))
            raise Mismatch(
                line, seq, "the cooldown is not at_step, steps, shape, why", None, member
            )
        try:
            self.replay.cooldown(at.step, *asked[:3], stands, seq)
        except PolicyError as exc:
            raise Mismatch(line, seq, f"the policy refuses this cooldown: {exc}") from None
        stepper = self.replay.stepper
        return entries.cooldown(at, asked=asked, policy_lrs=stepper.lrs, state=stepper.state_doc())

    def _rewind(self, at: Stamp, line: int | None, seq: int) -> Draft:
        ahead = self.replay.next_rewind()
        if ahead is None or ahead.seq != seq:
            raise Mismatch(line, seq, "a rewind entry the first pass did not see")
        served = self.replay.lrs
        restored = self.replay.rewind(seq)
        self._rewinds_seen += 1
        self.superseded += restored.superseded
        by = 1.0 if restored.force is None else restored.force.factor
        return entries.rewind(
            at,
            restores_seq=restored.restores_seq,
            superseded=restored.superseded,
            lrs=scaled(restored.state.lrs, by),
            previous_lrs=served,
            state=restored.state.model_dump(),
            restored_force=restored.force,
        )

    def _first_difference(
        self, expected: Draft, doc: dict[str, Any], line: int | None, seq: int
    ) -> NoReturn:
        """Name the first member where a stored entry is not the one rebuilt from its inputs."""
        for key, run in (
            ("run_id", self.run_id),
            ("policy", self.policy_id),
            ("config_hash", self.config_hash),
        ):
            if doc.get(key) != run:
                raise Mismatch(line, seq, f"{key} is not the run's", run, doc.get(key))
        _first_difference(expected, doc, line, seq)

    # the end ------------------------------------------------------------------------------

    def begins(self, head: str) -> None:
        """A log without entries: the run's ``head`` (as stored, or a trailer's) must be the
        hash of the run, or GENESIS for a run created before runs were pinned."""
        if self.count == 0 and head == GENESIS:
            self.start = self.prev = GENESIS
        elif self.count == 0 and head != self.start:
            raise Mismatch(None, 0, _NOT_ITS_RUN, self.start, head)

    def report(self, head: str | None = None) -> Report:
        """After the last entry: a report; with ``head``, the log must end at that hash."""
        ahead = self.replay.next_rewind()
        if ahead is not None:
            raise Mismatch(None, ahead.seq, "a rewind entry is missing")
        if self._rolled_back is not None:
            raise Mismatch(None, self.count, "the log ends at a rollback without its rewind")
        if head is not None and head != self.prev:
            raise Mismatch(
                None,
                self.count,
                "the log does not end at the expected head (decisions are missing at the end, "
                "or the log was rewritten)",
                head,
                self.prev,
            )
        return Report(
            ok=True,
            count=self.count,
            head_hash=self.prev,
            superseded=self.superseded,
            rewinds=self._rewinds_seen,
            last_step=self.last_step,
            state=canonical_json(self.replay.state().model_dump()),
            lrs=canonical_json(self.replay.lrs),
            scale=self.scale_json(),
            reductions=self.reductions,
            notes=[UNPINNED] if self.start == GENESIS else [],
            last_action=self.action,
            # one parse, of the last entry alone (it was checked: JSON with a created_at)
            last_at=None
            if self._last_text is None
            else json.loads(self._last_text).get("created_at"),
        )


_UNPINNED_LINK = f'"prev_hash":"{GENESIS}"'
_NOT_ITS_RUN = (
    "the log does not begin from its run: the run (its policy, params, base lrs, metric, "
    "labels, created_at, aggregate, scaling or clock) is not the one its log began with (edited)"
)


# A plain decision (no ranks) as the service writes it: its first members up to "hash" and its
# last two, "step" and "value", hold everything that was seen (the rest is the policy's and the
# run's). Members sort, so the last ',"step":' is the entry's own, not one inside its state.
_ACTION = '{"action":"'
_NOT_PLAIN = (*NOT_DECISIONS, Kind.ROLLBACK.value)  # a rollback names its checkpoint
_BY = ',"by":{'
_CLIENT = ',"client":{'
_CREATED_AT = len(',"config_hash":"') + 64 + len('","created_at":"')
_HASH = '","hash":"'
_STEP, _VALUE = ',"step":', ',"value":'


class _Plain(NamedTuple):
    """What a plain decision's bytes say was seen (a reading to be proven, not a parse)."""

    step: int
    value: float
    created_at: str
    asker: Asker
    hash: str

    def read_as(self, doc: dict[str, Any]) -> bool:
        """Whether ``doc``, the entry parsed, says the same: if not, its bytes are not
        canonical JSON (the parser and this reading resolved something differently)."""
        try:
            value = _value(doc.get("value"), None, 0)
        except Mismatch:
            return False
        return (
            type(doc.get("step")) is int
            and doc["step"] == self.step
            and kind_of(doc.get("action")) is Kind.DECISION
            and "ranks" not in doc
            and same_float(value, self.value)
            and doc.get("created_at") == self.created_at
            and doc.get("client") == self.asker.client
            and doc.get("by") == self.asker.by
        )


def _plain_decision(text: str) -> _Plain | None:
    """The entry read as a plain decision, or None when it is another kind, has ranks, or is
    not of the shape. A reading, not a parse: it checks nothing that the bytes' comparison with
    the rebuilt entry does not, and None sends the entry to the parsing path, which names what
    is wrong."""
    if not text.startswith(_ACTION) or '"ranks":' in text:
        return None
    at = text.find('"', len(_ACTION))
    if text[len(_ACTION) : at] in _NOT_PLAIN:
        return None
    by = client = None
    if text.startswith(_BY, at + 1):  # whose token caused it: two strings, or the parsing path
        end = text.find("}", at) + 1
        try:
            by = json.loads(text[at + len(_BY) : end])
        except ValueError:
            return None
        if set(by) != {"token", "project"} or not all(isinstance(v, str) for v in by.values()):
            return None
        at = end - 1
    if text.startswith(_CLIENT, at + 1):
        end = text.find("}", at) + 1
        try:
            client = json.loads(text[at + len(_CLIENT) : end])
        except ValueError:
            return None
        at = end - 1
    at += 1 + _CREATED_AT
    end = text.find('"', at)
    created_at = text[at:end]
    if not text.startswith(_HASH, end) or "\\" in created_at:
        return None
    digest = text[end + len(_HASH) : end + len(_HASH) + 64]
    at = text.rfind(_STEP)
    end = text.find(_VALUE, at)
    token = text[end + len(_VALUE) : -1]
    try:
        step = int(text[at + len(_STEP) : end])
        value = NON_FINITE[token[1:-1]] if token.startswith('"') else float(token)
    except (KeyError, ValueError):
        return None
    if not 0 <= step <= MAX_STEP or not isinstance(client, dict | None):
        return None
    return _Plain(step, value, created_at, Asker(client, by), digest)


def _value(value: Any, line: int | None, seq: int) -> float:
    if type(value) is float:
        return value
    if isinstance(value, str) and value in NON_FINITE:
        return parse_float(value)
    if type(value) is int and abs(value) <= _LARGEST_INT_FLOAT:
        return float(value)
    raise Mismatch(line, seq, "value is not a number", None, value)


def _asker(doc: dict[str, Any], line: int | None, seq: int) -> Asker:
    """Who asked for an entry, as it says: its "client" as read (the comparison of bytes
    judges it), its "by" (whose token) of the shape the service writes."""
    by = doc.get("by")
    if by is not None and (
        not isinstance(by, dict)
        or set(by) != {"token", "project"}
        or not all(isinstance(v, str) for v in by.values())
    ):
        raise Mismatch(line, seq, 'by is not {"token": ..., "project": ...}', None, to_strict(by))
    return Asker(doc.get("client"), by)


def _ranks(doc: dict[str, Any], line: int | None, seq: int) -> Ranks:
    ranks, missing = doc.get("ranks"), doc.get("missing_ranks")
    gaps = doc.get("missing_ranges")
    try:
        assert isinstance(ranks, list) and all(isinstance(r, dict) for r in ranks)
        timeout = doc.get("timeout_s")
        if gaps is not None:  # rebuilt as read: the comparison of bytes judges it
            assert isinstance(gaps, list) and all(
                isinstance(g, list) and len(g) == 2 and all(type(n) is int for n in g) for g in gaps
            )
        found = Ranks(
            ranks,
            list(missing or ()),
            None if timeout is None else parse_float(timeout),
            gaps,
        )
        found.mean()
        if found.missing or found.missing_ranges:
            assert found.timeout_s is not None
            [int(r["rank"]) for r in ranks]
        return found
    except (AssertionError, KeyError, TypeError, ValueError, ZeroDivisionError):
        raise Mismatch(line, seq, "ranks is not a list of rank, value, weight") from None


def _first_difference(expected: Draft, doc: dict[str, Any], line: int | None, seq: int) -> NoReturn:
    want = expected.doc
    keys = [k for k in _DERIVED if k in want or k in doc]
    keys += sorted(k for k in set(want) | set(doc) if k not in _DERIVED and k != "hash")
    for key in keys:
        if key not in want:
            raise Mismatch(
                line, seq, f"{key} is not a member the service writes here", None, doc[key]
            )
        if canonical_json(want[key]) != canonical_json(doc.get(key)):
            found = doc.get(key)
            raise Mismatch(
                line,
                seq,
                f"{key} is not what the policy decides from the decisions before it",
                to_strict(want[key]),
                found,
            )
    raise Mismatch(line, seq, "the entry is not in its canonical form")


@dataclass
class BundleCheck:
    """A bundle's check: its run, the log's report, and its trailer."""

    run: RunStored | None
    report: Report
    end: dict[str, Any] | None = None
    lines: int = 0
    rewinds: list[Rewound] = field(default_factory=list)  # what decides the superseded flags
    header: bytes = b""  # the header line, as read
    regions: int = 1  # processes that checked it, a region each (lrpilot.audit.parallel)

    @property
    def ok(self) -> bool:
        return self.report.ok


def check_bundle(
    open_lines: Callable[[], Iterable[bytes]],
    head: str | None = None,
    public_keys: Sequence[Ed25519PublicKey] = (),
    whose: str = "",
) -> BundleCheck:
    """Check a bundle read twice through ``open_lines`` (``read_raw``; a first pass finds the
    rewinds and the trailer): its header, every entry, and its trailer (count, head, what it
    records as imported, and with ``public_keys`` the signatures: every entry must be signed
    by one of them). Constant memory; the first problem found is the report's mismatch."""
    run: RunStored | None = None
    check: LogCheck | None = None
    end: dict[str, Any] | None = None
    header = b""
    number = 0
    try:
        last: list[bytes] = [b""]
        rewinds = rewinds_of(_keeping_last(open_lines(), last))
        for number, text in numbered_raw(open_lines()):
            check_line(text, number)
            if end is not None:
                raise Mismatch(number, None, "a line after the trailer")
            if check is None:
                run, header = parse_header(text, number), text
                try:
                    check = LogCheck(run, rewinds, watch=_imported_counts(last[0]))
                except Mismatch as exc:  # the header's spec: name its line
                    raise Mismatch(number, None, exc.what, exc.expected, exc.found) from None
                continue
            if text.startswith(_TRAILER):
                end = parse_trailer(text, number)
            if end is None:
                check.check(text, number)
        if check is None or run is None:
            raise Mismatch(None, None, "the bundle is empty")
        return finish_bundle(check, run, end, header, number, head, public_keys, whose, rewinds)
    except Mismatch as exc:
        count = check.count if check is not None else 0
        prev = check.prev if check is not None else GENESIS
        return BundleCheck(run, Report(False, count, prev, mismatch=exc), end, number)


def finish_bundle(
    check: LogCheck,
    run: RunStored,
    end: dict[str, Any] | None,
    header: bytes,
    number: int,
    head: str | None = None,
    public_keys: Sequence[Ed25519PublicKey] = (),
    whose: str = "",
    rewinds: list[Rewound] | None = None,
) -> BundleCheck:
    """After a bundle's last entry (``number`` the last line read): its trailer, the head
    asked for, the header the trailer names, what it records as imported, its signatures."""
    try:
        if end is None:
            raise Mismatch(number, None, "no trailer: the bundle is truncated")
        try:
            check.begins(str(end.get("head_hash")))
        except Mismatch as exc:  # an empty log: its trailer's head is not its run's
            raise Mismatch(number, 0, exc.what, exc.expected, exc.found) from None
        report = check.report(head)
        _check_end(end, report, number)
        header_hash = hashlib.sha256(header).hexdigest()
        if end.get("header_hash") != header_hash:
            raise Mismatch(
                1,
                None,
                "the header is not the one the trailer names (its run was edited)",
                end.get("header_hash"),
                header_hash,
            )
        _check_imported(end, check.watched, check.start, header_hash, number)
        report.notes += signature_notes(end, header_hash, public_keys, number, whose)
        return BundleCheck(run, report, end, number, rewinds or [], header)
    except Mismatch as exc:
        return BundleCheck(run, Report(False, check.count, check.prev, mismatch=exc), end, number)


_TRAILER = b'{"end":'  # what parse_trailer reads as a trailer: no other line is one


def _keeping_last(lines: Iterable[bytes], last: list[bytes]) -> Iterator[bytes]:
    """The lines of ``lines`` that may be rewinds (``rewinds_of`` reads them), the last one that
    is not blank kept in ``last[0]`` (the trailer). The first pass reads every line: it looks
    at each only this much (no copy of it, no call), most lines being decisions."""
    for raw in lines:
        if raw and not raw.isspace():
            last[0] = raw
            if _REWIND_MARK_RAW in raw:
                yield raw


def _imported_counts(trailer: bytes) -> set[int]:
    """The seqs whose hashes the trailer's imported records name (a first reading: the
    trailer is checked in its turn)."""
    counts: set[int] = set()
    try:
        doc = json.loads(trailer)
        record = doc["end"]["imported"] if isinstance(doc, dict) and "end" in doc else None
        for _ in range(MAX_IMPORT_HOPS + 1):
            if not isinstance(record, dict) or type(record.get("count")) is not int:
                break
            counts.add(record["count"])
            record = record.get("imported")
    except (ValueError, RecursionError, KeyError, TypeError):
        pass
    return counts


def _check_imported(
    end: dict[str, Any], hashes: dict[int, str], start: str, header_hash: str, line: int
) -> None:
    """Each trailer recorded as imported names a prefix of this very log: its head is the hash
    of the entry at its count, its header this bundle's."""
    record = end.get("imported")
    while isinstance(record, dict):
        count = record["count"]
        logged = start if count == 0 else hashes.get(count)
        if record["head_hash"] != logged:
            raise Mismatch(
                line,
                count,
                "the imported trailer's head_hash is not the hash of the entry at its count",
                logged,
                record["head_hash"],
            )
        if record["header_hash"] != header_hash:
            raise Mismatch(
                line,
                None,
                "the imported trailer's header_hash is not this bundle's header",
                header_hash,
                record["header_hash"],
            )
        record = record.get("imported")


def signature_notes(
    end: dict[str, Any],
    header_hash: str,
    public_keys: Sequence[Ed25519PublicKey],
    line: int,
    whose: str = "",
) -> list[str]:
    """Who signed which entries: each trailer of the chain (this one, then the one it records
    as imported, and so on) covers the entries after its imported one, up to its count, and
    only those: a service signs what it decided. With ``public_keys``, every entry must be
    covered by a valid signature of one of them; else a Mismatch saying which are not."""
    notes: list[str] = []
    record: dict[str, Any] | None = end
    while record is not None:
        inner = record.get("imported")
        first, last = (inner["count"] if inner else 0) + 1, record["count"]
        signature = record.get("signature")
        key_id_ = signature.get("key_id") if isinstance(signature, dict) else None
        span = f"entries {first} to {last}" + (" (imported)" if record is not end else "")
        if first > last and inner is not None:
            pass  # nothing decided here: an imported log exported again, as it was
        elif public_keys:
            key = next((k for k in public_keys if key_id(k) == key_id_), None)
            if key is None:
                given = whose or (
                    "the given public key" if len(public_keys) == 1 else "any given key"
                )
                signed = f"signed by key {key_id_!r}" if key_id_ else "not signed at all"
                raise Mismatch(line, None, f"{span} are not signed by {given} ({signed})")
            message = signed_message(header_hash, last, record["head_hash"], inner)
            problem = check_signature(key, message, signature)
            if problem is not None:
                raise Mismatch(line, None, f"{span}: {problem}")
            notes.append(f"{span}: the signature by key {key_id_} is valid")
        elif key_id_ is not None:
            notes.append(f"{span}: signed by key {key_id_!r}; not checked (no public key given)")
        elif inner is not None or record is not end:
            notes.append(f"{span}: not signed")
        record = inner
    if public_keys and "imported" not in end:  # the common case, said as it always was
        notes = ["the head's signature is valid"]
    return notes


def _check_end(end: dict[str, Any], report: Report, line: int) -> None:
    for key, what, want in (
        ("count", "the number of decisions (lines were added or deleted)", report.count),
        ("head_hash", "the last decision's hash", report.head_hash),
    ):
        if end.get(key) != want:
            raise Mismatch(line, None, f"the trailer's {key} is not {what}", want, end.get(key))
