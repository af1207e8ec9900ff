"""report_tallies: what the reports of a step not yet decided add up to

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

An aggregated step of W ranks used to read every report of the step for each report: W^2 rows
and 2 s of one core at W = 4,096. One row a step (the world size, how many ranks reported, the
first report's time), written with each report, makes a report O(1). The steps waiting when
this runs get their tallies from their reports.
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import create_run_table
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_run_table(
        "report_tallies",
        ["step"],
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("world_size", sa.Integer(), nullable=False),
        sa.Column("reported", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.String(length=40), nullable=False),
    )
    op.execute(
        "INSERT INTO report_tallies (project, run_id, step, world_size, reported, first_at) "
        "SELECT project, run_id, step, MIN(world_size), COUNT(*), MIN(created_at) FROM reports "
        "GROUP BY project, run_id, step"
    )


def downgrade() -> None:
    op.drop_table("report_tallies")
