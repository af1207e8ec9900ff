"""Audit and replay over the store: export, import, verify, rewind, summary.

Domain layer: no SQL and no HTTP. The checks themselves are ``lrpilot.audit.verify``'s, the
same offline (``lrpilot verify BUNDLE``) as here; this module feeds them from the store and
writes what they accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lrpilot import entries
from lrpilot.audit.bundle import (
    ASKED,
    Asked,
    Mismatch,
    Recorded,
    header_line,
    numbered_raw,
    parse_header,
    read_header,
    read_raw,
    recorded_of,
    rewinds_of,
    trailer_line,
)
from lrpilot.audit.signing import (
    key_id,
    load_private_key,
    load_trusted_keys,
    sign,
    signed_message,
)
from lrpilot.audit.verify import BundleCheck, LogCheck, Report, check_bundle
from lrpilot.canonical import canonical_json, parse_float, sha256_hex
from lrpilot.domain.deciding import load_state, new_run, now, resolved
from lrpilot.domain.errors import Conflict, RunNotFound, Unavailable
from lrpilot.domain.guarding import newest, rewound
from lrpilot.entries import GENESIS, NOBODY, NOT_DECISIONS, Asker, Kind, is_superseded
from lrpilot.settings import Settings
from lrpilot.spec import InForce, RunStored
from lrpilot.store.acks import Acks
from lrpilot.store.records import (
    Imported,
    LogEnd,
    LogRow,
    NewDecision,
    NewRun,
    RunHead,
    RunKey,
    RunRowRead,
)
from lrpilot.store.runs import DecisionFilter, Store, WriteTx

log = logging.getLogger("lrpilot.audit")


class BundleRefused(ValueError):
    """A bundle that does not check (a 422 naming the line): nothing of it was stored."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(f"the bundle was refused, nothing of it was stored: {mismatch}")
        self.mismatch = mismatch


