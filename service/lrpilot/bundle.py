"""A run as a bundle (NDJSON), and the check that proves a run's log: pure, no database.

A bundle is one line of header, one line a decision, one line of trailer:

    {"bundle": "lrpilot/1", "run": {run_id, policy, base_lrs, metric, labels, config_hash, ...}}
    <each decision's canonical JSON, exactly as stored and served, in seq order>
    {"end": {"count": n, "head_hash": "...", "signature": {...}?}}

``LogCheck`` checks a run's decisions one by one, whether they come from a bundle or from the
database: every link of the hash chain, and every decision against a replay of its observation
through the pinned policy version (lrs, previous lrs, action, reason, state). Rewind entries
(``"action": "rewind"``) are part of the chain: the check confirms which decisions each one
superseded and that the state it restored is the one it names. For that it needs the rewinds
before it starts (``rewinds_of`` reads them in a first pass), and then holds only a few values
per rewind: memory stays flat in the length of the log.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lrpilot.aggregate import is_aggregate_spec, mean_of, reason_with
from lrpilot.canonical import canonical_json, parse_float, same_float, sha256_hex, to_strict
from lrpilot.chain import GENESIS
from lrpilot.policies import Frozen, Policy, PolicyError, State, get_policy
from lrpilot.policies.base import MAX_STEP, Stepper
from lrpilot.scaling import MAX_SIZE, SCALE, InForce, entry_fields, is_scaling_spec, scaled
from lrpilot.scaling import note as scale_note
from lrpilot.scaling import reason as scale_reason
from lrpilot.signing import check as check_signature
from lrpilot.signing import signed_message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

BUNDLE_FORMAT = "lrpilot/1"
REWIND = "rewind"
_HASH_MEMBER_LEN = len(',"hash":""') + 64
_REWIND_MARK = '"action":"rewind"'
_REWIND_MARK_RAW = _REWIND_MARK.encode()
_LARGEST_INT_FLOAT = int(sys.float_info.max)  # a JSON integer beyond it is no float at all


class Mismatch(Exception):
    """The first place where a log stops being what was written (or what the policy decides)."""

    def __init__(
        self, line: int | None, seq: int | None, what: str, expected: Any = None, found: Any = None
    ) -> None:
        self.line, self.seq, self.what = line, seq, what
        self.expected, self.found = expected, found
        where = ", ".join(
            part
            for part in (
                f"line {line}" if line is not None else "",
                f"seq {seq}" if seq is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {what}" if where else what)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = to_strict(
            {
                "line": self.line,
                "seq": self.seq,
                "message": str(self),
                "expected": self.expected,
                "found": self.found,
            }
        )
        return doc


# -- the bundle's own lines -------------------------------------------------------------------


def spec_of(run: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run document that a bundle's header carries: what the run is, not where
    it stands (that is the decisions')."""
    keys = ("run_id", "policy", "base_lrs", "metric", "labels", "config_hash", "created_at")
    spec = {k: run[k] for k in keys}
    if run.get("aggregate") is not None:  # aggregated mode only: other headers keep their shape
        spec["aggregate"] = run["aggregate"]
    if run.get("scaling") is not None:  # likewise, runs with a scaling rule only
        spec["scaling"] = run["scaling"]
    return spec


def header_line(run: Mapping[str, Any]) -> str:
    return canonical_json({"bundle": BUNDLE_FORMAT, "run": spec_of(run)})


def trailer_line(
    header: str, count: int, head_hash: str, signature: dict[str, str] | None = None
) -> str:
    """The last line: the count, the head, the hash of the header line (which no decision's
    hash covers), and the signature over those three when the service has a key."""
    end: dict[str, Any] = {
        "count": count,
        "head_hash": head_hash,
        "header_hash": sha256_hex(header),
    }
    if signature is not None:
        end["signature"] = signature
    return canonical_json({"end": end})


