"""rank_acks: what each rank of a job acknowledged applying (docs/agreement.md)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

One row a rank of a run, at most LRPILOT_MAX_WORLD_SIZE a run: the last step the rank
acknowledged and the world size it declared, the last step it was proved in agreement with
the run's lrs (before any disagreement), and its first disagreement (step, seq, the hash
expected, the hash it sent). Not in the hash chain: an acknowledgement is a rank's own word,
checked when it arrives (docs/agreement.md says why).
"""

from __future__ import annotations

import sqlalchemy as sa
from _common import create_run_table
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_run_table(
        "rank_acks",
        ["rank"],
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("world_size", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("agreed_through", sa.BigInteger(), nullable=True),
        sa.Column("bad_step", sa.BigInteger(), nullable=True),
        sa.Column("bad_seq", sa.BigInteger(), nullable=True),
        sa.Column("expected", sa.String(length=64), nullable=True),
        sa.Column("got", sa.String(length=64), nullable=True),
        sa.Column("acked_at", sa.String(length=40), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rank_acks")