class Audit:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self._key = load_private_key(settings.signing_key) if settings.signing_key else None
        self._max_line = settings.max_bundle_line_bytes
        self._spool_dir = spool_dir(settings, store.database_file)
        # with trusted keys, an import must be signed, every entry, by one of them
        self._trusted = load_trusted_keys(settings.trusted_keys) if settings.trusted_keys else []
        # bytes of the bundles exported (as sent: a line and its newline) and imported (for
        # the metrics; += on an int from the request threads: a lost update under a race
        # is an undercount of one export, not worth a lock)
        self.exported_bytes = 0
        self.imported_bytes = 0

    @property
    def signer(self) -> str | None:
        """The key_id of the key this service signs its exports' heads with, if it has one."""
        return None if self._key is None else key_id(self._key.public_key())

    # -- export ----------------------------------------------------------------------------

    def export(self, run: RunKey) -> Iterator[str]:
        """The run as bundle lines (header, decisions, trailer), read a page at a time. The
        run is looked up now (RunNotFound before anything is streamed); the log is the one up
        to the head at that moment, whatever is decided meanwhile."""
        _, head = self.store.head(run)
        imported = self.store.imported(run)
        return self._counted(self._lines(head, imported))

    def _counted(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            self.exported_bytes += len(line.encode()) + 1
            yield line

    def _lines(self, head: RunHead, imported: Imported | None) -> Iterator[str]:
        """The service signs only what it decided. An imported run is exported with the
        header line it came with, and, as long as nothing was decided after the import, with
        the trailer it came with (the bundle imported, as it was: its signature is its
        signer's). Once the service decided more, the trailer records the imported one
        (``imported``: its signature, and so on back) and the service's signature, when it has
        a key, covers that record: it signs the entries after it, and says they are the
        ones it decided."""
        count, head_hash = head.last_seq, head.head_hash
        header = header_line(head.spec) if imported is None else imported.header
        yield header
        yield from self.store.bodies(head.key, count)
        record = None if imported is None else imported.end
        if record is not None and count == record["count"]:
            yield canonical_json({"end": record})
            return
        signature = None
        if self._key is not None:
            signature = sign(
                self._key, signed_message(sha256_hex(header), count, head_hash, record)
            )
        yield trailer_line(header, count, head_hash, signature, record)

    # -- verify ----------------------------------------------------------------------------

    def verify(self, key: RunKey, head: str | None = None) -> Report:
        """Replay the stored log through the pinned policy and check every link; check every
        column served beside an entry (its seq, step, action, hash, superseded flag) against
        the entry; then check that the run's row (its head, state, lrs and counters, what the
        next decision starts from and what GET /v1/runs/{id} serves) is where the log ends.
        All of it read in one snapshot: what commits meanwhile is not seen, half or whole."""
        with self.store.snapshot() as snapshot:
            run = snapshot.run(key)
            check: LogCheck | None = None
            try:
                rewinds = rewinds_of(r.body for r in snapshot.log(key, action=Kind.REWIND))
                imported = run.imported
                watch = None if imported is None else {imported.end["count"]}
                check = LogCheck(run.head.spec, rewinds, watch)
                for row in snapshot.log(key):
                    _check_row(check, row)
                check.begins(run.head.head_hash)
                report = check.report(head)
                _check_run(run, report)
                if imported is not None:
                    _check_import(run.head.spec, imported, check.watched, check.start)
                return report
            except Mismatch as exc:
                count = check.count if check is not None else 0
                prev = check.prev if check is not None else GENESIS
                return Report(ok=False, count=count, head_hash=prev, mismatch=exc)

    # -- import ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def spool(self) -> Iterator[Path]:
        """A file to spool an imported bundle to (a bundle may be far larger than memory),
        removed when the block ends, with its import's journal; named by this process's id, so
        that the next start of the service can tell it from another process's and remove it
        (``clean_spool``) when this one was killed."""
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"import-{os.getpid()}-{uuid.uuid4().hex}.ndjson"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
            _journal(path).unlink(missing_ok=True)

    def clean_spool(self, starting: bool = True) -> None:
        """What imports of processes no longer running left: the rows of an import killed
        halfway (its journal names the run) and the spooled files. At startup (this process's
        id on a file is then another, older process's), and before each import (another
        process on the same SQLite file may have been killed since)."""
        if not self._spool_dir.is_dir():
            return
        for path in sorted(self._spool_dir.glob("import-*")):
            pid = path.name.split("-")[1]
            mine = pid.isdigit() and int(pid) == os.getpid()
            if pid.isdigit() and (_alive(int(pid)) and not (mine and starting)):
                continue  # an import under way, in this process or another
            try:
                if path.suffix == ".run":
                    dropped = self.store.drop_import(_journaled(path.read_text()))
                    log.warning("removed %d rows of an unfinished import (%s)", dropped, path)
                path.unlink(missing_ok=True)
            except (OSError, Unavailable) as exc:  # kept for the next start
                log.warning("could not clean %s: %s", path, exc)

    def import_bundle(self, path: Path, project: str = "default") -> tuple[dict[str, Any], bool]:
        """Check the bundle file (every line, every link, every decision replayed), then store
        it in ``project``: (the run, True); (the stored run, False) when it holds this very
        log. A bundle that does not check is refused whole; another log under the same run_id
        in ``project`` is a Conflict (another project's run of that id is another run: it
        does not matter here). Nothing of it is seen before all of it is stored
        (``Store.import_run``)."""

        def open_lines() -> Iterator[bytes]:
            return read_raw(path, self._max_line)

        read_header(path, self._max_line)  # a bundle of another kind: refused at once
        checked = check_bundle(open_lines, None, self._trusted, "a key of LRPILOT_TRUSTED_KEYS")
        if not checked.ok or checked.run is None:
            assert checked.report.mismatch is not None
            raise BundleRefused(checked.report.mismatch)
        run = _new_run(checked, project)
        report = checked.report
        assert report.state is not None and report.lrs is not None
        end = LogEnd(
            report.count,
            report.head_hash,
            report.state,
            report.lrs,
            report.last_step,
            report.scale,
            report.reductions,
            Imported(checked.header.decode(), checked.end or {}),
            report.last_action,
            report.last_at or run.spec.created_at,
        )

        def rows() -> Iterator[LogRow]:
            for number, raw in numbered_raw(open_lines()):
                if number == 1 or number == checked.lines:
                    continue  # the header and the trailer
                text = raw.decode()  # checked: UTF-8 JSON
                doc = json.loads(text)
                seq, step = doc["seq"], doc["step"]
                superseded = is_superseded(seq, step, checked.rewinds)
                yield LogRow(seq, step, doc["action"], superseded, doc["hash"], text)

        self.clean_spool(starting=False)
        journal = _journal(path)
        # what a restart removes, if this process is killed
        journal.write_text(canonical_json(list(run.key)))
        try:
            created = self.store.import_run(run, rows, end)
        finally:
            journal.unlink(missing_ok=True)
        self.imported_bytes += path.stat().st_size
        if not created:
            return _same_log(self.store, run, checked), False
        return self.store.get_run(run.key), True

    # -- rewind ----------------------------------------------------------------------------

    def rewind(
        self,
        key: RunKey,
        to_step: int,
        asker: Asker = NOBODY,
    ) -> dict[str, Any]:
        """Make the run's state what it was right after ``to_step``: the later decisions are
        kept, marked superseded, and the rewind is itself an entry of the chain (who asked, to
        which step, what it restored). A rewind to or past the last step changes nothing."""

        def work(tx: WriteTx) -> NewDecision | None:
            head = tx.lock_run(key)
            if head is None:
                raise RunNotFound(f"run {key.run_id!r} not found")
            return rewound(tx, head, to_step, asker)

        entry = self.store.transact(work)
        run = self.store.get_run(key)
        return {
            "run_id": key.run_id,
            "to_step": to_step,
            "rewound": entry is not None,
            "lrs": run["lrs"],
            "decision": entry.doc if entry is not None else None,
        }

    # -- what-if ---------------------------------------------------------------------------

    def recorded(self, key: RunKey, limit: int) -> tuple[RunStored, list[Recorded | Asked] | None]:
        """The run and its live branch's observations with their decisions, and its
        cooldowns and retimes; None past ``limit`` observations."""
        _, head = self.store.head(key)
        kept: list[Recorded | Asked] = []
        count = 0
        for doc in self.store.entries(key, head.last_seq, superseded=False):
            if doc["action"] in NOT_DECISIONS and doc["action"] not in ASKED:
                continue
            item = recorded_of(doc)
            if isinstance(item, Recorded):
                if count == limit:
                    return head.spec, None
                count += 1
            kept.append(item)
        return head.spec, kept

    # -- summary ---------------------------------------------------------------------------

    def summary(self, key: RunKey) -> dict[str, Any]:
        """What an auditor asks first, over the live branch (one pass over the log)."""
        run, head = self.store.head(key)
        maximize = head.spec.policy.params.get("mode") == "max"
        best: float | None = None
        best_step: int | None = None
        first: int | None = None
        reductions: list[dict[str, Any]] = []
        live = 0
        previous_action = ""
        for doc in self.store.entries(key, head.last_seq, superseded=False):
            action = doc["action"]
            kind = entries.kind_of(action)
            if kind in (Kind.REWIND, Kind.COOLDOWN, Kind.RETIME):  # no metric, no lr changed
                continue
            if kind is Kind.CHECKPOINT:  # the newest few, read apart below
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
            "run_id": key.run_id,
            "decisions": live,
            "first_step": first,
            "last_step": head.last_step,
            "best": {"value": best, "step": best_step, "mode": "max" if maximize else "min"},
            "lr_changes": reductions,
            "superseded": self.store.superseded_count(key),
            "head_hash": head.head_hash,
            "lrs": run["lrs"],
            "clock": head.spec.clock,
        }
        checkpoints, declared = newest(self.store, key, head.last_seq)
        if declared or head.spec.guard is not None:  # (other runs keep the shape they had)
            summary["checkpoints"] = checkpoints
            summary["checkpoint_count"] = declared
        if head.spec.guard is not None:
            summary["rollbacks"] = self._rollbacks(key, head.last_seq)
        # every rank the same lr, proved: through which step, and who disagrees
        summary["agreement"] = Acks(self.store).agreement(key)
        # what the policy adds (the range test's suggested lrs), from the state in force
        policy, params = resolved(head.spec)
        summary.update(policy.summary_fields(params, load_state(policy, head)))
        return summary

    def _rollbacks(self, key: RunKey, last_seq: int) -> list[dict[str, Any]]:
        """A guarded run's rollbacks (each superseded by its own rewind): the step in trouble,
        the trigger, the value, the checkpoint gone back to, the lrs after the cut."""
        found = []
        for body, _ in self.store.flagged(key, last_seq, DecisionFilter(action=Kind.ROLLBACK)):
            doc = json.loads(body)
            found.append(
                {
                    "seq": doc["seq"],
                    "step": doc["step"],
                    "value": doc["value"],
                    "trigger": doc["rollback"]["trigger"],
                    "checkpoint": doc["rollback"]["checkpoint"],
                    "lrs": doc["lrs"],
                    "reason": doc["reason"],
                }
            )
        return found


