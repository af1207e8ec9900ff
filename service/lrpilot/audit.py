"""Audit and replay over the store: export, import, verify, rewind, summary.

Domain layer: no SQL and no HTTP. The checks themselves are ``lrpilot.bundle``'s, the same
offline (``lrpilot verify BUNDLE``) as here; this module feeds them from the store and writes
what they accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lrpilot.bundle import (
    REWIND,
    BundleCheck,
    LogCheck,
    Mismatch,
    Recorded,
    Report,
    check_bundle,
    header_line,
    numbered_raw,
    rewinds_of,
    spec_of,
    trailer_line,
)
from lrpilot.canonical import canonical_json, parse_float, sha256_hex
from lrpilot.chain import GENESIS, seal
from lrpilot.domain import RunSpec, in_force, new_run, now, resolved
from lrpilot.policies import base as policy_text
from lrpilot.scaling import SCALE, InForce
from lrpilot.settings import Settings
from lrpilot.signing import load_private_key, sign, signed_message
from lrpilot.store.errors import Conflict, RunNotFound
from lrpilot.store.records import NewDecision, NewRun, RunHead
from lrpilot.store.runs import Store, WriteTx

IMPORT_FLUSH_EVERY = 1000  # decisions a statement when an import writes its log


class BundleRefused(ValueError):
    """A bundle that does not check (a 422 naming the line): nothing of it was stored."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(f"the bundle was refused, nothing of it was stored: {mismatch}")
        self.mismatch = mismatch


