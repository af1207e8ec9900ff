"""Audit and replay over the store: export, import, verify, rewind, summary.

Domain layer: no SQL and no HTTP. The checks themselves are ``lrpilot.audit.verify``'s, the
same offline (``lrpilot verify BUNDLE``) as here; this module feeds them from the store and
writes what they accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lrpilot import entries
from lrpilot.audit.bundle import (
    Mismatch,
    Recorded,
    header_line,
    numbered_raw,
    recorded_of,
    rewinds_of,
    trailer_line,
)
from lrpilot.audit.signing import load_private_key, sign, signed_message
from lrpilot.audit.verify import BundleCheck, LogCheck, Report, check_bundle
from lrpilot.canonical import canonical_json, parse_float, sha256_hex
from lrpilot.domain.deciding import chain_of, load_state, new_run, now, resolved
from lrpilot.domain.errors import Conflict, RunNotFound
from lrpilot.entries import GENESIS, NOT_DECISIONS, Kind
from lrpilot.settings import Settings
from lrpilot.spec import InForce, RunStored
from lrpilot.store.records import NewDecision, NewRun, RunHead, appended
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
        _, head = self.store.head(run_id)
        return self._lines(head.spec, head.last_seq, head.head_hash)

    def _lines(self, run: RunStored, count: int, head_hash: str) -> Iterator[str]:
        header = header_line(run)
        yield header
        yield from self.store.bodies(run.run_id, count)
        signature = None
        if self._key is not None:
            signature = sign(self._key, signed_message(sha256_hex(header), count, head_hash))
        yield trailer_line(header, count, head_hash, signature)

    # -- verify ----------------------------------------------------------------------------

    def verify(self, run_id: str, head: str | None = None) -> Report:
        """Replay the stored log through the pinned policy and check every link and every
        superseded flag; then check that the run's row (its head, state and lrs, what the next
        decision starts from) is where the log ends."""
        _, row = self.store.head(run_id)
        rewinds = rewinds_of(self.store.bodies(run_id, row.last_seq, action=Kind.REWIND))
        check: LogCheck | None = None
        try:
            check = LogCheck(row.spec, rewinds)
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
                ("state", row.state.text, report.state),
                ("lrs", row.lrs.text, report.lrs),
                ("scale", _scale_json(row.scale), report.scale),
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
        self, open_lines: Callable[[], Iterable[bytes]], project: str = "default"
    ) -> tuple[dict[str, Any], bool]:
        """Check the bundle (every link, every decision replayed), then store it in
        ``project``, in one transaction: (the run, True); (the stored run, False) when it
        holds this very log. A bundle that does not check is refused whole; another log under
        the same run_id, or a run of that id in another project, is a Conflict."""
        checked = check_bundle(open_lines)
        if not checked.ok or checked.run is None:
            assert checked.report.mismatch is not None
            raise BundleRefused(checked.report.mismatch)
        run = _new_run(checked, project)
        reduced = set(checked.report.reduced)

        def work(tx: WriteTx) -> tuple[dict[str, Any], bool]:
            if tx.lock_run(run.run_id) is not None:
                if self.store.run_project(run.run_id) != project:
                    # run ids are one namespace: say no more than that this one is taken
                    raise Conflict(f"run id {run.run_id!r} is taken: import it under another")
                return _same_log(self.store, run, checked), False
            tx.insert_run(run)
            for number, raw in numbered_raw(open_lines()):
                if number == 1 or number == checked.lines:
                    continue  # the header and the trailer
                text = raw.decode()  # checked: UTF-8 JSON
                doc = json.loads(text)
                seq, step, action = doc["seq"], doc["step"], doc["action"]
                if action == Kind.REWIND:
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
        self,
        run_id: str,
        to_step: int,
        client: dict[str, Any] | None = None,
        who: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Make the run's state what it was right after ``to_step``: the later decisions are
        kept, marked superseded, and the rewind is itself an entry of the chain (who asked, to
        which step, what it restored). A rewind to or past the last step changes nothing."""

        def work(tx: WriteTx) -> NewDecision | None:
            head = tx.lock_run(run_id)
            if head is None:
                raise RunNotFound(f"run {run_id!r} not found")
            if head.spec.aggregate is not None:  # the ranks will report those steps again
                tx.drop_reports_after(run_id, to_step)
            # past the last entry: nothing to supersede (a resize may come after the last step)
            force = head.scale
            latest = max(
                head.last_step if head.last_step is not None else -1,
                force.step if force is not None and force.step is not None else -1,
            )
            if to_step >= latest:
                return None
            target = tx.live_at_or_before(run_id, to_step)
            if target is None:  # before the first decision: the policy's initial state
                policy, params = resolved(head.spec)
                initial = policy.init(params, tuple(head.spec.base_lrs))
                restores, state, lrs = None, initial.model_dump(), list(initial.lrs)
            else:
                restores, doc = target
                state, lrs = doc["state"], doc["lrs"]
            scale = _scale_at(tx, head, to_step)
            superseded = tx.supersede_after(run_id, to_step)
            entry = entries.rewind(
                chain_of(head),
                to_step,
                now(),
                restores_seq=restores,
                superseded=superseded,
                lrs=lrs,
                previous_lrs=head.lrs.value,
                state=state,
                restored_force=scale,
                client=client,
                who=who,
            ).seal()
            rewound = appended(
                entry, canonical_json(state), to_step, scale if scale is not None else _base(head)
            )
            tx.append_decision(rewound)
            return rewound

        entry = self.store.transact(work)
        run = self.store.get_run(run_id)
        return {
            "run_id": run_id,
            "to_step": to_step,
            "rewound": entry is not None,
            "lrs": run["lrs"],
            "decision": entry.doc if entry is not None else None,
        }

    # -- what-if ---------------------------------------------------------------------------

    def recorded(self, run_id: str, limit: int) -> tuple[RunStored, list[Recorded] | None]:
        """The run and its live branch's observations with their decisions; None past
        ``limit`` of them."""
        _, head = self.store.head(run_id)
        kept: list[Recorded] = []
        for doc in self.store.entries(run_id, head.last_seq, superseded=False):
            if doc["action"] in NOT_DECISIONS:
                continue
            if len(kept) == limit:
                return head.spec, None
            kept.append(recorded_of(doc))
        return head.spec, kept

    # -- summary ---------------------------------------------------------------------------

    def summary(self, run_id: str) -> dict[str, Any]:
        """What an auditor asks first, over the live branch (one pass over the log)."""
        run, head = self.store.head(run_id)
        maximize = head.spec.policy.params.get("mode") == "max"
        best: float | None = None
        best_step: int | None = None
        first: int | None = None
        reductions: list[dict[str, Any]] = []
        live = 0
        previous_action = ""
        for doc in self.store.entries(run_id, head.last_seq, superseded=False):
            action = doc["action"]
            kind = entries.kind_of(action)
            if kind is Kind.REWIND:
                continue
            if kind is Kind.SCALE:  # an elastic job resized: the lrs changed, no metric was seen
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
        # what the policy adds (the range test's suggested lrs), from the state in force
        policy, params = resolved(head.spec)
        summary.update(policy.summary_fields(params, load_state(policy, head)))
        return summary