def parse_header(text: str | bytes, line: int = 1) -> dict[str, Any]:
    doc = _parse(text, line)
    if doc.get("bundle") != BUNDLE_FORMAT or not isinstance(doc.get("run"), dict):
        raise Mismatch(
            line,
            None,
            f'not an lrpilot bundle: the first line must be {{"bundle": "{BUNDLE_FORMAT}", '
            '"run": {...}}',
        )
    run: dict[str, Any] = doc["run"]
    missing = [k for k in ("run_id", "policy", "base_lrs", "config_hash") if k not in run]
    if missing:
        raise Mismatch(line, None, f"the header's run lacks {', '.join(missing)}")
    if "aggregate" in run and not is_aggregate_spec(run["aggregate"]):
        raise Mismatch(
            line,
            None,
            'the header\'s aggregate must be {"timeout_s": a number in (0, 3600], '
            '"on_timeout": "decide" or "refuse"}',
        )
    if "scaling" in run and not is_scaling_spec(run["scaling"]):
        raise Mismatch(
            line,
            None,
            'the header\'s scaling must be {"rule": "linear" or "sqrt", "by": "world_size" or '
            f'"batch_size", "base": an integer in [1, {MAX_SIZE}]}}',
        )
    return run


def parse_trailer(text: str | bytes, line: int) -> dict[str, Any] | None:
    """The trailer's ``end`` object, or None when the line is not a trailer."""
    if not (text.startswith(b'{"end":') if isinstance(text, bytes) else text.startswith('{"end":')):
        return None
    end = _parse(text, line).get("end")
    if not isinstance(end, dict) or not isinstance(end.get("count"), int):
        raise Mismatch(line, None, 'the trailer must be {"end": {"count": n, "head_hash": ...}}')
    return end


