"""Every rank the same lr, proved (docs/agreement.md): a rank acknowledges the lrs it applied
at a step as a hash; the service compares it with the hash of the run's lrs at that step.

The hash is ``applied_hash``: the SHA-256 (hex) of the canonical JSON of
``{"lrs": [the lrs, as floats], "seq": the seq of the entry in force (0 before any), "step"}``;
the client computes the same bytes (lrpilot_client.applied_hash). The lrs are those GET /lr
answers for the step: the entry's, moved by a schedule, times the scaling factor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lrpilot.canonical import canonical_json, sha256_hex
from lrpilot.domain import ranges
from lrpilot.domain.deciding import now
from lrpilot.domain.errors import Conflict
from lrpilot.store.acks import Acks
from lrpilot.store.records import Ack, RunKey
from lrpilot.store.runs import Store


def applied_hash(step: int, seq: int, lrs: Sequence[float]) -> str:
    """What a rank sends for the lrs it applied at ``step``, set by entry ``seq``."""
    return sha256_hex(canonical_json({"lrs": [float(x) for x in lrs], "seq": seq, "step": step}))


def acknowledge(
    store: Store, acks: Acks, run: RunKey, rank: int, world_size: int, step: int, seq: int,
    got: str,
) -> Ack:  # fmt: skip
    """Check a rank's acknowledgement against the run's lrs at ``step`` and keep it. The run
    must be decided through ``step`` (else a Conflict: what the rank applied there may still
    change, so there is nothing to prove yet)."""
    doc, _ = ranges.lr_at(store, run, step)
    if not doc["certain"]:
        raise Conflict(
            f"step {step} of run {run.run_id!r} is not decided yet (a later evaluation or resize "
            "may change its lrs): acknowledge the lrs of a decided step"
        )
    expected = applied_hash(step, doc["seq"] or 0, doc["lrs"])
    ack = Ack(rank, world_size, step, seq, got, expected, now())
    acks.record(run, ack)
    return ack


def flagged(body: bytes, disagreements: list[dict[str, Any]]) -> bytes:
    """An answer (a decision's or the lrs' canonical JSON) with the run's disagreements added,
    when there are any: every rank reading it sees them."""
    if not disagreements:
        return body
    doc = json.loads(body)
    doc["disagreements"] = disagreements
    return canonical_json(doc).encode()