def _base(head: RunHead) -> InForce | None:
    scaling = head.spec.scaling
    return InForce.of(None if scaling is None else scaling.model_dump(), None)


def _scale_json(force: InForce | None) -> str | None:
    """The scale in force as the run row stores it (None: the base size, from the start)."""
    return None if force is None or force.step is None else canonical_json(force.doc())


def _scale_at(tx: WriteTx, head: RunHead, step: int) -> InForce | None:
    """The scale a rewind to ``step`` restores: its last live scale entry's (None: the base
    size, from the start, or no scaling rule)."""
    if head.spec.scaling is None:
        return None
    doc = tx.live_scale_at_or_before(head.run_id, step)
    if doc is None:
        return None
    return InForce(int(doc["resize"]["to"]), parse_float(doc["scale"]), int(doc["step"]))


def _new_run(checked: BundleCheck, project: str) -> NewRun:
    """The run a checked bundle describes, at the end of its log."""
    assert checked.run is not None
    spec = checked.run
    return new_run(spec.run_id, spec, spec.created_at or now(), project)


def _same_log(store: Store, run: NewRun, checked: BundleCheck) -> dict[str, Any]:
    """The stored run, when it is the bundle's run with the bundle's log; else a Conflict."""
    stored, head = store.head(run.run_id)
    same = (
        checked.run is not None
        and canonical_json(head.spec.header_doc()) == canonical_json(checked.run.header_doc())
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