def _check_row(check: LogCheck, row: LogRow) -> None:
    """Check the next stored row: its body as the next entry of the log, then each column
    served beside the body against it (they are not hashed: an edit of one would change what
    the reads serve and filter on, and only this check sees it)."""
    seq = check.count + 1
    if row.seq != seq:
        raise Mismatch(
            None,
            min(row.seq, seq),
            f"the decision row of seq {row.seq} comes where seq {seq} must be (a row was "
            "deleted, or its seq edited)",
            seq,
            row.seq,
        )
    check.check(row.body)
    assert check.step is not None and check.action is not None
    for column, stored, logged in (
        ("step", row.step, check.step),
        ("action", row.action, check.action),
        ("hash", row.hash, check.prev),
        ("superseded", row.superseded, check.superseded_at(seq, check.step)),
    ):
        if stored != logged:
            raise Mismatch(
                None,
                seq,
                f"the decision row's {column} column is not what its entry says (edited)",
                logged,
                stored,
            )


def _check_run(run: RunRowRead, report: Report) -> None:
    """The run's row is where its log ends: its head, and what GET /v1/runs/{id} serves."""
    row = run.head
    for what, stored, logged in (
        ("last_seq", row.last_seq, report.count),
        ("head_hash", row.head_hash, report.head_hash),
        ("state", row.state.text, report.state),
        ("lrs", row.lrs.text, report.lrs),
        ("scale", _scale_json(row.scale), report.scale),
        ("last_step", row.last_step, report.last_step),
        ("reductions", run.reductions, report.reductions),
        ("last_action", run.last_action, report.last_action),
        ("last_at", run.last_at, report.last_at or row.spec.created_at),
    ):
        if stored != logged:
            raise Mismatch(
                None,
                report.count,
                f"the run's {what} is not where its log ends (the run row was edited)",
                logged,
                stored,
            )
    if run.labels != row.spec.labels:
        raise Mismatch(
            None,
            report.count,
            "the run's label rows (what GET /v1/runs filters on) are not its labels (edited)",
            row.spec.labels,
            run.labels,
        )


