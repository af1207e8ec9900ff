"""The ranks' acknowledgements of the lrs they applied: the only code that reads or writes the
rank_acks table (docs/agreement.md). One row a rank of a run, so a run holds at most
``LRPILOT_MAX_WORLD_SIZE`` of them, whatever its length."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from lrpilot.store.records import Ack, RunKey
from lrpilot.store.runs import Store, WriteTx
from lrpilot.store.tables import RankAckRow

MAX_LISTED = 64  # disagreements an answer lists (in rank order); `disagreeing` counts them all


def _disagreement(row: RankAckRow) -> dict[str, Any]:
    return {
        "rank": row.rank,
        "step": row.bad_step,
        "seq": row.bad_seq,
        "expected": row.expected,
        "got": row.got,
    }


class Acks:
    """The rank_acks table, over a store (its bounded waits, its transactions, its 503s)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def record(self, run: RunKey, ack: Ack) -> None:
        """Keep ``ack`` as its rank's last; its first disagreement stays, and from then on the
        rank's ``agreed_through`` no longer moves."""

        def work(tx: WriteTx) -> None:
            with tx.session() as s:
                row = s.get(RankAckRow, (run.project, run.run_id, ack.rank))
                if row is None:
                    row = RankAckRow(
                        project=run.project, run_id=run.run_id, rank=ack.rank,
                        world_size=ack.world_size, step=ack.step, acked_at=ack.at,
                    )  # fmt: skip
                row.world_size, row.step, row.acked_at = ack.world_size, ack.step, ack.at
                if row.bad_step is None:
                    if ack.agrees:
                        row.agreed_through = ack.step
                    else:
                        row.bad_step, row.bad_seq = ack.step, ack.seq
                        row.expected, row.got = ack.expected, ack.got
                s.add(row)
                s.flush()

        self._store.transact(work)

    def disagreements(self, run: RunKey) -> list[dict[str, Any]]:
        """The ranks that acknowledged lrs other than the run's, at most ``MAX_LISTED`` (rank
        order): each with its first disagreement's step, seq and both hashes."""
        with self._store.session() as s:
            rows = s.exec(
                select(RankAckRow)
                .where(
                    RankAckRow.project == run.project,
                    RankAckRow.run_id == run.run_id,
                    col(RankAckRow.bad_step).is_not(None),
                )
                .order_by(col(RankAckRow.rank))
                .limit(MAX_LISTED)
            ).all()
            return [_disagreement(row) for row in rows]

    def agreement(self, run: RunKey) -> dict[str, Any]:
        """What the summary says of the ranks' agreement: the world size of the latest
        acknowledgement, how many of its ranks acknowledged, the step through which every one
        of them is proved in agreement (None until each did, or when one disagreed at its
        first acknowledgement), how many disagree and the first ``MAX_LISTED`` of them."""
        with self._store.session() as s:
            rows = s.exec(
                select(RankAckRow)
                .where(RankAckRow.project == run.project, RankAckRow.run_id == run.run_id)
                .order_by(col(RankAckRow.rank))
            ).all()
        if not rows:
            return {"world_size": None, "acked_ranks": 0, "agreed_through": None,
                    "disagreeing": 0, "disagreements": []}  # fmt: skip
        world = max(rows, key=lambda r: (r.step, r.acked_at)).world_size
        ranks = [r for r in rows if r.rank < world]
        proved = [r.agreed_through for r in ranks]
        bad = [r for r in rows if r.bad_step is not None]
        through = None
        if len(ranks) == world and all(p is not None for p in proved):
            through = min(p for p in proved if p is not None)
        return {
            "world_size": world,
            "acked_ranks": len(ranks),
            "agreed_through": through,
            "disagreeing": len(bad),
            "disagreements": [_disagreement(r) for r in bad[:MAX_LISTED]],
        }
