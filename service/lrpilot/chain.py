"""The hash chain of a run's decisions: pure, importable without a database or a server.

A decision's ``hash`` is the SHA-256 of its canonical JSON without the ``hash`` key and with
``prev_hash``, the hash of the decision before it (64 zeros for the first). Editing, inserting,
deleting or reordering a decision therefore changes every hash after it: ``verify_chain`` finds
the first place where the log stops being the one that was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lrpilot.canonical import canonical_json, sha256_hex

GENESIS = "0" * 64  # prev_hash of a run's first decision


def decision_hash(decision: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical decision without its own hash (prev_hash included)."""
    return sha256_hex(canonical_json({k: v for k, v in decision.items() if k != "hash"}))


def seal(decision: dict[str, Any]) -> str:
    """Set the decision's ``hash`` and return its canonical JSON: what is stored and served."""
    decision.pop("hash", None)
    # Encode the keys that sort before and after "hash" apart, so the sealed document is the
    # unsealed one with the hash spliced in: one encoding a decision, not two (the hot path).
    before = _members({k: v for k, v in decision.items() if k < "hash"})
    after = _members({k: v for k, v in decision.items() if k > "hash"})
    digest = sha256_hex("{" + ",".join(m for m in (before, after) if m) + "}")
    decision["hash"] = digest
    return "{" + ",".join(m for m in (before, f'"hash":"{digest}"', after) if m) + "}"


def _members(obj: dict[str, Any]) -> str:
    """The canonical JSON of an object without its braces."""
    return canonical_json(obj)[1:-1]


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
    decisions: Iterable[Mapping[str, Any]], head: str | None = None, start: str = GENESIS
) -> ChainReport:
    """Check every link: seq counts 1, 2, 3, ..., each prev_hash is the hash before it, each hash
    is its decision's hash; with ``head``, the last hash must be it (a chain alone only proves
    that it is consistent: whoever can write the database can recompute it)."""
    prev, count = start, 0
    for count, decision in enumerate(decisions, start=1):
        seq = decision.get("seq")
        if seq != count:
            return ChainReport(False, count - 1, prev, ChainBreak(seq, "seq", count, seq))
        if decision.get("prev_hash") != prev:
            found = decision.get("prev_hash")
            return ChainReport(False, count - 1, prev, ChainBreak(seq, "prev_hash", prev, found))
        digest = decision_hash(decision)
        if decision.get("hash") != digest:
            found = decision.get("hash")
            return ChainReport(False, count - 1, prev, ChainBreak(seq, "hash", digest, found))
        prev = digest
    if head is not None and head != prev:
        return ChainReport(False, count, prev, ChainBreak(None, "head", head, prev))
    return ChainReport(True, count, prev)