def spool_dir(settings: Settings, database_file: str | None) -> Path:
    """Where imports spool (``LRPILOT_SPOOL_DIR``): by default beside the SQLite database
    file, else a directory of the temporary one named after the database, so that a service
    cleans only what an import into its own database left."""
    if settings.spool_dir is not None:
        return Path(settings.spool_dir)
    if database_file is not None:
        return Path(database_file).resolve().with_name(Path(database_file).name + ".spool")
    digest = sha256_hex(settings.database_url)[:16]
    return Path(tempfile.gettempdir()) / f"lrpilot-spool-{digest}"


def _journal(spooled: Path) -> Path:
    return spooled.with_suffix(".run")


def _journaled(text: str) -> RunKey:
    """The run a journal names: [project, run_id]; a bare run_id (written before runs had
    their project in the key) is project "default"'s, where migration 0008 put its rows."""
    if text.startswith("["):
        project, run_id = json.loads(text)
        return RunKey(str(project), str(run_id))
    return RunKey("default", text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _check_import(run: RunStored, imported: Imported, hashes: dict[int, str], start: str) -> None:
    """What an imported run came with (what its export carries) is a prefix of its log: the
    trailer's head is the hash of the entry at its count, its header is this run's."""
    end, count = imported.end, imported.end["count"]
    logged = start if count == 0 else hashes.get(count)
    if end.get("head_hash") != logged:
        raise Mismatch(
            None,
            count,
            "the run's imported trailer does not end at its log's entry (the run row was edited)",
            logged,
            end.get("head_hash"),
        )
    header = parse_header(imported.header)
    if (
        sha256_hex(imported.header) != end.get("header_hash")
        or header.header_doc() != run.header_doc()
    ):
        raise Mismatch(
            None,
            None,
            "the run's imported header is not its run, or not its trailer's (the run row was "
            "edited)",
        )


def _scale_json(force: InForce | None) -> str | None:
    """The scale in force as the run row stores it (None: the base size, from the start)."""
    return None if force is None or force.step is None else canonical_json(force.doc())


def _new_run(checked: BundleCheck, project: str) -> NewRun:
    """The run a checked bundle describes, at the end of its log."""
    assert checked.run is not None
    spec = checked.run
    return new_run(spec.run_id, spec, spec.created_at or now(), project)


def _same_log(store: Store, run: NewRun, checked: BundleCheck) -> dict[str, Any]:
    """The stored run, when it is the bundle's run with the bundle's log; else a Conflict."""
    stored, head = store.head(run.key)
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
