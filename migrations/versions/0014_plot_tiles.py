"""plot_tiles, plot_marks: a long run's plot without a pass over its log

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

The first plot of a long run in a process (after a start, after a rewind) made its tiles from
the whole log: 20-46 s for 1,000,000 entries, every body parsed as JSON. The tiles (the min
and max of each param group's lr and of the metric over blocks of steps, at every other level)
and the markers are now kept in the database, written by the store where the entries are
(store/plots.py: a CHUNK of seqs at a time, cut back by a rewind), so that a plot reads a few
tiles. The runs that exist get theirs here: with the store's own fold (the one way tiles are
made), a chunk a statement group, so that each statement stays short whatever the run's length.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from _common import create_run_table
from alembic import op

from lrpilot.store import plots
from lrpilot.store.records import RunKey

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_run_table(
        "plot_tiles",
        ["level", "key"],
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("key", sa.BigInteger(), nullable=False),
        sa.Column("step_lo", sa.BigInteger(), nullable=False),
        sa.Column("step_hi", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("lr_min", sa.Text(), nullable=False),
        sa.Column("lr_max", sa.Text(), nullable=False),
        sa.Column("metric_min", sa.Float(), nullable=True),
        sa.Column("metric_max", sa.Float(), nullable=True),
    )
    create_run_table(
        "plot_marks",
        ["seq"],
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
    )
    conn = op.get_bind()
    chunk = plots.CHUNK
    runs = conn.exec_driver_sql(
        f"SELECT project, run_id, last_seq, base_lrs FROM runs WHERE last_seq >= {chunk}"
    ).all()
    for project, run_id, last_seq, base_lrs in runs:
        groups = len(json.loads(base_lrs))
        for through in range(chunk, int(last_seq) + 1, chunk):
            plots.fold(conn, RunKey(project, run_id), through, groups)


def downgrade() -> None:
    op.drop_table("plot_marks")
    op.drop_table("plot_tiles")