class Audit:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self._key = load_private_key(settings.signing_key) if settings.signing_key else None

    # -- export ----------------------------------------------------------------------------

    def export(self, run_id: str) -> Iterator[str]:
        """The run as bundle lines (header, decisions, trailer), read a page at a time. The
        run is looked up now (RunNotFound before anything is streamed); the log is the one up
        to the head at that moment, whatever is decided meanwhile."""
        run, head = self.store.head(run_id)
        return self._lines(run, head.last_seq, head.head_hash)

    def _lines(self, run: dict[str, Any], count: int, head_hash: str) -> Iterator[str]:
        header = header_line(run)
        yield header
        yield from self.store.bodies(run["run_id"], count)
        signature = None
        if self._key is not None:
            signature = sign(self._key, signed_message(sha256_hex(header), count, head_hash))
        yield trailer_line(header, count, head_hash, signature)

    # -- verify ----------------------------------------------------------------------------

    def verify(self, run_id: str, head: str | None = None) -> Report:
        """Replay the stored log through the pinned policy and check every link and every
        superseded flag; then check that the run's row (its head, state and lrs, what the next
        decision starts from) is where the log ends."""
        run, row = self.store.head(run_id)
        rewinds = rewinds_of(self.store.bodies(run_id, row.last_seq, action=REWIND))
        check: LogCheck | None = None
        try:
            check = LogCheck(spec_of(run), rewinds)
            for body, flagged in self.store.flagged(run_id, row.last_seq):
                check.check(body)
                assert check.step is not None
                if flagged != check.superseded_at(check.count, check.step):
                    raise Mismatch(
                        None,
                        check.count,
                        "its superseded flag is not what the rewinds in the log say (edited)",
                        not flagged,
                        flagged,
                    )
            report = check.report(head)
            for what, stored, logged in (
                ("head_hash", row.head_hash, report.head_hash),
                ("state", row.state, report.state),
                ("lrs", row.lrs, report.lrs),
                ("scale", row.scale, report.scale),
                ("last_step", row.last_step, report.last_step),
            ):
                if stored != logged:
                    raise Mismatch(
                        None,
                        row.last_seq,
                        f"the run's {what} is not where its log ends (the run row was edited)",
                        logged,
                        stored,
                    )
            return report
        except Mismatch as exc:
            count = check.count if check is not None else 0
            prev = check.prev if check is not None else GENESIS
            return Report(ok=False, count=count, head_hash=prev, mismatch=exc)

    # -- import ----------------------------------------------------------------------------

    def import_bundle(
        self, open_lines: Callable[[], Iterable[bytes]]
    ) -> tuple[dict[str, Any], bool]:
        """Check the bundle (every link, every decision replayed), then store it in one
        transaction: (the run, True); (the stored run, False) when it holds this very log.
        A bundle that does not check is refused whole; another log under the same run_id is
        a Conflict."""
        checked = check_bundle(open_lines)
        if not checked.ok or checked.run is None:
            assert checked.report.mismatch is not None
            raise BundleRefused(checked.report.mismatch)
        run = _new_run(checked)
        reduced = set(checked.report.reduced)

        def work(tx: WriteTx) -> tuple[dict[str, Any], bool]:
            if tx.lock_run(run.run_id) is not None:
                return _same_log(self.store, run, checked), False
            tx.insert_run(run)
            for number, raw in numbered_raw(open_lines()):
                if number == 1 or number == checked.lines:
                    continue  # the header and the trailer
                text = raw.decode()  # checked: UTF-8 JSON
                doc = json.loads(text)
                seq, step, action = doc["seq"], doc["step"], doc["action"]
                if action == REWIND:
                    tx.supersede_after(run.run_id, step)
                decision = NewDecision(
                    run_id=run.run_id,
                    seq=seq,
                    step=step,
                    action=action,
                    hash=doc["hash"],
                    body=text,
                    state=canonical_json(doc["state"]),
                    lrs=canonical_json(doc["lrs"]),
                    last_step=step,  # where the run stands is set at the end, from the check
                    reductions=1 if seq in reduced else 0,
                )
                tx.append_decision(decision)
                if seq % IMPORT_FLUSH_EVERY == 0:
                    tx.flush()
            tx.set_position(run.run_id, checked.report.last_step, checked.report.scale)
            return {}, True

        result, created = self.store.transact(work)
        if not created:
            return result, False
        return self.store.get_run(run.run_id), True

    # -- rewind ----------------------------------------------------------------------------

    def rewind(
        self, run_id: str, to_step: int, client: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Make the run's state what it was right after ``to_step``: the later decisions are
        kept, marked superseded, and the rewind is itself an entry of the chain (who asked, to
        which step, what it restored). A rewind to or past the last step changes nothing."""

        def work(tx: WriteTx) -> str | None:
            head = tx.lock_run(run_id)
            if head is None:
                raise RunNotFound(f"run {run_id!r} not found")
            if head.aggregate is not None:  # the ranks will report those steps again
                tx.drop_reports_after(run_id, to_step)
            # past the last entry: nothing to supersede (a resize may come after the last step)
            force = in_force(head)
            latest = max(
                head.last_step if head.last_step is not None else -1,
                force.step if force is not None and force.step is not None else -1,
            )
            if to_step >= latest:
                return None
            target = tx.live_at_or_before(run_id, to_step)
            if target is None:  # before the first decision: the policy's initial state
                policy, params = resolved(head.policy, head.params, head.base_lrs)
                base_lrs = tuple(parse_float(x) for x in json.loads(head.base_lrs))
                initial = policy.init(params, base_lrs)
                restores, state, lrs = None, initial.model_dump(), list(initial.lrs)
            else:
                restores, body = target
                doc = json.loads(body)
                state, lrs = doc["state"], doc["lrs"]
            scale = _scale_at(tx, head, to_step)
            superseded = tx.supersede_after(run_id, to_step)
            previous = json.loads(head.lrs)
            by = f" at the request of {_who(client)}" if client else ""
            since = f"step {to_step}" if restores is not None else "the start"
            entry: dict[str, Any] = {
                "run_id": run_id,
                "seq": head.last_seq + 1,
                "step": to_step,
                "value": None,
                "lrs": lrs,
                "previous_lrs": previous,
                "action": REWIND,
                "reason": (
                    f"rewound to step {to_step}{by}: {_plural(superseded, 'decision')} after "
                    f"it superseded (kept in the log); {_lrs_text(lrs)} in force again, the "
                    f"state as of {since}"
                ),
                "policy": head.policy,
                "config_hash": head.config_hash,
                "state": state,
                "prev_hash": head.head_hash,
                "created_at": now(),
                "rewind": {"to_step": to_step, "restores_seq": restores, "superseded": superseded},
            }
            if scale is not None and scale.factor != 1.0:  # the lrs stay scaled as they were
                entry[SCALE] = scale.factor
            if client:
                entry["client"] = client
            sealed = seal(entry)
            tx.append_decision(
                NewDecision(
                    run_id=run_id,
                    seq=entry["seq"],
                    step=to_step,
                    action=REWIND,
                    hash=entry["hash"],
                    body=sealed,
                    state=canonical_json(state),
                    lrs=canonical_json(lrs),
                    last_step=to_step,
                    reductions=0,
                    scale=None if scale is None else canonical_json(scale.doc()),
                )
            )
            return sealed

        body = self.store.transact(work)
        run = self.store.get_run(run_id)
        return {
            "run_id": run_id,
            "to_step": to_step,
            "rewound": body is not None,
            "lrs": run["lrs"],
            "decision": json.loads(body) if body is not None else None,
        }

    # -- what-if ---------------------------------------------------------------------------

    def recorded(self, run_id: str, limit: int) -> tuple[dict[str, Any], list[Recorded] | None]:
        """The run and its live branch's observations with their decisions; None past
        ``limit`` of them."""
        run, head = self.store.head(run_id)
        kept: list[Recorded] = []
        for body in self.store.bodies(run_id, head.last_seq, superseded=False):
            doc = json.loads(body)
            if doc["action"] in (REWIND, SCALE):
                continue
            if len(kept) == limit:
                return run, None
            kept.append(
                Recorded(
                    doc["seq"],
                    doc["step"],
                    parse_float(doc["value"]),
                    doc["action"],
                    tuple(parse_float(x) for x in doc["lrs"]),
                    parse_float(doc.get(SCALE, 1.0)),
                )
            )
        return run, kept

    # -- summary ---------------------------------------------------------------------------

    def summary(self, run_id: str) -> dict[str, Any]:
        """What an auditor asks first, over the live branch (one pass over the log)."""
        run, head = self.store.head(run_id)
        params = run["policy"]["params"]
        maximize = params.get("mode") == "max"
        best: float | None = None
        best_step: int | None = None
        first: int | None = None
        reductions: list[dict[str, Any]] = []
        live = 0
        previous_action = ""
        for body in self.store.bodies(run_id, head.last_seq, superseded=False):
            doc = json.loads(body)
            action = doc["action"]
            if action == REWIND:
                continue
            if action == SCALE:  # an elastic job resized: the lrs changed, no metric was seen
                reductions.append(
                    {"seq": doc["seq"], "step": doc["step"], "lrs": doc["lrs"], "action": action}
                )
                continue
            live += 1
            step = doc["step"]
            first = step if first is None else first
            value = parse_float(doc["value"])
            if not math.isnan(value) and (
                best is None or (value > best if maximize else value < best)
            ):
                best, best_step = value, step
            # what an auditor looks for: each reduction, and where each decay began (a
            # schedule's or a range test's every step moves the lrs: not news, one at a time)
            news = action == "reduce" or (action == "decay" and previous_action != "decay")
            if news and doc["lrs"] != doc["previous_lrs"]:
                reductions.append(
                    {"seq": doc["seq"], "step": step, "lrs": doc["lrs"], "action": action}
                )
            previous_action = action
        summary: dict[str, Any] = {
            "run_id": run_id,
            "decisions": live,
            "first_step": first,
            "last_step": head.last_step,
            "best": {"value": best, "step": best_step, "mode": "max" if maximize else "min"},
            "lr_changes": reductions,
            "superseded": self.store.superseded_count(run_id),
            "head_hash": head.head_hash,
            "lrs": run["lrs"],
        }
        # what the policy adds (a range test: its suggested lrs), from the state in force
        policy, resolved_params = resolved(head.policy, head.params, head.base_lrs)
        state = policy.load_state(json.loads(head.state))
        summary.update(policy.summary_fields(resolved_params, state))
        return summary


def _scale_at(tx: WriteTx, head: RunHead, step: int) -> InForce | None:
    """The scale a rewind to ``step`` restores: its last live scale entry's (None: the base
    size, from the start, or no scaling rule)."""
    if head.scaling is None:
        return None
    body = tx.live_scale_at_or_before(head.run_id, step)
    if body is None:
        return None
    doc = json.loads(body)
    return InForce(int(doc["resize"]["to"]), parse_float(doc[SCALE]), int(doc["step"]))


def _new_run(checked: BundleCheck) -> NewRun:
    """The run a checked bundle describes, at the end of its log."""
    assert checked.run is not None
    spec = checked.run
    policy = spec["policy"]
    base = new_run(
        spec["run_id"],
        RunSpec(
            policy=policy["name"],
            version=policy["version"],
            params=dict(policy["params"]),
            base_lrs=tuple(parse_float(x) for x in spec["base_lrs"]),
            metric=spec.get("metric"),
            labels=dict(spec.get("labels") or {}),
            aggregate=spec.get("aggregate"),
            scaling=spec.get("scaling"),
        ),
        str(spec.get("created_at") or now()),
    )
    return base


def _same_log(store: Store, run: NewRun, checked: BundleCheck) -> dict[str, Any]:
    """The stored run, when it is the bundle's run with the bundle's log; else a Conflict."""
    stored = store.get_run(run.run_id)
    same = (
        checked.run is not None
        and spec_of(stored) == spec_of(checked.run)
        and stored["head_hash"] == checked.report.head_hash
        and stored["counts"]["decisions"] == checked.report.count
    )
    if not same:
        raise Conflict(
            f"run {run.run_id!r} exists with another log (head {stored['head_hash'][:12]}…, "
            f"{stored['counts']['decisions']} decisions); the bundle's head is "
            f"{checked.report.head_hash[:12]}… after {checked.report.count}: import it under "
            "another run_id"
        )
    return stored


def _who(client: dict[str, Any]) -> str:
    return ", ".join(f"{k} {client[k]}" for k in ("host", "process", "rank") if k in client)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _lrs_text(lrs: list[Any]) -> str:
    values = tuple(parse_float(x) for x in lrs)
    return policy_text.fmt_lrs(values)