def _parse(text: str | bytes, line: int) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # deep nesting: not a decision
        raise Mismatch(line, None, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Mismatch(line, None, "not a JSON object")
    return doc


# -- the log check ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rewind:
    """What a rewind entry claims, read before the check starts."""

    seq: int
    to_step: int


def rewinds_of(bodies: Iterable[str | bytes]) -> list[Rewind]:
    """The rewind entries of a log, in seq order (the check's first pass)."""
    found = []
    for body in bodies:
        if isinstance(body, bytes):
            if _REWIND_MARK_RAW not in body:
                continue
        elif _REWIND_MARK not in body:
            continue
        with_rewind = _maybe_json(body)
        if with_rewind is None or with_rewind.get("action") != REWIND:
            continue
        rewind, seq = with_rewind.get("rewind"), with_rewind.get("seq")
        if isinstance(rewind, dict) and type(seq) is int:
            to_step = rewind.get("to_step")
            if type(to_step) is int:
                found.append(Rewind(seq, to_step))
    return sorted(found, key=lambda r: r.seq)


def _maybe_json(text: str | bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class _Pending:
    """A rewind ahead: the entry it will restore and how many it will supersede, found as the
    check goes (a decision survives until the first later rewind to a step below its own)."""

    rewind: Rewind
    restores: int | None = None  # seq of the last surviving entry at or below to_step
    state: State | None = None  # the state right after it (computed, not read)
    force: InForce | None = None  # the scale in force right after it
    superseded: int = 0


@dataclass
class Report:
    ok: bool
    count: int  # decisions checked
    head_hash: str
    superseded: int = 0  # decisions that a rewind superseded
    rewinds: int = 0
    last_step: int | None = None
    mismatch: Mismatch | None = None
    notes: list[str] = field(default_factory=list)
    state: str | None = None  # canonical JSON of the policy state after the last decision
    lrs: str | None = None  # canonical JSON of the lrs in force after it
    scale: str | None = None  # canonical JSON of the scale in force (None: the base, or no rule)
    reduced: list[int] = field(default_factory=list)  # seqs the policy counts as reductions

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


class LogCheck:
    """Check a run's decisions in seq order: ``check(body)`` each, then ``report()``.

    ``check`` raises ``Mismatch`` at the first decision that is not the one written (its hash,
    its link, its seq) or not the one the policy decides from the decisions before it.
    """

    def __init__(self, run: Mapping[str, Any], rewinds: list[Rewind] | None = None) -> None:
        self.run_id = run["run_id"]
        policy = run["policy"]
        try:
            name, version = str(policy["name"]), int(policy["version"])
            self.policy: Policy = get_policy(name, version)
            self.base_lrs = tuple(parse_float(x) for x in run["base_lrs"])
            self.params: Frozen = self.policy.resolve(dict(policy["params"]), self.base_lrs)
        except (PolicyError, KeyError, TypeError, ValueError) as exc:
            raise Mismatch(None, None, f"the run's policy cannot be replayed: {exc}") from None
        self.policy_id = f"{name}@{version}"
        config_hash = sha256_hex(
            canonical_json(
                {
                    "policy": self.policy_id,
                    "params": self.params.model_dump(),
                    "base_lrs": list(self.base_lrs),
                }
            )
        )
        if run["config_hash"] != config_hash:
            raise Mismatch(
                None,
                None,
                "the run's config_hash is not the hash of its policy, params and base_lrs",
                config_hash,
                run["config_hash"],
            )
        self.config_hash = config_hash
        self.metric = run.get("metric") or "metric"
        self.scaling: dict[str, Any] | None = run.get("scaling")
        self.force = self.base_force = InForce.of(self.scaling, None)
        self.initial = self.policy.init(self.params, self.base_lrs)
        # The check replays with the policy's stepper (plain mutable state): a frozen State is
        # built only where one is kept (a rewind may restore it) or reported.
        self._stepper: Stepper = self.policy.stepper(self.params, self.initial, self.metric)
        self.prev = GENESIS
        self.count = 0
        self.last_step: int | None = None  # the last decided step (a scale entry decides none)
        self.step: int | None = None  # the step of the last entry checked, of any kind
        self.superseded = 0
        self._rewinds = rewinds or []
        self._pending = [_Pending(r) for r in self._rewinds]
        self._rewinds_seen = 0
        self.reduced: list[int] = []

    def scale_json(self) -> str | None:
        """The scale in force as the run row stores it (None: the base size, from the start)."""
        if self.force is None or self.force.step is None:
            return None
        return canonical_json(self.force.doc())

    def superseded_at(self, seq: int, step: int) -> bool:
        """Whether the entry ``seq`` at ``step`` is superseded: a later rewind went below it."""
        return any(r.seq > seq and r.to_step < step for r in self._rewinds)

    @property
    def state(self) -> State:
        """The policy state after the last decision checked."""
        return self._stepper.state()

    # one decision -------------------------------------------------------------------------

    def check(self, body: str | bytes, line: int | None = None) -> None:
        """Check the next decision, its canonical JSON as stored (text) or as read (UTF-8)."""
        seq = self.count + 1
        raw = body if isinstance(body, bytes) else body.encode()
        doc = _parse(raw, line if line is not None else seq)
        if doc.get("seq") != seq or type(doc.get("seq")) is not int:
            raise Mismatch(line, seq, "seq out of order", seq, doc.get("seq"))
        self._check_link(raw, doc, line, seq)
        if (
            doc.get("run_id") != self.run_id
            or doc.get("policy") != self.policy_id
            or doc.get("config_hash") != self.config_hash
        ):
            for key, want in (
                ("run_id", self.run_id),
                ("policy", self.policy_id),
                ("config_hash", self.config_hash),
            ):
                if doc.get(key) != want:
                    raise Mismatch(line, seq, f"{key} is not the run's", want, doc.get(key))
        step = doc.get("step")
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            raise Mismatch(line, seq, f"step is not an integer in [0, {MAX_STEP}]", None, step)
        action = doc.get("action")
        if action == REWIND:
            self._check_rewind(doc, line, seq, step)
        elif action == SCALE:
            self._check_scale(doc, line, seq, step)
        else:
            self._check_decision(doc, line, seq, step)
        if self._pending:
            self._survivors(seq, step)
        if action != SCALE:
            self.last_step = step
        self.step = step
        self.prev, self.count = doc["hash"], seq

    def _check_link(self, raw: bytes, doc: dict[str, Any], line: int | None, seq: int) -> None:
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

    def _check_decision(self, doc: dict[str, Any], line: int | None, seq: int, step: int) -> None:
        if self.last_step is not None and step <= self.last_step:
            raise Mismatch(
                line, seq, f"step {step} is not above the last live step {self.last_step}"
            )
        self._not_below_resize(line, seq, step)
        value = doc.get("value")
        if type(value) is not float:
            if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
                value = parse_float(value)
            elif type(value) is int and abs(value) <= _LARGEST_INT_FLOAT:
                value = float(value)
            else:
                raise Mismatch(line, seq, "value is not a number", None, doc.get("value"))
        stepper = self._stepper
        by = 1.0 if self.force is None else self.force.factor
        before = scaled(stepper.lrs, by)
        action = stepper.advance(step, value)
        lrs = scaled(stepper.lrs, by)
        # plain equality first (the floats were parsed from their repr: exact), the canonical
        # text only to be sure when it says no
        if doc.get("action") != action:
            self._differs(line, seq, "action", action, doc.get("action"))
        if doc.get("lrs") != lrs:
            self._same(line, seq, "lrs", lrs, doc.get("lrs"))
        if doc.get("previous_lrs") != before:
            self._same(line, seq, "previous_lrs", before, doc.get("previous_lrs"))
        if doc.get(SCALE, 1.0) != by or (SCALE in doc) != (by != 1.0):
            self._differs(line, seq, SCALE, by if by != 1.0 else None, doc.get(SCALE))
        reason = stepper.reason()
        if "ranks" in doc:  # aggregated mode: value is the ranks' weighted mean
            self._check_ranks(doc, line, seq, value)
            reason = reason_with(reason, doc)
        if by != 1.0:
            assert self.scaling is not None and self.force is not None
            reason = f"{reason}; {scale_note(self.scaling, self.force, lrs)}"
        if doc.get("reason") != reason:
            self._differs(line, seq, "reason", reason, doc.get("reason"))
        state = stepper.state_doc()
        if doc.get("state") != state:
            self._same(line, seq, "state", state, doc.get("state"))
        if stepper.reduced:
            self.reduced.append(seq)

    def _check_ranks(self, doc: dict[str, Any], line: int | None, seq: int, value: float) -> None:
        try:
            mean = mean_of(doc["ranks"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise Mismatch(line, seq, "ranks is not a list of rank, value, weight") from None
        if not same_float(mean, value):
            raise Mismatch(
                line, seq, "value is not the weighted mean of the ranks' values", mean, value
            )

    def _not_below_resize(self, line: int | None, seq: int, step: int) -> None:
        force = self.force
        if force is not None and force.step is not None and step < force.step:
            raise Mismatch(
                line, seq, f"step {step} is below step {force.step}, where the last resize applies"
            )

    def _check_scale(self, doc: dict[str, Any], line: int | None, seq: int, step: int) -> None:
        """A scale entry: the job reported a new size; the lrs change by the rule's factor,
        the policy's state does not."""
        if self.scaling is None or self.force is None:
            raise Mismatch(line, seq, "a scale entry in a run without a scaling rule")
        if self.last_step is not None and step < self.last_step:
            raise Mismatch(
                line, seq, f"step {step} is below the last decided step {self.last_step}"
            )
        self._not_below_resize(line, seq, step)
        resize = doc.get("resize")
        size = resize.get("to") if isinstance(resize, dict) else None
        if type(size) is not int or not 1 <= size <= MAX_SIZE or size == self.force.size:
            raise Mismatch(line, seq, "the scale entry names no new size", None, to_strict(resize))
        fields = entry_fields(self.scaling, self.force, size)
        for key, want in fields.items():
            self._same(line, seq, key, want, doc.get(key))
        if doc.get("value") is not None:
            self._differs(line, seq, "value", None, doc.get("value"))
        previous = scaled(self._stepper.lrs, self.force.factor)
        lrs = scaled(self._stepper.lrs, fields[SCALE])
        self._same(line, seq, "lrs", lrs, doc.get("lrs"))
        self._same(line, seq, "previous_lrs", previous, doc.get("previous_lrs"))
        self._same(line, seq, "state", self._stepper.state_doc(), doc.get("state"))
        reason = scale_reason(self.scaling, self.force.size, size, previous, lrs)
        if doc.get("reason") != reason:
            self._differs(line, seq, "reason", reason, doc.get("reason"))
        self.force = InForce(size, fields[SCALE], step)

    def _check_rewind(self, doc: dict[str, Any], line: int | None, seq: int, step: int) -> None:
        pending = self._pending[0] if self._pending else None
        if pending is None or pending.rewind.seq != seq:
            raise Mismatch(line, seq, "a rewind entry the first pass did not see")
        self._pending.pop(0)
        self._rewinds_seen += 1
        restored = pending.state if pending.restores is not None else self.initial
        force = pending.force if pending.restores is not None else self.base_force
        assert restored is not None
        claimed = doc.get("rewind")
        want = {"restores_seq": pending.restores, "superseded": pending.superseded, "to_step": step}
        if not isinstance(claimed, dict) or {k: claimed.get(k) for k in want} != want:
            raise Mismatch(line, seq, "the rewind entry misstates what it did", want, claimed)
        was = 1.0 if self.force is None else self.force.factor
        by = 1.0 if force is None else force.factor
        self._same(line, seq, "lrs", scaled(restored.lrs, by), doc.get("lrs"))
        previous = scaled(self._stepper.lrs, was)
        self._same(line, seq, "previous_lrs", previous, doc.get("previous_lrs"))
        self._same(line, seq, "state", restored.model_dump(), doc.get("state"))
        if doc.get(SCALE, 1.0) != by or (SCALE in doc) != (by != 1.0):
            self._differs(line, seq, SCALE, by if by != 1.0 else None, doc.get(SCALE))
        self.superseded += pending.superseded
        self.force = force
        self._stepper = self.policy.stepper(self.params, restored, self.metric)

    def _survivors(self, seq: int, step: int) -> None:
        """Entry ``seq`` (at ``step``) joined the live branch. The first rewind ahead to a step
        below it will supersede it; every rewind before that one may restore it (the last such
        entry is the one a rewind restores)."""
        state: State | None = None
        for pending in self._pending:
            if pending.rewind.to_step < step:
                pending.superseded += 1
                return
            state = state or self._stepper.state()
            pending.restores, pending.state, pending.force = seq, state, self.force

    @staticmethod
    def _same(line: int | None, seq: int, key: str, expected: Any, found: Any) -> None:
        if canonical_json(expected) != canonical_json(found):
            LogCheck._differs(line, seq, key, to_strict(expected), found)

    @staticmethod
    def _differs(line: int | None, seq: int, key: str, expected: Any, found: Any) -> NoReturn:
        raise Mismatch(
            line,
            seq,
            f"{key} is not what the policy decides from the decisions before it",
            expected,
            found,
        )

    # the end ------------------------------------------------------------------------------

    def report(self, head: str | None = None) -> Report:
        """After the last decision: a report; with ``head``, the log must end at that hash."""
        if self._pending:
            raise Mismatch(None, self._pending[0].rewind.seq, "a rewind entry is missing")
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
            state=canonical_json(self.state.model_dump()),
            lrs=canonical_json(scaled(self._stepper.lrs, self.force.factor if self.force else 1.0)),
            scale=self.scale_json(),
            reduced=self.reduced,
        )


def read_lines(path: Path) -> Iterator[str]:
    """A bundle file's lines, each decoded on its own: bytes that are not UTF-8 are a Mismatch
    naming the line, not a crash in the middle of a check."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Mismatch(
                    number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
                ) from None


def read_raw(path: Path) -> Iterator[bytes]:
    """A bundle file's lines as bytes: what ``check_bundle`` reads (UTF-8 is checked as each
    line is parsed, the hash is of the bytes)."""
    with path.open("rb") as f:
        yield from f


def numbered(lines: Iterable[str], start: int = 1) -> Iterator[tuple[int, str]]:
    """Lines without their line ends, numbered from ``start``; blank lines skipped."""
    for number, text in enumerate(lines, start=start):
        text = text.rstrip("\r\n")
        if text:
            yield number, text


def numbered_raw(lines: Iterable[bytes], start: int = 1) -> Iterator[tuple[int, bytes]]:
    """``numbered`` for lines read as bytes."""
    for number, raw in enumerate(lines, start=start):
        raw = raw.rstrip(b"\r\n")
        if raw:
            yield number, raw


@dataclass
class BundleCheck:
    """A bundle's check: its run, the log's report, and its trailer."""

    run: dict[str, Any] | None
    report: Report
    end: dict[str, Any] | None = None
    lines: int = 0

    @property
    def ok(self) -> bool:
        return self.report.ok


def check_bundle(
    open_lines: Callable[[], Iterable[bytes]],
    head: str | None = None,
    public_key: Ed25519PublicKey | None = None,
) -> BundleCheck:
    """Check a bundle read twice through ``open_lines`` (``read_raw``: a first pass finds the
    rewinds): its
    header, every decision, and its trailer (count, head, and the signature when a public key
    is given). Constant memory; the first problem found is the report's mismatch."""
    run: dict[str, Any] | None = None
    check: LogCheck | None = None
    end: dict[str, Any] | None = None
    header = b""
    number = 0
    try:
        rewinds = rewinds_of(open_lines())
        for number, text in numbered_raw(open_lines()):
            if end is not None:
                raise Mismatch(number, None, "a line after the trailer")
            if check is None:
                run, header = parse_header(text, number), text
                try:
                    check = LogCheck(run, rewinds)
                except Mismatch as exc:  # the header's spec: name its line
                    raise Mismatch(number, None, exc.what, exc.expected, exc.found) from None
                continue
            end = parse_trailer(text, number)
            if end is None:
                check.check(text, number)
        if check is None or run is None:
            raise Mismatch(None, None, "the bundle is empty")
        if end is None:
            raise Mismatch(number, None, "no trailer: the bundle is truncated")
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
        if public_key is not None:
            message = signed_message(header_hash, report.count, report.head_hash)
            problem = check_signature(public_key, message, end.get("signature"))
            if problem is not None:
                raise Mismatch(number, None, problem)
            report.notes.append("the head's signature is valid")
        elif isinstance(end.get("signature"), dict):
            report.notes.append(
                f"signed by key {end['signature'].get('key_id')!r}; not checked (no public key "
                "given)"
            )
        return BundleCheck(run, report, end, number)
    except Mismatch as exc:
        count = check.count if check is not None else 0
        prev = check.prev if check is not None else GENESIS
        return BundleCheck(run, Report(False, count, prev, mismatch=exc), end, number)


def _check_end(end: dict[str, Any], report: Report, line: int) -> None:
    if end.get("count") != report.count:
        raise Mismatch(
            line,
            None,
            "the trailer's count is not the number of decisions (lines were added or deleted)",
            report.count,
            end.get("count"),
        )
    if end.get("head_hash") != report.head_hash:
        raise Mismatch(
            line,
            None,
            "the trailer's head_hash is not the last decision's hash",
            report.head_hash,
            end.get("head_hash"),
        )


@dataclass(frozen=True, slots=True)
class Recorded:
    """One decision of a log's live branch, as recorded: the observation and what was decided."""

    seq: int
    step: int
    value: float
    action: str
    lrs: tuple[float, ...]
    scale: float = 1.0  # the scaling rule's factor on the lrs (elastic jobs)


def bundle_run(open_lines: Callable[[], Iterable[str]]) -> dict[str, Any]:
    """The run a bundle's header describes."""
    for number, text in numbered(open_lines()):
        return parse_header(text, number)
    raise Mismatch(None, None, "the bundle is empty")


def live_branch(open_lines: Callable[[], Iterable[str]]) -> Iterator[Recorded]:
    """The decisions of a bundle's live branch (not superseded by a rewind; rewind and scale
    entries left out), in order: the recorded stream a what-if replays. Not checked:
    ``check_bundle`` does that."""
    rewinds = rewinds_of(text for _, text in numbered(open_lines()))
    for number, text in numbered(open_lines()):
        if number == 1 or text.startswith('{"end":'):
            continue
        doc = _parse(text, number)
        seq, step = doc.get("seq"), doc.get("step")
        if not isinstance(seq, int) or not isinstance(step, int):
            raise Mismatch(number, None, "a decision without an integer seq and step")
        if doc.get("action") in (REWIND, SCALE):
            continue
        # superseded: a later rewind went to a step below it
        if any(r.seq > seq and r.to_step < step for r in rewinds):
            continue
        yield Recorded(
            seq,
            step,
            parse_float(doc["value"]),
            str(doc["action"]),
            tuple(parse_float(x) for x in doc["lrs"]),
            parse_float(doc.get(SCALE, 1.0)),
        )
