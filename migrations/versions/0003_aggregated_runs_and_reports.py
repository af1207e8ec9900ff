"""aggregated mode: runs.aggregate and the ranks' reports of the steps not yet decided

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

A run created with ``aggregate`` takes one decision a step from the weighted mean of every
rank's report; ``reports`` holds each rank's report of a step (one row a rank).
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import runs_columns
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


_add_aggregate, _drop_aggregate = runs_columns(("aggregate", sa.Text()))


def upgrade() -> None:
    _add_aggregate()
    op.create_table(
        "reports",
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("world_size", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(length=40), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("client", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "step", "rank"),
    )


def downgrade() -> None:
    op.drop_table("reports")
    _drop_aggregate()
